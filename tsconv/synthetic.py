"""Series whose best forecast is known: the pipeline's known-answer tests and benchmarks.

Each generator returns one-bar log returns r[0..n) and the oracle forecast of r[t+1] made at t's
close, E[r[t+1] | r[..t]], so the best achievable out-of-sample R^2 on any rows is computed from
the same draws the model sees. `ohlcv_from_returns` wraps returns into a consistent OHLCV frame
(its adjusted close has exactly these log returns).

The randomized battery (`draw_spec`, `generate`, below the fixed cases) draws whole OHLCV series
whose signal lives in the bars' features as well as in the returns, for
scripts/known_answers.py --battery; tsconv.evaluate.battery scores runs on them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.signal import lfilter

# Small moves continue and large ones reverse: E[r[t+1] | r[t]] = a * sigma * tent(r[t] / sigma),
# tent(z) = z up to the knee K, then falling to -K at 3K and flat beyond (bounded, so the
# process is stationary for any a). With K = 0.8 and a = 1.3 the oracle explains about 27% of
# the variance while the best linear forecast from r[t] and |r[t]| explains under 1%.
TENT_KNEE = 0.8


def tent(z: np.ndarray) -> np.ndarray:
    a = np.abs(z)
    return np.sign(z) * np.maximum(np.minimum(a, 2 * TENT_KNEE - a), -TENT_KNEE)


def ar1(n: int, phi: float = 0.5, sigma: float = 0.01, seed: int = 0):
    """r[t] = phi r[t-1] + e[t]; oracle phi r[t]; oracle R^2 = phi^2."""
    e = np.random.default_rng(seed).normal(0, sigma, n)
    r = np.zeros(n)
    for t in range(1, n):
        r[t] = phi * r[t - 1] + e[t]
    return r, phi * r


def tent_ar(n: int, a: float = 1.3, sigma: float = 0.01, seed: int = 0):
    """r[t] = a s tent(r[t-1] / s) + e[t] with s = sigma: the size-dependent mean above."""
    e = np.random.default_rng(seed).normal(0, sigma, n)
    r = np.zeros(n)
    for t in range(1, n):
        r[t] = a * sigma * tent(r[t - 1] / sigma) + e[t]
    return r, a * sigma * tent(r / sigma)


def random_walk(n: int, sigma: float = 0.01, seed: int = 0):
    """Independent returns: nothing to forecast; the oracle is zero."""
    return np.random.default_rng(seed).normal(0, sigma, n), np.zeros(n)


SERIES = {"ar1": ar1, "tent": tent_ar, "random_walk": random_walk}


def index_panel(
    n: int = 2500, tickers: int = 3, beta: float = 1.0, gamma: float = 0.3, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """A market index with independent daily log returns m, and tickers whose return on day t
    is beta m[t] + gamma m[t-2] + e[t]: they move with the market the same day (as stocks do)
    and follow it two days late, the predictable part. The target of a ticker's bar t,
    r[t+1], holds gamma m[t-1]: the index's return of the day before, known by t's close under
    any alignment rule, and nothing the ticker's own past holds. Returns (index OHLCV, the
    tickers' OHLCV)."""
    rng = np.random.default_rng(seed)
    m = rng.normal(0, 0.01, n)
    index = ohlcv_from_returns(m, seed=seed, price0=1000.0)
    frames = {}
    for i in range(tickers):
        e = rng.normal(0, 0.01, n)
        r = beta * m + gamma * np.r_[0.0, 0.0, m[:-2]] + e
        frames[f"STOCK{i}"] = ohlcv_from_returns(r, seed=seed + 1 + i, price0=50.0)
    return index, frames


