"""The verdicts in words: what a backtest's tests say (metrics.json) and what a sweep found
(sweep.json), both at one significance level."""

from __future__ import annotations

from typing import Any

import numpy as np

SIGNIFICANCE_LEVEL = 0.05


def outcome(test: dict[str, Any], better_if_negative: bool) -> str:
    """Whether a test finds the model significantly "better" or "worse" than the other side
    (its Holm-adjusted p-value below SIGNIFICANCE_LEVEL, the sign of its statistic saying
    which way), or neither: "same"."""
    p, stat = test.get("p_holm"), test.get("stat")
    if p is None or stat is None or not p < SIGNIFICANCE_LEVEL:  # a NaN p-value is not < level
        return "same"
    return "better" if (stat < 0) == better_if_negative else "worse"


EDGE_WORDS = {
    (True, True): "edge",
    (True, False): "forecast edge only",
    (False, True): "trading edge only",
    (False, False): "no edge",
}


def edge(m: dict[str, Any]) -> dict[str, Any]:
    """The bottom line of a backtest's metrics (a sweep's holdout's too, one rule for both):
    a forecast edge when the model's squared error is significantly below the zero forecast's
    (Diebold-Mariano, Holm-adjusted over the baselines), a trading edge when its strategy's net
    Sharpe ratio is significantly above buy-and-hold's (Ledoit-Wolf, Holm-adjusted over the
    strategies); the verdict is one of EDGE_WORDS."""
    vs_zero = m["forecast"]["prediction"].get("dm_vs", {}).get("zero", {})
    vs_hold = m["trading"].get("prediction", {}).get("sharpe_vs", {}).get("buy_and_hold", {})
    forecast_edge = outcome(vs_zero, better_if_negative=True) == "better"
    trading_edge = outcome(vs_hold, better_if_negative=False) == "better"
    return {
        "forecast_edge": forecast_edge,
        "trading_edge": trading_edge,
        "verdict": EDGE_WORDS[(forecast_edge, trading_edge)],
    }


def bottom_line(m: dict[str, Any]) -> str:
    """`edge`'s verdict in one line, with the two tests it rests on: what a reader acts on."""
    e = edge(m)
    vs_zero = m["forecast"]["prediction"].get("dm_vs", {}).get("zero")
    vs_hold = m["trading"].get("prediction", {}).get("sharpe_vs", {}).get("buy_and_hold")
    forecast = "below" if e["forecast_edge"] else "not significantly below"
    trading = "above" if e["trading_edge"] else "not significantly above"
    return (
        f"{e['verdict'].upper()}: squared error {forecast} the zero forecast's "
        f"({_direction_and_p(vs_zero)}); net Sharpe {trading} buy-and-hold's "
        f"({_direction_and_p(vs_hold)}); Holm-adjusted, {SIGNIFICANCE_LEVEL:.0%} level."
    )


def backtest_verdict(m: dict[str, Any]) -> str:
    """Both questions in words: does the forecast beat each baseline (DM on squared error), and
    does trading it beat each other strategy after costs (Sharpe difference); Holm-adjusted
    over each family of tests. Then the IC, pooled and per fold."""
    f = m["forecast"]["prediction"]
    words = [_forecast_words(f), _trading_words(m), _ic_words(f)]
    return " ".join(w for w in words if w)


def _ic_words(f: dict[str, Any]) -> str:
    """The pooled IC beside the per-fold one and its test, and why they can differ: a fold's
    IC leaves out the forecast's level moving from fold to fold, which pooling counts."""
    ic = f["ic_summary"]
    pooled = "n/a" if f.get("ic") is None or np.isnan(f["ic"]) else f"{f['ic']:.3f}"
    if ic.get("p_value") is None:
        return f"Pearson IC over all {f['n']:,} predictions {pooled}."
    return (
        f"Pearson IC over all {f['n']:,} predictions {pooled}; within each fold, weighted by "
        f"its predictions, {ic['mean']:.3f} (t = {ic['t_stat']:.2f}, p = {ic['p_value']:.3g}, "
        f"{ic['folds']} folds), which leaves out the forecast's level moving between folds."
    )


def _outcome_phrases(
    tests: dict[str, dict[str, Any]], better_if_negative: bool, words: dict[str, str]
) -> str:
    """The tests grouped by outcome, each group after its words: "beats a (p = 0.01); is not
    significantly different from b (p = 0.4), c"."""
    groups: dict[str, list[str]] = {"better": [], "worse": [], "same": []}
    for name, t in tests.items():
        p = t.get("p_holm")
        shown = f"{name} (p = {p:.2g})" if p is not None and not np.isnan(p) else name
        groups[outcome(t, better_if_negative)].append(shown)
    return "; ".join(f"{words[k]} {', '.join(names)}" for k, names in groups.items() if names)


def _forecast_words(f: dict[str, Any]) -> str:
    tests = f.get("dm_vs", {})
    if not tests:
        return "Too few predictions for a Diebold-Mariano test."
    words = {
        "better": "significantly lower than",
        "worse": "significantly HIGHER than",
        "same": "not significantly different from",
    }
    return (
        f"Forecast: the model's squared error is "
        f"{_outcome_phrases(tests, True, words)} (Diebold-Mariano, Holm-adjusted over "
        f"{len(tests)} baselines, {SIGNIFICANCE_LEVEL:.0%} level)."
    )


