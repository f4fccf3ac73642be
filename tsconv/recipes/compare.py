"""`tsconv compare RUN_A RUN_B`: two finished backtests tested against each other on the dates
and tickers both predicted (the tests: `tsconv.evaluate.compare`).

Refused in one line: a folder that is no finished backtest (a training run, a sweep, an
interrupted backtest), two runs with no date and ticker in common, and two runs whose realised
returns differ on them (another horizon or price): their errors would not be comparable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tsconv.config import Config, load_config
from tsconv.errors import UsageError
from tsconv.evaluate.compare import common_rows, compare, compare_verdict
from tsconv.runfolder import RunFolder


def compare_runs(a: Path, b: Path) -> dict[str, Any]:
    """The comparison of the backtests in folders `a` and `b` (`compare`'s figures and tests),
    with its verdict in words."""
    if Path(a).resolve() == Path(b).resolve():
        raise UsageError(f"{a} and {b} are the same folder; compare two backtests")
    runs = [finished_backtest(RunFolder(p)) for p in (a, b)]
    preds = [pd.read_parquet(r.predictions) for r in runs]
    both = common_rows(*preds)
    if both.empty:
        spans = [_span(p) for p in preds]
        raise UsageError(
            f"{a} and {b} have no date and ticker in common ({a}: {spans[0]}; {b}: {spans[1]})"
        )
    cfgs = [_config(r) for r in runs]
    _same_target(both, cfgs, a, b)
    result = compare(both, *cfgs)
    result["runs"] = {"a": str(a), "b": str(b)}
    result["verdict"] = compare_verdict(result, str(a), str(b))
    return result


def finished_backtest(run: RunFolder) -> RunFolder:
    """`run` if it holds a finished backtest; otherwise say what it is and what to do."""
    where = run.path
    if not where.is_dir():
        raise UsageError(f"{where}: no such folder")
    if run.model.exists() or run.training_state.exists():
        raise UsageError(f"{where}: a training run, not a backtest (run tsconv backtest)")
    if run.study.exists():
        raise UsageError(f"{where}: a sweep; compare its holdout backtest, {run.holdout.path}")
    if not run.predictions.exists():
        if run.folds.is_dir():
            raise UsageError(
                f"{where}: an unfinished backtest; finish it with tsconv backtest --resume {where}"
            )
        raise UsageError(f"{where}: not a backtest folder (no {run.predictions.name})")
    if not _complete(run):
        raise UsageError(
            f"{where}: not a finished backtest ({run.manifest.name} does not mark it complete); "
            f"finish it with tsconv backtest --resume {where}"
        )
    return run


def _complete(run: RunFolder) -> bool:
    try:
        return json.loads(run.manifest.read_text()).get("complete") is True
    except (OSError, ValueError, AttributeError):
        return False


def _config(run: RunFolder) -> Config:
    if not run.config.exists():
        raise UsageError(f"{run.path}: no {run.config.name}; not a backtest folder")
    return load_config(run.config)


def _span(pred: pd.DataFrame) -> str:
    tickers = ", ".join(sorted(pred["ticker"].unique()))
    return f"{tickers} from {pred['date'].min().date()} to {pred['date'].max().date()}"


def _same_target(both: pd.DataFrame, cfgs: list[Config], a: Path, b: Path) -> None:
    """Refuse two runs whose realised returns differ on the common rows: their forecasts
    answer different questions, and comparing their errors would mean nothing."""
    ra, rb = both["realized_a"].to_numpy(), both["realized_b"].to_numpy()
    if np.allclose(ra, rb, rtol=1e-9, atol=1e-12, equal_nan=True):
        return
    why = [
        f"{key} {x} and {y}"
        for key, x, y in (
            ("target.horizon", cfgs[0].target.horizon, cfgs[1].target.horizon),
            ("data.price", cfgs[0].data.price, cfgs[1].data.price),
        )
        if x != y
    ]
    raise UsageError(
        f"{a} and {b} forecast different returns on their common dates "
        f"({'; '.join(why) or 'other prices'}); compare runs of the same target"
    )
