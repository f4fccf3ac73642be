"""The established risk forecasts a learned one must beat, each fitted on a fold's training
rows only and run forward causally: row t's forecast uses bars up to t.

- `ewma`: RiskMetrics, s2[t+1] = lambda s2[t] + (1 - lambda) r[t]^2, lambda 0.94, started at the
  training rows' mean squared return;
- `garch`: GARCH(1,1) with Student-t errors and a constant mean, fitted by maximum likelihood
  with the `arch` package on the training rows' returns, then filtered forward with those
  parameters (a fit that fails or does not converge falls back to `ewma`, and says so);
- `har`: Corsi's HAR, OLS of the next bars' mean proxy on the proxy's daily, weekly (5) and
  monthly (22) trailing means;
- `trailing_mean`: the proxy's mean over the last `backtest.trailing_window` bars.

`ewma` and `garch` forecast close-to-close return variance; `har` and `trailing_mean` are in
the proxy's own units. For the volatility verdict every forecast in return units is scaled by
one constant per fold and ticker, mean(rv / forecast) over the training rows (as the model's
is, tsconv.data.targets.calibration), so that a range-based proxy, which leaves out the
overnight move, scores them fairly. For quantiles the return-unit forecasts are used as they
are: `hist_sim` (the trailing window's empirical quantiles of the h-bar return), `ewma`
(normal quantiles) and `garch` (Student-t quantiles).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from tsconv.data import targets
from tsconv.data.features import TickerData
from tsconv.engine.runtime import one_blas_thread

LAMBDA = 0.94  # RiskMetrics (J.P. Morgan, 1996), daily
HAR_LAGS = (1, 5, 22)
VOL_BASELINES = ["trailing_mean", "ewma", "garch", "har"]
QUANTILE_BASELINES = ["hist_sim", "ewma", "garch"]


def returns_of(td: TickerData) -> np.ndarray:
    """Row t: the one-bar log return ending at t (NaN on the first row)."""
    return np.diff(td.logp, prepend=np.nan)


def ewma_variance(r: np.ndarray, lo: int, hi: int, upto: int, lam: float = LAMBDA) -> np.ndarray:
    """Row t in [lo, upto): the one-bar variance forecast for t+1 made at t, started at the mean
    squared return of rows [lo, hi) (the training rows); NaN before lo."""
    out = np.full(len(r), np.nan)
    train = r[lo:hi]
    s2 = float(np.nanmean(train**2)) if np.isfinite(train).any() else 0.0
    for t in range(lo, upto):
        x = r[t]
        if np.isfinite(x):
            s2 = lam * s2 + (1 - lam) * x * x
        out[t] = s2
    return out


@dataclass
class GarchFit:
    mu: float
    omega: float
    alpha: float
    beta: float
    nu: float
    failed: str | None = None  # why the fit was not used (then the forecast is EWMA's)

    def quantile_factor(self, level: float) -> float:
        """The Student-t quantile of unit variance at `level`."""
        return float(stats.t.ppf(level, self.nu) * np.sqrt((self.nu - 2) / self.nu))


# Where the likelihood's optimiser starts besides arch's own start: a slow, a typical and a fast
# daily GARCH (alpha, beta), omega matching the returns' variance, 8 degrees of freedom. From
# arch's start alone SLSQP stopped, converged by its own test, 5-8 log-likelihood units short
# of the maximum on 4 of the sample's 18 fits (AAPL's early folds, alpha near 0 and beta near
# 1), and where it stopped moved with the BLAS thread count. The best of the four is kept.
STARTS = ((0.02, 0.97), (0.05, 0.93), (0.10, 0.85))


def fit_garch(r: np.ndarray) -> GarchFit:
    """GARCH(1,1)-t of returns `r` (finite), fitted with `arch` in percent units: the
    highest likelihood of the fits from arch's start and from `STARTS` that converged (the
    first fit, flagged, if none did)."""
    from arch import arch_model

    nan = GarchFit(np.nan, np.nan, np.nan, np.nan, np.nan)
    if len(r) < 100:
        nan.failed = f"{len(r)} training returns, too few to fit"
        return nan
    x = 100 * r
    starts = [None] + [np.array([x.mean(), x.var() * (1 - a - b), a, b, 8.0]) for a, b in STARTS]
    fits, error = [], None
    for start in starts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = arch_model(x, mean="Constant", vol="GARCH", p=1, q=1, dist="t")
                fits.append(model.fit(disp="off", show_warning=False, starting_values=start))
        except Exception as exc:  # any failure of the optimiser is this fold's, reported
            error = error or exc
    if not fits:
        nan.failed = f"the fit failed: {type(error).__name__}: {error}"
        return nan

    def rank(res) -> tuple[bool, float]:
        ll = float(res.loglikelihood)
        return res.convergence_flag == 0, ll if np.isfinite(ll) else -np.inf

    res = max(fits, key=rank)  # the first of equals: arch's own start before ours
    p = res.params
    fit = GarchFit(
        float(p["mu"]) / 100,
        float(p["omega"]) / 1e4,
        float(p["alpha[1]"]),
        float(p["beta[1]"]),
        float(p["nu"]),
    )
    values = np.array([fit.mu, fit.omega, fit.alpha, fit.beta, fit.nu])
    if res.convergence_flag != 0:
        fit.failed = f"the optimiser did not converge (flag {res.convergence_flag})"
    elif not np.isfinite(values).all():
        fit.failed = "non-finite parameters"
    elif fit.alpha + fit.beta > 1 + 1e-6 or fit.nu <= 2:
        # alpha + beta at 1 (integrated GARCH, which arch's bound allows) still forecasts
        fit.failed = (
            f"an explosive fit (alpha + beta = {fit.alpha + fit.beta:.4f}, nu = {fit.nu:.2f})"
        )
    return fit


def garch_variance(r: np.ndarray, fit: GarchFit, lo: int, hi: int, upto: int) -> np.ndarray:
    """Row t in [lo, upto): s2[t+1] = omega + alpha (r[t] - mu)^2 + beta s2[t], started at the
    training rows' sample variance."""
    out = np.full(len(r), np.nan)
    train = r[lo:hi]
    s2 = float(np.nanvar(train)) if np.isfinite(train).any() else 0.0
    for t in range(lo, upto):
        x = r[t]
        if np.isfinite(x):
            s2 = fit.omega + fit.alpha * (x - fit.mu) ** 2 + fit.beta * s2
        out[t] = s2
    return out


