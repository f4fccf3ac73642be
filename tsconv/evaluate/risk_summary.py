"""A risk backtest's numbers (metrics.json for `target.kind: volatility | quantiles`): each
forecast's losses, the model's Diebold-Mariano tests against every baseline (Holm-adjusted),
coverage tests, breakdowns by ticker and fold, and the verdict in words."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tsconv.config import Config
from tsconv.data.targets import quantile_column
from tsconv.evaluate import metrics, risk_metrics
from tsconv.evaluate.risk_baselines import QUANTILE_BASELINES, VOL_BASELINES
from tsconv.evaluate.summary import predictions_span
from tsconv.evaluate.verdict import SIGNIFICANCE_LEVEL, outcome

# the baselines a volatility edge must beat: the established models, not only the naive mean
ESTABLISHED = ["ewma", "garch", "har"]


def _header(pred: pd.DataFrame, cfg: Config) -> dict[str, Any]:
    return {"target": cfg.target.kind, **predictions_span(pred, cfg)}


def _by_date(pred: pd.DataFrame, loss: np.ndarray) -> np.ndarray:
    """A loss averaged across tickers on each date, in date order: what DM tests compare."""
    return pred.assign(_l=loss).groupby("date", sort=True)["_l"].mean().to_numpy()


def selection_loss(pred: pd.DataFrame, cfg: Config, name: str = "prediction") -> pd.Series:
    """The loss a sweep selects a risk model on, averaged across tickers on each date (index:
    the dates in order): QLIKE of forecast `name` (volatility), or its pinball loss averaged
    over the target's levels (quantiles)."""
    y = pred["realized"].to_numpy()
    if cfg.target.kind == "volatility":
        loss = risk_metrics.qlike(pred[name].to_numpy(), y)
    else:
        levels = cfg.target.levels
        loss = sum(
            risk_metrics.pinball(pred[quantile_column(name, q)].to_numpy(), y, q) for q in levels
        ) / len(levels)
    return pred.assign(_l=loss).groupby("date", sort=True)["_l"].mean()


def selection_value(m: dict[str, Any], name: str = "prediction") -> float | None:
    """The same loss over the whole run, from a risk backtest's metrics.json: forecast
    `name`'s QLIKE, or its pinball loss averaged over the levels (None where a level has
    none)."""
    if m["target"] == "volatility":
        return m["forecast"][name]["qlike"]
    losses = [row[name]["pinball"] for row in m["levels"].values()]
    return None if any(v is None for v in losses) else float(np.mean(losses))