def ohlcv_from_returns(
    returns: np.ndarray, start: str = "2001-01-01", seed: int = 0, price0: float = 100.0
) -> pd.DataFrame:
    """A consistent OHLCV frame on business days whose adjusted close has exactly `returns`."""
    rng = np.random.default_rng(seed)
    n = len(returns)
    close = price0 * np.exp(np.cumsum(returns))
    open_ = close * np.exp(-returns * rng.uniform(0.2, 0.8, n))
    spread = np.abs(rng.normal(0, 0.005, n)) + 0.001
    high = np.maximum(open_, close) * (1 + spread)
    low = np.minimum(open_, close) * (1 - spread)
    volume = rng.lognormal(13, 0.3, n).round()
    dates = pd.bdate_range(start, periods=n, name="date")
    return pd.DataFrame(
        {
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "adj_close": close,
            "volume": volume,
        },
        index=dates,
    )


def oracle_r2(realized: np.ndarray, oracle: np.ndarray) -> float:
    """Out-of-sample R^2 of the oracle forecast against the zero forecast on the same rows."""
    return 1 - float(np.sum((realized - oracle) ** 2)) / float(np.sum(realized**2))


def oracle_r2_of(pred: pd.DataFrame, oracles: dict[str, pd.Series]) -> float:
    """`oracle_r2` on the rows of a backtest's predictions.parquet (date, ticker, realized)."""
    best = [oracles[t][d] for t, d in zip(pred["ticker"], pred["date"], strict=True)]
    return oracle_r2(pred["realized"].to_numpy(), np.array(best))


# The known-answer cases (tests/test_known_answers.py, scripts/known_answers.py): every shipped
# config runs on each series unchanged but for data keys, plus, for the two large configs, the
# span keys that let a 3,000-bar series hold a few folds of them (2,000 training bars a fold: the
# multi-scale model's 21-bar branch has ~5,000 weights per 32 channels and needs the rows).
CASES = {  # series: (bars per ticker, tickers)
    "ar1": (3000, 1),
    "tent": (3000, 8),
    "random_walk": (3000, 2),
}
SPAN_KEYS = {
    "tcn": ["backtest.train_span=2000", "backtest.test_span=1000"],
    "multiscale": ["backtest.train_span=2000", "backtest.test_span=250"],
}


def case_frames(series: str, seed: int = 1) -> tuple[dict[str, pd.DataFrame], dict[str, pd.Series]]:
    """OHLCV frames of one known-answer case, and each ticker's oracle forecast by date."""
    n, tickers = CASES[series]
    frames, oracles = {}, {}
    for i in range(tickers):
        r, oracle = SERIES[series](n, seed=seed + i)
        name = f"{series.upper().replace('_', '')}{i}"
        frames[name] = ohlcv_from_returns(r, seed=seed + i)
        # oracle[t] forecasts the return from t to t+1: the target of row t
        oracles[name] = pd.Series(oracle, index=frames[name].index)
    return frames, oracles


# The randomized known-answer battery (scripts/known_answers.py --battery, tsconv.evaluate.battery).
# Each draw picks a signal family and its parameters from (seed, index): a linear forecast from
# the last L returns, a nonlinear function or an interaction of OHLCV features, the same signal
# shared by a panel, or nothing at all under GARCH-t noise. The signal that drives r[t+1] is a
# function of the bars up to t, written with tsconv's own feature definitions, so a config with
# those features sees exactly what it needs; its scale is set so that the oracle explains a drawn
# share of the variance.

SIGMA = 0.01  # the noise's standard deviation: one-bar log returns of about 1%
BURN_IN = 100  # bars simulated and dropped: the series starts in the process's steady state
BATTERY_BARS = 3200  # per ticker, as in the measurement of issue 30
TARGET_R2 = (0.03, 0.25)  # the drawn oracle R^2, log-uniform
CLIP = 3.0  # drivers are clipped to +-3 standard units: a bounded signal keeps a process that
# feeds on its own returns stationary under any noise

