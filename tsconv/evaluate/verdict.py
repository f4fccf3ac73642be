"""The verdict: what a backtest's tests say, in words, at the 5% level."""

from __future__ import annotations

from typing import Any

import numpy as np


def verdict(m: dict[str, Any], level: float = 0.05) -> str:
    """Both questions in words: does the forecast beat each baseline (DM on squared error), and
    does trading it beat each other strategy after costs (Sharpe difference); Holm-adjusted
    over each family of tests."""
    f = m["forecast"]["prediction"]
    words = [_forecast_words(f, level), _trading_words(m, level)]
    ic = f["ic_summary"]
    if ic.get("p_value") is not None:
        words.append(
            f"Mean per-fold Pearson IC {ic['mean']:.3f} (t = {ic['t_stat']:.2f}, "
            f"p = {ic['p_value']:.3g})."
        )
    return " ".join(words)


def _split(tests: dict[str, dict[str, Any]], level: float, better_if_negative: bool):
    better, worse, same = [], [], []
    for name, t in tests.items():
        p, stat = t.get("p_holm"), t.get("stat")
        if p is None or stat is None or np.isnan(p) or p >= level:
            same.append(f"{name} (p = {p:.2g})" if p is not None and not np.isnan(p) else name)
        elif (stat < 0) == better_if_negative:
            better.append(f"{name} (p = {p:.2g})")
        else:
            worse.append(f"{name} (p = {p:.2g})")
    return better, worse, same


def _forecast_words(f: dict[str, Any], level: float) -> str:
    tests = f.get("dm_vs", {})
    if not tests:
        return "Too few predictions for a Diebold-Mariano test."
    better, worse, same = _split(tests, level, better_if_negative=True)
    parts = []
    if better:
        parts.append(f"significantly lower than {', '.join(better)}")
    if worse:
        parts.append(f"significantly HIGHER than {', '.join(worse)}")
    if same:
        parts.append(f"not significantly different from {', '.join(same)}")
    return (
        f"Forecast: the model's squared error is {'; '.join(parts)} "
        f"(Diebold-Mariano, Holm-adjusted over {len(tests)} baselines, {level:.0%} level)."
    )


def _trading_words(m: dict[str, Any], level: float) -> str:
    t = m["trading"].get("prediction", {})
    tests = t.get("sharpe_vs", {})
    if not tests:
        return ""
    better, worse, same = _split(tests, level, better_if_negative=False)
    sharpe = t.get("sharpe")
    parts = []
    if better:
        parts.append(f"beats {', '.join(better)}")
    if worse:
        parts.append(f"loses to {', '.join(worse)}")
    if same:
        parts.append(f"is not significantly different from {', '.join(same)}")
    shown = f"{sharpe:.2f}" if sharpe is not None and not np.isnan(sharpe) else "n/a"
    held = t.get("in_market")
    if held is not None and held < 0.995:
        shown += f", in the market on {held:.0%} of bars"
    return (
        f"Trading after costs: the model's strategy (net Sharpe {shown}) {'; '.join(parts)} "
        f"(Ledoit-Wolf Sharpe-difference test, Holm-adjusted over {len(tests)} strategies)."
    )