def _trading_words(m: dict[str, Any]) -> str:
    t = m["trading"].get("prediction", {})
    tests = t.get("sharpe_vs", {})
    if not tests:
        return ""
    words = {"better": "beats", "worse": "loses to", "same": "is not significantly different from"}
    sharpe = t.get("sharpe")
    shown = f"{sharpe:.2f}" if sharpe is not None and not np.isnan(sharpe) else "n/a"
    held = t.get("in_market")
    if held is not None and held < 0.995:
        shown += f", in the market on {held:.0%} of bars"
    return (
        f"Trading after costs: the model's strategy (net Sharpe {shown}) "
        f"{_outcome_phrases(tests, False, words)} (Ledoit-Wolf Sharpe-difference test, "
        f"Holm-adjusted over {len(tests)} strategies)."
    )


def sweep_verdict(r: dict[str, Any]) -> str:
    """The sweep's result in words: the chosen trial, how much of it is luck, the holdout."""
    c, d, p, h = r["chosen"], r["deflated_sharpe"], r["pbo"], r["holdout"]
    n, distinct = r["trials"]["complete"], r["trials"]["distinct"]
    kept, folds = r["trials"]["folds_kept_start"], r["trials"]["folds"]
    params = ", ".join(
        f"{k}={format(v, '.3g') if isinstance(v, float) else v}" for k, v in c["params"].items()
    )
    dsr = d["dsr"]
    confidence = 1 - SIGNIFICANCE_LEVEL
    luck = (
        f"Deflated Sharpe ratio {dsr:.2f}: the probability that its true Sharpe ratio beats the "
        f"best of {distinct} skill-less trials (expected maximum "
        f"{d['annualised']['expected_max_sharpe']:.2f} a year); "
        f"{'significant' if dsr >= confidence else 'not significant'} at the "
        f"{confidence:.0%} level."
        if dsr is not None and not np.isnan(dsr)
        else "Deflated Sharpe ratio: undefined (a flat strategy has no Sharpe ratio)."
    )
    pbo = (
        f"Probability of backtest overfitting {p['pbo']:.2f}: in that share of {p['splits']:,} "
        "splits of the selection period the trial best on one half ranked at or below the "
        "median on the other."
        if p["splits"]
        else "Probability of backtest overfitting: too few bars for the splits."
    )
    value = f"{c['objective']} {c['value']:.3f}"
    same = (
        f"{n - distinct} trial(s) repeat another's returns bar for bar, so {distinct} distinct. "
        if distinct < n
        else ""
    )
    start = (
        f"In {kept} of {folds} trial folds no epoch beat the starting weights, so the training "
        "settings made no difference there. "
        if 2 * kept > folds
        else ""
    )
    sharpe = h["sharpe"]
    return (
        f"Chose trial #{c['trial']} of {n} (trials/{c['trial']:03d}: {params}): "
        f"selection-period {value}. {same}{start}"
        f"{luck} {pbo} "
        f"Holdout {h['first_date']} to {h['last_date']}: {h['verdict'].upper()} "
        f"(R2 {h['r2_oos']:+.4f}; squared error vs the zero forecast "
        f"{_direction_and_p(h['dm_vs_zero'])}, vs ridge AR "
        f"{_direction_and_p(h['dm_vs_ridge_ar'])}; net Sharpe "
        f"{'n/a' if sharpe is None else format(sharpe, '.2f')}, vs buy-and-hold "
        f"{_direction_and_p(h['sharpe_vs_buy_and_hold'])})."
    )


def risk_sweep_verdict(r: dict[str, Any]) -> str:
    """A risk sweep's result in words: the chosen trial and its loss, the luck measure that
    applies to a loss (PBO), and the holdout's bottom line."""
    c, p, h = r["chosen"], r["pbo"], r["holdout"]
    n, distinct = r["trials"]["complete"], r["trials"]["distinct"]
    params = ", ".join(
        f"{k}={format(v, '.3g') if isinstance(v, float) else v}" for k, v in c["params"].items()
    )
    same = (
        f"{n - distinct} trial(s) repeat another's losses bar for bar, so {distinct} distinct. "
        if distinct < n
        else ""
    )
    pbo = (
        f"Probability of backtest overfitting {p['pbo']:.2f}: in that share of {p['splits']:,} "
        f"splits of the selection period the trial with the lowest {c['objective']} on one half "
        "ranked at or below the median on the other."
        if p["splits"]
        else "Probability of backtest overfitting: too few bars for the splits."
    )
    sharpe = h["managed_sharpe"]
    return (
        f"Chose trial #{c['trial']} of {n} (trials/{c['trial']:03d}: {params}): "
        f"selection-period {c['objective']} {c['value']:.4f} (lower is better). {same}{pbo} "
        f"Deflated Sharpe ratio {r['not_computed']['deflated_sharpe']}. "
        f"Holdout {h['first_date']} to {h['last_date']}: {h['bottom_line']} "
        f"Volatility-managed book: net Sharpe "
        f"{'n/a' if sharpe is None else format(sharpe, '.2f')}."
    )


def _direction_and_p(test: dict[str, Any] | None) -> str:
    """A test's direction and p-value (Holm-adjusted where it was): "lower, p = 0.03"."""
    test = test or {}
    p, stat = test.get("p_holm", test.get("p_value")), test.get("stat")
    if p is None or stat is None:
        return "n/a"
    word = "lower" if stat < 0 else "higher"
    return f"{word}, p = {p:.2g}"