# The bars' shape, drawn independently of the returns: log(high / low) is lognormal and
# persistent, the close's place in the range uniform, log volume a slow level plus shocks with
# occasional spikes.
RANGE_LOG_MEAN, RANGE_LOG_SD, RANGE_PERSISTENCE = np.log(0.015), 0.35, 0.6
RANGE_MEAN = float(np.exp(RANGE_LOG_MEAN + RANGE_LOG_SD**2 / 2))
RANGE_SD = RANGE_MEAN * float(np.sqrt(np.expm1(RANGE_LOG_SD**2)))

# Each driver as the model sees it (a tsconv feature) and the location and scale that
# standardize it under its own process.
DRIVERS = {
    "log_return": (0.0, SIGMA),
    "hl_range": (RANGE_MEAN, RANGE_SD),
    "close_loc": (0.5, float(np.sqrt(1 / 12))),
    "volume_z_20": (0.0, 1.0),
}
SHAPES = {
    "abs": lambda z, knee: np.abs(z),
    "square": lambda z, knee: z**2,
    "sign": lambda z, knee: np.sign(z),
    "threshold": lambda z, knee: np.sign(z) * (np.abs(z) > knee),
}
PAIRS = [("log_return", "volume_z_20"), ("log_return", "close_loc"), ("hl_range", "close_loc")]
# Every block of six draws holds each family; two nonlinear draws, as that family has the most
# variants (4 drivers x 4 shapes).
FAMILY_BLOCK = ("linear_lag", "nonlinear", "nonlinear", "interaction", "panel", "null")


@dataclass(frozen=True)
class SignalForm:
    """The oracle forecast of r[t+1] is scale * basis[t], basis[t] a function of bars <= t:

    - lags: sum_k weights[k] * log_return[t - k] (equal weights: the L-bar momentum mom_L);
    - shape: SIGMA * (shape(z) - center), z the standardized, clipped driver `features[0]`;
    - product: SIGMA * (z1 * z2 - center) of the two drivers in `features`;
    - none: zero.

    `center` is the shape's mean under the driver's own process without a signal (estimated on
    an independent long simulation), so an even shape is not mostly a constant drift."""

    kind: str
    weights: tuple[float, ...] = ()
    features: tuple[str, ...] = ()
    shape: str = ""
    knee: float = 0.0
    center: float = 0.0

    def describe(self) -> str:
        if self.kind == "lags":
            w = np.asarray(self.weights)
            decay = "sum" if np.all(w == w[0]) else f"decay {w[1] / w[0]:.2f}"
            return f"L={len(w)} {decay} of log_return"
        if self.kind == "shape":
            knee = f" {self.knee:.2f}" if self.shape == "threshold" else ""
            return f"{self.shape}{knee}({self.features[0]})"
        if self.kind == "product":
            return " x ".join(self.features)
        return "none"


@dataclass(frozen=True)
class Noise:
    """gaussian | student_t (nu degrees of freedom) | garch_t: GARCH(1,1) variance with
    Student-t innovations; every kind has standard deviation SIGMA."""

    kind: str = "gaussian"
    nu: float = 0.0
    alpha: float = 0.0
    beta: float = 0.0

    def describe(self) -> str:
        if self.kind == "gaussian":
            return "gaussian"
        if self.kind == "student_t":
            return f"t({self.nu:g})"
        return f"garch({self.alpha:.2f},{self.beta:.2f})-t({self.nu:g})"


@dataclass(frozen=True)
class BatteryDraw:
    seed: int
    index: int
    family: str
    form: SignalForm
    noise: Noise
    tickers: int
    bars: int
    target_r2: float  # the oracle's R^2 over the whole series, 0 for a null draw

    @property
    def names(self) -> list[str]:
        return [f"S{self.seed}D{self.index:02d}T{i}" for i in range(self.tickers)]