def garch_horizon(s2_next: np.ndarray, fit: GarchFit, horizon: int) -> np.ndarray:
    """The variance of the next h bars' return: the one-step forecasts' sum, each step
    reverting to omega / (1 - alpha - beta) at rate alpha + beta."""
    persistence = fit.alpha + fit.beta
    if horizon == 1:
        return s2_next
    if persistence >= 1 - 1e-9:  # integrated: every step keeps the next one's variance
        return horizon * s2_next
    long_run = fit.omega / (1 - persistence)
    weights = persistence ** np.arange(horizon)
    return horizon * long_run + (s2_next - long_run) * weights.sum()


def har_design(proxy: np.ndarray) -> np.ndarray:
    """Row t: the proxy's mean over the last 1, 5 and 22 bars up to t (NaN until 22 exist)."""
    s = pd.Series(proxy)
    return np.column_stack([s.rolling(n, min_periods=n).mean().to_numpy() for n in HAR_LAGS])


def har_forecast(
    proxy: np.ndarray, rv: np.ndarray, base: np.ndarray, lo: int, hi: int, horizon: int
) -> np.ndarray:
    """OLS of rv[t] / h on [1, daily, weekly, monthly] over the training rows [lo, hi), for
    every row; floored at FLOOR x the trailing mean so that a variance stays positive."""
    x = np.column_stack([np.ones(len(proxy)), har_design(proxy)])
    rows = np.arange(lo, hi)
    ok = rows[np.isfinite(x[rows]).all(axis=1) & np.isfinite(rv[rows])]
    if len(ok) < 10:
        return np.full(len(proxy), np.nan)
    coef, *_ = np.linalg.lstsq(x[ok], rv[ok] / horizon, rcond=None)
    pred = x @ coef
    return horizon * np.maximum(pred, targets.FLOOR * base)