def _with_holm(tests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    adjusted = metrics.holm([t["p_value"] for t in tests.values()])
    for t, p in zip(tests.values(), adjusted, strict=True):
        t["p_holm"] = p
    return tests


def qlike_tests(pred: pd.DataFrame, names: list[str], horizon: int) -> dict[str, dict[str, Any]]:
    """DM of the model's QLIKE against each forecast in `names`, Holm-adjusted over them."""
    rv = pred["realized"].to_numpy()
    model = _by_date(pred, risk_metrics.qlike(pred["prediction"].to_numpy(), rv))
    tests = {
        b: metrics.diebold_mariano(
            model, _by_date(pred, risk_metrics.qlike(pred[b].to_numpy(), rv)), horizon
        )
        for b in names
    }
    return _with_holm(tests)


def summarize_volatility(pred: pd.DataFrame, cfg: Config) -> dict[str, Any]:
    """metrics.json of a volatility backtest (the `strategy` section is added by the caller)."""
    out = _header(pred, cfg)
    out["proxy"] = cfg.target.proxy
    rv = pred["realized"].to_numpy()
    out["forecast"] = {
        name: risk_metrics.variance_metrics(pred[name].to_numpy(), rv)
        for name in ["prediction", *VOL_BASELINES]
    }
    out["forecast"]["prediction"]["dm_vs"] = qlike_tests(pred, VOL_BASELINES, cfg.target.horizon)
    out["by_ticker"] = _breakdown(pred, "ticker")
    out["by_fold"] = _breakdown(pred, "fold")
    out["edge"] = volatility_edge(out)
    out["bottom_line"] = volatility_bottom_line(out)
    out["verdict"] = volatility_verdict(out)
    return out


def _breakdown(pred: pd.DataFrame, by: str) -> dict[str, dict[str, Any]]:
    """QLIKE of the model and of each baseline per ticker or fold (`by`)."""
    out = {}
    for key, g in pred.groupby(by, sort=True):
        rv = g["realized"].to_numpy()
        row: dict[str, Any] = {"n": len(g)}
        for name in ["prediction", *VOL_BASELINES]:
            row[f"qlike_{name}"] = float(np.mean(risk_metrics.qlike(g[name].to_numpy(), rv)))
        out[str(key)] = row
    return out


def volatility_edge(m: dict[str, Any]) -> dict[str, Any]:
    """An edge: the model's QLIKE significantly below every established baseline's (EWMA,
    GARCH, HAR); `beats`/`loses_to`: the baselines with a significant difference."""
    tests = m["forecast"]["prediction"]["dm_vs"]
    beats = [b for b, t in tests.items() if outcome(t, True) == "better"]
    loses = [b for b, t in tests.items() if outcome(t, True) == "worse"]
    edge = all(b in beats for b in ESTABLISHED)
    return {"forecast_edge": edge, "beats": beats, "loses_to": loses}


def _p(t: dict[str, Any]) -> str:
    p, stat = t.get("p_holm"), t.get("stat")
    if p is None or stat is None:
        return "n/a"
    return f"{'lower' if stat < 0 else 'higher'}, p = {p:.2g}"


def volatility_bottom_line(m: dict[str, Any]) -> str:
    e, tests = m["edge"], m["forecast"]["prediction"]["dm_vs"]
    f = m["forecast"]
    word = "VOLATILITY EDGE" if e["forecast_edge"] else "NO VOLATILITY EDGE"
    against = ", ".join(f"{b} {f[b]['qlike']:.3f} ({_p(tests[b])})" for b in VOL_BASELINES)
    return (
        f"{word}: QLIKE {f['prediction']['qlike']:.3f} against {against}; an edge is a QLIKE "
        f"significantly below EWMA's, GARCH's and HAR's (Diebold-Mariano, Holm-adjusted, "
        f"{SIGNIFICANCE_LEVEL:.0%} level)."
    )


def _phrases(tests: dict[str, dict[str, Any]], words: dict[str, str]) -> str:
    groups: dict[str, list[str]] = {"better": [], "worse": [], "same": []}
    for name, t in tests.items():
        p = t.get("p_holm")
        shown = f"{name} (p = {p:.2g})" if p is not None and not np.isnan(p) else name
        groups[outcome(t, True)].append(shown)
    return "; ".join(f"{words[k]} {', '.join(v)}" for k, v in groups.items() if v)


def volatility_verdict(m: dict[str, Any]) -> str:
    f = m["forecast"]["prediction"]
    words = {
        "better": "significantly lower than",
        "worse": "significantly HIGHER than",
        "same": "not significantly different from",
    }
    mz = f["mincer_zarnowitz"]
    mz_words = (
        f" Mincer-Zarnowitz: realised = {mz['intercept']:.2g} + {mz['slope']:.2f} x forecast, "
        f"R^2 {mz['r2']:.3f} (an unbiased forecast has slope 1)."
        if mz.get("slope") is not None and mz.get("r2") is not None
        else ""
    )
    return (
        f"Volatility forecast ({m['proxy']} proxy): the model's QLIKE is "
        f"{_phrases(f['dm_vs'], words)} (Diebold-Mariano on QLIKE, Holm-adjusted over "
        f"{len(f['dm_vs'])} baselines, {SIGNIFICANCE_LEVEL:.0%} level); MSE of the log "
        f"variance {f['mse_log']:.3f}.{mz_words}"
    )


# --------------------------------------------------------------------------- quantiles


def summarize_quantiles(pred: pd.DataFrame, cfg: Config) -> dict[str, Any]:
    """metrics.json of a quantiles backtest: per level and forecast the pinball loss, the
    coverage with Kupiec's and Christoffersen's tests, and the model's DM tests on pinball
    loss against each baseline (Holm-adjusted over baselines, per level)."""
    out = _header(pred, cfg)
    out["proxy"] = cfg.target.proxy
    levels = cfg.target.levels
    y = pred["realized"].to_numpy()
    names = ["prediction", *QUANTILE_BASELINES]
    per_level: dict[str, Any] = {}
    for q in levels:
        row: dict[str, Any] = {}
        losses = {}
        for name in names:
            qf = pred[quantile_column(name, q)].to_numpy()
            ok = np.isfinite(qf)
            loss = risk_metrics.pinball(qf[ok], y[ok], q)
            losses[name] = _by_date(pred[ok], loss)
            hits = y[ok] < qf[ok]
            row[name] = {
                "pinball": float(np.mean(loss)) if len(loss) else None,
                "coverage": float(np.mean(hits)) if len(hits) else None,
                "kupiec": risk_metrics.kupiec(hits, q),
                "christoffersen": _christoffersen_per_ticker(pred[ok], hits),
            }
        row["prediction"]["dm_vs"] = _with_holm(
            {
                b: metrics.diebold_mariano(losses["prediction"], losses[b], cfg.target.horizon)
                for b in QUANTILE_BASELINES
                if len(losses[b]) == len(losses["prediction"])
            }
        )
        per_level[f"{q:g}"] = row
    out["levels"] = per_level
    out["by_ticker"] = _quantile_breakdown(pred, "ticker", levels)
    out["by_fold"] = _quantile_breakdown(pred, "fold", levels)
    out["bottom_line"], out["verdict"] = quantile_words(out)
    return out


def _christoffersen_per_ticker(pred: pd.DataFrame, hits: np.ndarray) -> dict[str, Any]:
    """Christoffersen's test on the hits in time order; with several tickers, the LR
    statistics of each ticker's sequence summed (chi^2 with one degree of freedom each)."""
    from scipy.stats import chi2

    frame = pred.assign(_h=hits)
    lrs = []
    for _, g in frame.groupby("ticker", sort=True):
        t = risk_metrics.christoffersen(g.sort_values("date")["_h"].to_numpy())
        if t["lr"] is not None:
            lrs.append(t["lr"])
    if not lrs:
        return {"lr": None, "p_value": None}
    return {"lr": float(sum(lrs)), "p_value": float(chi2.sf(sum(lrs), len(lrs)))}


def _quantile_breakdown(pred: pd.DataFrame, by: str, levels: list[float]) -> dict[str, Any]:
    out = {}
    for key, g in pred.groupby(by, sort=True):
        y = g["realized"].to_numpy()
        row: dict[str, Any] = {"n": len(g)}
        for q in levels:
            qf = g[quantile_column("prediction", q)].to_numpy()
            row[f"coverage@{q:g}"] = float(np.mean(y < qf))
            row[f"pinball@{q:g}"] = float(np.mean(risk_metrics.pinball(qf, y, q)))
        out[str(key)] = row
    return out


def quantile_words(m: dict[str, Any]) -> tuple[str, str]:
    """(bottom line, verdict) of a quantiles backtest."""
    parts, failed, better = [], [], []
    for level, row in m["levels"].items():
        f = row["prediction"]
        k = f["kupiec"]
        if k["p_value"] is not None and k["p_value"] < SIGNIFICANCE_LEVEL:
            failed.append(level)
        tests = f["dm_vs"]
        beats = [b for b, t in tests.items() if outcome(t, True) == "better"]
        loses = [b for b, t in tests.items() if outcome(t, True) == "worse"]
        if len(beats) == len(tests) and tests:
            better.append(level)
        cov = "n/a" if f["coverage"] is None else f"{f['coverage']:.3f}"
        parts.append(
            f"{level}: coverage {cov} (Kupiec p = {_fmt(k['p_value'])}, Christoffersen p = "
            f"{_fmt(f['christoffersen']['p_value'])}), pinball "
            f"{'beats ' + ', '.join(beats) if beats else 'beats none'}"
            f"{'; loses to ' + ', '.join(loses) if loses else ''}"
        )
    calibrated = "calibrated at every level" if not failed else f"miscovers {', '.join(failed)}"
    edge = (
        f"lower pinball loss than every baseline at {', '.join(better)}"
        if better
        else "no level with a pinball loss significantly below every baseline's"
    )
    bottom = (
        f"QUANTILES: {calibrated} (Kupiec, {SIGNIFICANCE_LEVEL:.0%} level); {edge} "
        f"(Diebold-Mariano, Holm-adjusted over {len(QUANTILE_BASELINES)} baselines)."
    )
    return bottom, "Per level: " + "; ".join(parts) + "."


def _fmt(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.2g}"


# --------------------------------------------------------------------------- a risk backtest


def summarize_risk(
    pred: pd.DataFrame, cfg: Config, folds: pd.DataFrame
) -> tuple[dict[str, Any], dict[str, pd.Series]]:
    """metrics.json of a volatility or quantiles backtest, with the volatility-managed
    strategy, and each managed book's net returns (returns.parquet)."""
    from tsconv.evaluate.risk_strategy import managed_strategies

    if cfg.target.kind == "volatility":
        out = summarize_volatility(pred, cfg)
        forecasts = list(VOL_BASELINES)
    else:
        out = summarize_quantiles(pred, cfg)
        forecasts = []
    out["strategy"], nets = managed_strategies(pred, cfg, out["periods_per_year"], forecasts)
    fallback = folds.get("garch_fallback") if len(folds) else None
    if fallback is not None:
        out["garch_fallbacks"] = {
            str(k): str(v) for k, v in zip(folds["fold"], fallback, strict=True) if v and v == v
        }
        if out["garch_fallbacks"]:
            out.setdefault("warnings", []).append(
                "GARCH did not fit on fold(s) "
                + ", ".join(out["garch_fallbacks"])
                + ": EWMA stands in for it there (folds.csv: garch_fallback)"
            )
    clipped = folds.get("forecasts_clipped") if len(folds) else None
    out["forecasts_clipped"] = 0 if clipped is None else int(clipped.sum())
    if out["forecasts_clipped"]:
        where = folds.loc[clipped > 0, "fold"].astype(str)
        out.setdefault("warnings", []).append(
            f"{out['forecasts_clipped']} model forecast(s) in fold(s) {', '.join(where)} lay "
            "beyond the model's forecasts on the fold's training rows and were clipped to "
            "them (folds.csv: forecasts_clipped)"
        )
    return metrics.clean(out), nets
