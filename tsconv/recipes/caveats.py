"""What a backtest's figures do not show by themselves, said in words: a covariate that starts
later than the tickers (it shortens every ticker's history, and so the whole backtest), a
requested ticker that took no part, a price that jumps by a change of units.

Each was once found only by counting folds or tickers by hand. `tsconv backtest` prints the
lines as warnings, and they go into metrics.json (`warnings`; `left_out`: ticker -> why) and
the report's header.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tsconv.data.validate import jump_words, price_jumps
from tsconv.recipes.prepare import Prepared
from tsconv.recipes.walkforward import Fold, left_out


def backtest_caveats(
    prep: Prepared, folds: list[Fold], predictions: pd.DataFrame
) -> dict[str, Any]:
    """metrics.json's `warnings` (every line, in the order printed) and `left_out`, empty
    when there is nothing to say."""
    left = left_out(prep, folds, set(predictions["ticker"].unique()))
    lines = [
        *late_start_lines(prep),
        *(f"{t} took no part: {why}" for t, why in left.items()),
        *jump_lines(prep),
    ]
    return {"left_out": left, "warnings": lines}


def late_start_lines(prep: Prepared) -> list[str]:
    """ "history starts 2014-01-06: covariate vix starts there (SPX's own bars start
    1999-01-04)", one line per start date and covariates."""
    groups: dict[tuple[pd.Timestamp, tuple[str, ...]], list[str]] = {}
    for t, late in prep.late_starts.items():
        groups.setdefault((late.start, tuple(late.covariates)), []).append(t)
    lines = []
    for (start, labels), tickers in groups.items():
        owns = [f"{t} {prep.late_starts[t].own_start.date()}" for t in tickers]
        own = (
            f"{tickers[0]}'s own bars start {owns[0].split()[1]}"
            if len(tickers) == 1
            else f"own bars start {', '.join(owns)}"
        )
        which = (
            f"covariate {labels[0]} starts"
            if len(labels) == 1
            else f"covariates {', '.join(labels)} start"
        )
        lines.append(f"history starts {start.date()}: {which} there ({own})")
    return lines


def jump_lines(prep: Prepared, shown: int = 3) -> list[str]:
    """Each ticker's one-bar price jumps of JUMP_RATIO or more, the first `shown` of them."""
    lines = []
    for t, td in prep.data.items():
        price = pd.Series(np.exp(td.logp), index=td.dates)
        for date, ratio in list(price_jumps(price).items())[:shown]:
            lines.append(f"{t} {date.date()}: {jump_words(ratio)} (tsconv audit checks the data)")
    return lines