def scaled_to(forecast: np.ndarray, rv: np.ndarray, lo: int, hi: int) -> float:
    """mean(rv / forecast) over the training rows [lo, hi) (`targets.mean_ratio`: a bad
    print's ratio capped): the one constant that puts a return-unit forecast in the proxy's
    units."""
    return targets.mean_ratio(rv[lo:hi], forecast[lo:hi])


@dataclass
class RiskBaselines:
    """One ticker's baseline forecasts on its test rows, and how GARCH went."""

    variance: dict[str, np.ndarray]  # name -> proxy-unit forecasts (the volatility verdict)
    return_variance: dict[str, np.ndarray]  # ewma, garch: return-unit forecasts
    garch: GarchFit


@one_blas_thread  # the GARCH fit's optimum must not depend on the BLAS thread count
def risk_baselines(
    td: TickerData, train: tuple[int, int], rows: np.ndarray, horizon: int, window: int
) -> RiskBaselines:
    """Every baseline of one ticker at `rows`, fitted on its training rows `train`."""
    lo, hi = train
    risk = td.risk
    proxy, rv, base = risk["proxy"], risk["rv"], risk["base"]
    r = returns_of(td)
    upto = int(rows.max()) + 1 if len(rows) else hi
    upto = max(upto, hi)
    ewma1 = ewma_variance(r, lo, hi, upto)
    garch = fit_garch(r[lo + 1 : hi][np.isfinite(r[lo + 1 : hi])])
    ewma = horizon * ewma1
    if garch.failed is None:
        g = garch_horizon(garch_variance(r, garch, lo, hi, upto), garch, horizon)
    else:
        g = ewma
    trailing = horizon * pd.Series(proxy).rolling(window, min_periods=1).mean().to_numpy()
    har = har_forecast(proxy, rv, base, lo, hi, horizon)
    variance = {
        "trailing_mean": trailing[rows],
        "ewma": ewma[rows] * scaled_to(ewma, rv, lo, hi),
        "garch": g[rows] * scaled_to(g, rv, lo, hi),
        "har": har[rows],
    }
    return RiskBaselines(variance, {"ewma": ewma[rows], "garch": g[rows]}, garch)


def historical_quantiles(
    td: TickerData, rows: np.ndarray, horizon: int, window: int, levels: list[float]
) -> np.ndarray:
    """(rows, levels): the empirical quantiles of the h-bar log returns ending in the last
    `window` bars up to each row (historical simulation)."""
    past = np.full(len(td.logp), np.nan)
    past[horizon:] = td.logp[horizon:] - td.logp[:-horizon]
    out = np.full((len(rows), len(levels)), np.nan)
    for i, t in enumerate(rows):
        w = past[max(0, t - window + 1) : t + 1]
        w = w[np.isfinite(w)]
        if len(w):
            out[i] = np.quantile(w, levels, method="inverted_cdf")
    return out


def quantile_baselines(
    td: TickerData,
    base: RiskBaselines,
    rows: np.ndarray,
    horizon: int,
    window: int,
    levels: list[float],
) -> dict[str, np.ndarray]:
    """name -> (rows, levels) quantile forecasts of the next h bars' log return."""
    z = stats.norm.ppf(levels)
    ewma_sd = np.sqrt(base.return_variance["ewma"])[:, None]
    g = base.garch
    if g.failed is None:
        k = np.array([g.quantile_factor(q) for q in levels])
        garch_q = horizon * g.mu + np.sqrt(base.return_variance["garch"])[:, None] * k
    else:
        garch_q = ewma_sd * z
    return {
        "hist_sim": historical_quantiles(td, rows, horizon, window, levels),
        "ewma": ewma_sd * z,
        "garch": garch_q,
    }