def draw_spec(seed: int, index: int, bars: int = BATTERY_BARS) -> BatteryDraw:
    """Draw `index` of the battery of `seed`: its family, signal form, noise and oracle R^2."""
    block = np.random.default_rng([seed, index // len(FAMILY_BLOCK)]).permutation(FAMILY_BLOCK)
    family = str(block[index % len(FAMILY_BLOCK)])
    rng = np.random.default_rng([seed, index, 0])
    if family == "null":
        noise = Noise("garch_t", nu=float(rng.choice([4, 5, 6, 8])), **_garch_params(rng))
        return BatteryDraw(seed, index, family, SignalForm("none"), noise, 1, bars, 0.0)
    tickers = int(rng.integers(4, 9)) if family == "panel" else 1
    kind = str(rng.choice(["linear_lag", "nonlinear", "interaction"]))
    form = _draw_form(rng, kind if family == "panel" else family)
    u = rng.uniform()
    if u < 0.5:
        noise = Noise("gaussian")
    elif u < 0.75:
        noise = Noise("student_t", nu=float(rng.choice([4, 5, 6, 8])))
    else:
        noise = Noise("garch_t", nu=float(rng.choice([5, 6, 8])), **_garch_params(rng))
    low, high = np.log(TARGET_R2)
    target = float(np.exp(rng.uniform(low, high)))
    form = replace(
        form, center=_signal_free_mean(form, noise, np.random.default_rng([seed, index, 1]))
    )
    return BatteryDraw(seed, index, family, form, noise, tickers, bars, target)


def _garch_params(rng: np.random.Generator) -> dict[str, float]:
    alpha = float(rng.uniform(0.05, 0.12))
    return {"alpha": alpha, "beta": float(rng.uniform(0.90, 0.97) - alpha)}


def _draw_form(rng: np.random.Generator, family: str) -> SignalForm:
    if family == "linear_lag":
        lags = int(rng.integers(2, 41))
        if rng.uniform() < 0.5:
            return SignalForm("lags", weights=(1.0,) * lags)
        tau = rng.uniform(lags / 4, lags / 2)  # the weights fade to exp(-2)..exp(-4) at lag L
        return SignalForm("lags", weights=tuple(float(w) for w in np.exp(-np.arange(lags) / tau)))
    if family == "nonlinear":
        driver = str(rng.choice(list(DRIVERS)))
        shape = str(rng.choice(list(SHAPES)))
        return SignalForm(
            "shape", features=(driver,), shape=shape, knee=float(rng.uniform(0.5, 1.5))
        )
    pair = PAIRS[int(rng.integers(len(PAIRS)))]
    return SignalForm("product", features=pair)


def standardized(name: str, values: np.ndarray) -> np.ndarray:
    loc, scale = DRIVERS[name]
    return np.clip((values - loc) / scale, -CLIP, CLIP)


def basis_of(form: SignalForm, values: dict[str, np.ndarray]) -> np.ndarray:
    """The basis of a shape or product form from its drivers' values (any array shape)."""
    z = [standardized(name, values[name]) for name in form.features]
    g = SHAPES[form.shape](z[0], form.knee) if form.kind == "shape" else z[0] * z[1]
    return SIGMA * (g - form.center)


def _signal_free_mean(form: SignalForm, noise: Noise, rng: np.random.Generator) -> float:
    """The mean of the form's shape under its drivers' own processes (returns: the noise
    alone), from a long independent simulation: the constant that centers it."""
    if form.kind not in ("shape", "product"):
        return 0.0
    n = 50_000
    values = bar_shape_features(bar_shapes(rng, n))
    values["log_return"] = noise_draws(rng, noise, n)
    return float(np.nanmean(basis_of(form, values)) / SIGMA)


def noise_draws(rng: np.random.Generator, noise: Noise, n: int) -> np.ndarray:
    """n independent draws of the noise process, standard deviation SIGMA."""
    if noise.kind == "gaussian":
        return SIGMA * rng.standard_normal(n)
    unit = rng.standard_t(noise.nu, n) * np.sqrt((noise.nu - 2) / noise.nu)
    if noise.kind == "student_t":
        return SIGMA * unit
    omega = SIGMA**2 * (1 - noise.alpha - noise.beta)
    e, var = np.empty(n), SIGMA**2
    for t in range(n):
        e[t] = np.sqrt(var) * unit[t]
        var = omega + noise.alpha * e[t] ** 2 + noise.beta * var
    return e


def bar_shapes(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Each bar's log range, close location, volume, and the share of the return made between
    open and close: drawn without regard to the returns."""
    innovation = RANGE_LOG_SD * np.sqrt(1 - RANGE_PERSISTENCE**2) * rng.standard_normal(n)
    x = np.empty(n)
    x[0] = RANGE_LOG_SD * rng.standard_normal()
    for t in range(1, n):
        x[t] = RANGE_PERSISTENCE * x[t - 1] + innovation[t]
    level = np.empty(n)  # the slow part of log volume
    level[0] = 0.2 * rng.standard_normal()
    step = 0.2 * np.sqrt(1 - 0.97**2) * rng.standard_normal(n)
    for t in range(1, n):
        level[t] = 0.97 * level[t - 1] + step[t]
    spikes = rng.exponential(1.0, n) * (rng.uniform(size=n) < 0.05)
    log_volume = 13 + level + 0.25 * rng.standard_normal(n) + spikes
    return {
        "range": np.exp(RANGE_LOG_MEAN + x),
        "close_loc": rng.uniform(0, 1, n),
        "volume": np.maximum(np.round(np.exp(log_volume)), 1.0),
        "open_share": rng.uniform(0.2, 0.8, n),
    }


def bar_shape_features(shape: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The features the bars built from `shape` will have (`bars_from`): hl_range and
    close_loc by construction, and volume_z_20 as tsconv.data.features defines it (a z-score
    of log1p(volume) over the last 20 bars, the bar itself included; this layer may not import
    tsconv.data, and tests/test_battery.py asserts the two agree)."""
    lv = pd.Series(np.log1p(shape["volume"]))
    roll = lv.rolling(20, min_periods=20)
    sd = roll.std()
    volume_z = ((lv - roll.mean()) / sd.where(sd > 0)).where(sd.isna() | (sd > 0), 0.0)
    return {
        "hl_range": shape["range"],
        "close_loc": shape["close_loc"],
        "volume_z_20": volume_z.to_numpy(),
    }


def bars_from(
    returns: np.ndarray, shape: dict[str, np.ndarray], start: str = "2001-01-01"
) -> pd.DataFrame:
    """OHLCV bars on business days whose adjusted close has exactly `returns`, with
    log(high / low) = shape["range"] and (close - low) / (high - low) = shape["close_loc"]; the
    open lies in the range, a share of the return before the close (the rest is the gap)."""
    close = 100.0 * np.exp(np.cumsum(returns))
    loc, width = shape["close_loc"], np.expm1(shape["range"])
    low_ratio = 1 / (1 + loc * width)  # low / close
    high_ratio = low_ratio * np.exp(shape["range"])
    open_to_close = np.clip(shape["open_share"] * returns, -np.log(high_ratio), -np.log(low_ratio))
    open_ = close * np.exp(-open_to_close)
    return pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(close * high_ratio, np.maximum(open_, close)),
            "low": np.minimum(close * low_ratio, np.minimum(open_, close)),
            "close": close,
            "adj_close": close,
            "volume": shape["volume"],
        },
        index=pd.bdate_range(start, periods=len(returns), name="date"),
    )


@dataclass
class KnownAnswer:
    """A generated draw: each ticker's bars, and its oracle forecast of the next bar's return,
    scale * basis, by date."""

    draw: BatteryDraw
    frames: dict[str, pd.DataFrame]
    basis: dict[str, pd.Series]
    scale: float
    oracle_r2: float  # over the whole series (every ticker), as calibrated

    @property
    def oracles(self) -> dict[str, pd.Series]:
        return {t: self.scale * b for t, b in self.basis.items()}


def simulate(
    form: SignalForm, scale: float, shocks: np.ndarray, drivers: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Returns r[t+1] = scale * basis[t] + shocks[t+1] and the basis, arrays (bars, tickers);
    `drivers` holds the bar-shape features (bar_shape_features) on the same axes."""
    if form.kind == "none":
        return shocks.copy(), np.zeros_like(shocks)
    if form.kind == "lags":  # an AR(L) process: r[t] - scale * sum_k w[k] r[t-1-k] = shock[t]
        w = np.asarray(form.weights)
        returns = lfilter([1.0], np.r_[1.0, -scale * w], shocks, axis=0)
        return returns, lfilter(w, [1.0], returns, axis=0)
    returns = shocks.copy()
    if "log_return" not in form.features:  # the signal does not feed on the returns
        basis = basis_of(form, drivers)
        returns[1:] += scale * np.nan_to_num(basis[:-1])
        return returns, basis
    basis = np.empty_like(shocks)
    for t in range(len(shocks)):
        basis[t] = basis_of(
            form, {**{k: v[t] for k, v in drivers.items()}, "log_return": returns[t]}
        )
        if t + 1 < len(shocks):
            # a driver's first bars (volume_z_20's 19) have no value: no signal there
            returns[t + 1] += scale * np.nan_to_num(basis[t])
    return returns, basis


def explained_share(returns: np.ndarray, shocks: np.ndarray) -> float:
    """The oracle's R^2 on the bars after the burn-in: 1 - SSE(shocks) / SS(returns)."""
    r, e = returns[BURN_IN + 1 :], shocks[BURN_IN + 1 :]
    return 1 - float(np.sum(e**2)) / float(np.sum(r**2))


def calibrate(
    form: SignalForm, target: float, shocks: np.ndarray, drivers: dict[str, np.ndarray]
) -> float:
    """The scale at which the oracle explains `target` of the variance of these very draws."""

    def gap(scale: float) -> float:
        return explained_share(simulate(form, scale, shocks, drivers)[0], shocks) - target

    if form.kind == "lags":  # stationary while scale * sum(w) < 1; R^2 tends to 1 there
        high = 0.999 / float(np.sum(form.weights))
    else:
        high = 1.0
        while gap(high) < 0 and high < 1e4:
            high *= 2
    return float(brentq(gap, 0.0, high, xtol=1e-9, rtol=1e-9))


def generate(draw: BatteryDraw) -> KnownAnswer:
    """The bars and oracle of one battery draw (BURN_IN bars simulated first and dropped)."""
    rng = np.random.default_rng([draw.seed, draw.index, 2])
    n = draw.bars + BURN_IN
    shocks = np.column_stack([noise_draws(rng, draw.noise, n) for _ in range(draw.tickers)])
    shapes = [bar_shapes(rng, n) for _ in range(draw.tickers)]
    features = [bar_shape_features(s) for s in shapes]
    drivers = {k: np.column_stack([f[k] for f in features]) for k in features[0]}
    scale = 0.0
    if draw.form.kind != "none":
        scale = calibrate(draw.form, draw.target_r2, shocks, drivers)
    returns, basis = simulate(draw.form, scale, shocks, drivers)
    frames, bases = {}, {}
    for i, name in enumerate(draw.names):
        kept = {k: v[BURN_IN:] for k, v in shapes[i].items()}
        frames[name] = bars_from(returns[BURN_IN:, i], kept)
        bases[name] = pd.Series(basis[BURN_IN:, i], index=frames[name].index)
    return KnownAnswer(draw, frames, bases, scale, explained_share(returns, shocks))


def battery(seed: int, draws: int, bars: int = BATTERY_BARS) -> list[BatteryDraw]:
    return [draw_spec(seed, i, bars) for i in range(draws)]
