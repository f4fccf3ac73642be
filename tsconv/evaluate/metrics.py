"""Forecast and trading metrics, and significance tests. Pure functions of arrays and frames.

Conventions (also in the README and every report):
- Targets and predictions are log returns over the horizon h.
- Trading: the position for bar t is taken at t's close and earns the simple return
  exp(r[t+1]) - 1 of the next bar; costs are cost_bps/1e4 per unit of turnover |pos_t - pos_{t-1}|.
- Equity is compounded: equity_t = prod(1 + net_s), never summed.
- Annualisation uses `periods_per_year` (252 by default): mean * P, std * sqrt(P),
  annual return = equity_end ** (P / n) - 1.
- IC: Pearson correlation of prediction and realised return; rank IC: Spearman. Per-fold ICs are
  averaged weighted by each fold's predictions (`ic_summary`); ICIR = mean / std of the
  per-fold ICs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def _nan(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return math.nan
    # average ranks for ties, as scipy.stats.rankdata; scipy.stats is slow to import
    return pearson(pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy())


def directional_accuracy(pred: np.ndarray, real: np.ndarray) -> float:
    """Share of bars where sign(pred) == sign(real), over bars with a non-zero prediction."""
    m = pred != 0
    return float(np.mean(np.sign(pred[m]) == np.sign(real[m]))) if m.any() else math.nan


def forecast_metrics(pred: np.ndarray, real: np.ndarray) -> dict[str, Any]:
    err = pred - real
    sse0 = float(np.sum(real**2))
    da = directional_accuracy(pred, real)
    n_dir = int((pred != 0).sum())
    return {
        "n": len(pred),
        "mse": float(np.mean(err**2)),
        "mae": float(np.mean(np.abs(err))),
        "r2_oos": 1 - float(np.sum(err**2)) / sse0 if sse0 > 0 else math.nan,
        "directional_accuracy": da,
        "directional_accuracy_se": math.sqrt(0.25 / n_dir) if n_dir else math.nan,
        "ic": pearson(pred, real),
        "rank_ic": spearman(pred, real),
    }


def ic_summary(per_fold: list[float], sizes: list[int]) -> dict[str, Any]:
    """The per-fold ICs' mean and its t-test, each fold weighted by its number of predictions
    (`sizes`), folds with no IC left out.

    Weighted because a fold's IC is a correlation over its predictions, whose sampling variance
    shrinks as 1 / n: with equal weights a 10-bar last fold counts as much as a 250-bar one and
    its noise can carry the test. This is weighted least squares of the ICs on a constant:
    mean m = sum(n_i ic_i) / N, std s = sqrt(sum(n_i (ic_i - m)^2) / ((k - 1) N / k)), the
    spread of the ICs of a fold of average size, t = m / (s / sqrt(k)) on k - 1 degrees of
    freedom; with equal sizes, the plain mean, std and t-test of the ICs."""
    known = [(ic, n) for ic, n in zip(per_fold, sizes, strict=True) if np.isfinite(ic)]
    ics = np.array([ic for ic, _ in known])
    n = np.array([size for _, size in known], dtype=float)
    out: dict[str, Any] = {"folds": len(ics), "predictions": int(n.sum()), "weighting": "fold size"}
    if len(ics) < 2:
        mean = _nan(ics.mean()) if len(ics) else None
        return {"mean": mean, "std": None, "icir": None, "t_stat": None, "p_value": None, **out}
    k, total = len(ics), n.sum()
    mean = float(n @ ics / total)
    sd = math.sqrt(float(n @ (ics - mean) ** 2) / ((k - 1) * total / k))
    t = mean / (sd / math.sqrt(k)) if sd > 0 else math.nan
    p = student_t_two_sided(t, k - 1) if np.isfinite(t) else math.nan
    return {
        "mean": mean,
        "std": sd,
        "icir": mean / sd if sd > 0 else None,
        "t_stat": _nan(t),
        "p_value": _nan(p),
        **out,
    }


def newey_west_variance(d: np.ndarray, lags: int) -> float:
    """Long-run variance of d with Bartlett weights 1 - k/(lags+1)."""
    d = d - d.mean()
    n = len(d)
    var = float(d @ d) / n
    for k in range(1, lags + 1):
        cov = float(d[k:] @ d[:-k]) / n
        var += 2 * (1 - k / (lags + 1)) * cov
    return var


def diebold_mariano(loss_a: np.ndarray, loss_b: np.ndarray, horizon: int = 1) -> dict[str, Any]:
    """DM test of equal predictive accuracy; negative statistic: `a` has the smaller loss.

    d = loss_a - loss_b, DM = mean(d) / sqrt(LRV(d) / n), LRV by Newey-West with h-1 lags,
    two-sided p-value from the standard normal.
    """
    d = np.asarray(loss_a, float) - np.asarray(loss_b, float)
    n = len(d)
    if n < 3:
        return {"stat": None, "p_value": None, "n": n}
    lrv = newey_west_variance(d, max(horizon - 1, 0))
    if lrv <= 0:
        return {"stat": None, "p_value": None, "n": n}
    stat = float(d.mean() / math.sqrt(lrv / n))
    return {"stat": stat, "p_value": normal_two_sided(stat), "n": n}


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None): controls the chance of any false
    rejection among the tests at the nominal level."""
    known = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    out: list[float | None] = [None] * len(p_values)
    running, m = 0.0, len(known)
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def newey_west_lags(n: int) -> int:
    """The usual automatic bandwidth floor(4 (n / 100)^(2/9))."""
    return int(4 * (n / 100) ** (2 / 9)) if n > 0 else 0


def sharpe_difference(a: np.ndarray, b: np.ndarray, lags: int | None = None) -> dict[str, Any]:
    """Test of equal Sharpe ratios of two strategies' returns on the same bars (Ledoit and
    Wolf 2008, the HAC delta method): the per-bar Sharpe difference, its standard error from
    the Newey-West covariance of (a, b, a^2, b^2), and a two-sided normal p-value. Positive
    statistic: `a` has the higher Sharpe ratio."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    if n < 10 or len(b) != n:
        return {"stat": None, "p_value": None, "n": n}
    mu_a, mu_b = a.mean(), b.mean()
    g_a, g_b = (a**2).mean(), (b**2).mean()
    var_a, var_b = g_a - mu_a**2, g_b - mu_b**2
    if var_a <= 0 or var_b <= 0:
        return {"stat": None, "p_value": None, "n": n}
    if np.array_equal(a, b):  # no difference at all, where rounding may give a variance <= 0
        return {"stat": 0.0, "p_value": 1.0, "n": n, "difference": 0.0}
    diff = mu_a / math.sqrt(var_a) - mu_b / math.sqrt(var_b)
    grad = np.array(
        [
            g_a / var_a**1.5,
            -g_b / var_b**1.5,
            -mu_a / (2 * var_a**1.5),
            mu_b / (2 * var_b**1.5),
        ]
    )
    y = np.column_stack([a - mu_a, b - mu_b, a**2 - g_a, b**2 - g_b])
    lags = newey_west_lags(n) if lags is None else lags
    psi = y.T @ y / n
    for k in range(1, lags + 1):
        gamma = y[k:].T @ y[:-k] / n
        psi += (1 - k / (lags + 1)) * (gamma + gamma.T)
    var = float(grad @ psi @ grad) / n
    if var <= 0:
        return {"stat": None, "p_value": None, "n": n}
    stat = diff / math.sqrt(var)
    return {"stat": float(stat), "p_value": normal_two_sided(stat), "n": n, "difference": diff}


def infer_periods_per_year(dates: pd.DatetimeIndex | pd.Series) -> int:
    """Bars per year from the spacing of the bars' dates: 252 for business days, 365 for
    every calendar day (crypto), 52 weekly, 12 monthly, and 252 x the median bars per day
    for intraday bars. 252 when there are too few dates to tell."""
    ts = pd.DatetimeIndex(pd.unique(pd.Series(dates))).sort_values()
    if len(ts) < 3:
        return 252
    gaps = np.diff(ts.to_numpy()).astype("timedelta64[s]").astype(np.float64)
    gap_days = float(np.median(gaps)) / 86_400
    if gap_days >= 25:
        return 12
    if gap_days >= 5:
        return 52
    if gap_days >= 0.9:
        weekend = float(np.mean(ts.day_of_week >= 5))
        return 365 if weekend > 0.2 else 252
    per_day = pd.Series(1, index=ts).groupby(ts.normalize()).size()
    return 252 * int(round(float(per_day.median())))


def normal_two_sided(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2))


def student_t_two_sided(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    from scipy.special import stdtr  # imports far faster than scipy.stats

    return float(2 * stdtr(df, -abs(t)))


def positions(
    pred: pd.Series, kind: str, scale_window: int = 63, threshold: float = 0.0
) -> pd.Series:
    """sign(pred); `scaled`: pred divided by the trailing std of earlier predictions, clipped
    to [-1, 1]; `threshold`: sign(pred) where |pred| exceeds `threshold`, else flat."""
    if kind == "sign":
        return np.sign(pred)
    if kind == "threshold":
        return np.sign(pred).where(pred.abs() > threshold, 0.0)
    scale = pred.shift(1).rolling(scale_window, min_periods=10).std()
    return (pred / scale).clip(-1, 1).fillna(0.0)


MAX_LEVERAGE = 3.0


def target_volatility(
    pos: pd.Series, ret1: pd.Series, target: float, periods_per_year: int, window: int = 63
) -> pd.Series:
    """`pos` scaled by target / the instrument's trailing annualised volatility, at most
    MAX_LEVERAGE. `ret1` at row t is the return from t to t+1; the volatility at t uses the
    returns up to t only (ret1 shifted by one bar), none before 10 of them are known."""
    vol = ret1.shift(1).rolling(window, min_periods=10).std() * math.sqrt(periods_per_year)
    return (pos * (target / vol).clip(upper=MAX_LEVERAGE)).fillna(0.0)


COST_LEVELS_BPS = (0, 5, 10, 20)


def cost_sensitivity(
    gross: np.ndarray, turnover: np.ndarray, periods_per_year: int
) -> dict[str, Any]:
    """What costs do to a strategy with these gross returns and turnover per bar: net Sharpe
    at COST_LEVELS_BPS, and the break-even cost (bps per unit of turnover) at which the mean
    net return is zero."""
    gross, turnover = np.asarray(gross, float), np.asarray(turnover, float)
    p, out = periods_per_year, {}
    for bps in COST_LEVELS_BPS:
        net = gross - bps / 1e4 * turnover
        sd = net.std(ddof=1) if len(net) > 1 else math.nan
        out[str(bps)] = float(net.mean() / sd * math.sqrt(p)) if sd > 0 else math.nan
    mean_turn = float(turnover.mean()) if len(turnover) else math.nan
    return {
        "sharpe_at_bps": out,
        "gross_mean_per_bar": float(gross.mean()) if len(gross) else math.nan,
        "break_even_bps": float(gross.mean() / mean_turn * 1e4) if mean_turn > 0 else math.nan,
    }


def trading_returns(pos: pd.Series, ret1: pd.Series, cost_bps: float) -> pd.Series:
    """Net simple return per bar for one instrument; the first bar pays to open its position."""
    turnover = pos.diff().abs().fillna(pos.abs())
    return pos * np.expm1(ret1) - cost_bps / 1e4 * turnover


def max_drawdown(equity: np.ndarray) -> float:
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    return float(np.min(equity / peak - 1)) if len(equity) else math.nan


def trading_metrics(
    net: np.ndarray,
    periods_per_year: int,
    turnover: np.ndarray | None = None,
    active: np.ndarray | None = None,
) -> dict[str, Any]:
    net = np.asarray(net, float)
    n = len(net)
    if n == 0:
        return {}
    equity = np.cumprod(1 + net)
    p = periods_per_year
    sd = net.std(ddof=1) if n > 1 else math.nan
    downside = math.sqrt(np.mean(np.minimum(net, 0) ** 2))
    ann = float(equity[-1] ** (p / n) - 1) if equity[-1] > 0 else -1.0
    mdd = max_drawdown(equity)
    act = np.ones(n, bool) if active is None else active
    sharpe = float(net.mean() / sd * math.sqrt(p)) if sd > 0 else math.nan
    return {
        "total_return": float(equity[-1] - 1),
        "annual_return": ann,
        "annual_volatility": float(sd * math.sqrt(p)),
        "sharpe": sharpe,
        "sharpe_ci95": sharpe_interval(sharpe, n, p),
        "sortino": float(net.mean() / downside * math.sqrt(p)) if downside > 0 else math.nan,
        "max_drawdown": mdd,
        "calmar": ann / abs(mdd) if mdd < 0 else math.nan,
        "turnover_per_bar": float(np.mean(turnover)) if turnover is not None else math.nan,
        "hit_rate": float(np.mean(net[act] > 0)) if act.any() else math.nan,
        "bars": n,
    }


def sharpe_interval(sharpe: float, n: int, periods_per_year: int) -> list[float]:
    """95% interval of an annualised Sharpe ratio from n bars (Lo 2002, iid returns): the
    per-bar ratio s has standard error sqrt((1 + s^2 / 2) / n)."""
    if not np.isfinite(sharpe) or n < 2:
        return [math.nan, math.nan]
    root = math.sqrt(periods_per_year)
    s = sharpe / root
    half = 1.959964 * math.sqrt((1 + s**2 / 2) / n) * root
    return [sharpe - half, sharpe + half]


def clean(obj: Any) -> Any:
    """NaN/inf -> None so metrics.json is valid JSON."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
