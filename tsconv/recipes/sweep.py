"""`tsconv sweep`: search configs on a selection period, evaluate the chosen one once on a later
holdout, and say how much of the best result is luck.

The data is split by date. Every trial is a full walk-forward backtest on the selection period
only: the bars (and covariates) are cut before the first holdout date before any feature is
computed, so no trial can read the holdout (`tsconv.recipes.trials`). The best trial by the
objective is then evaluated once, walk-forward, on the holdout (training, as always, on
everything before each test fold). That is the result the sweep reports, next to two measures
of luck over the trials: the deflated Sharpe ratio of the chosen one and the probability of
backtest overfitting (`tsconv.evaluate.selection`). A risk target's trials are selected on
their loss instead (QLIKE, or the pinball loss over the levels; lower is better), and the
deflated Sharpe ratio, which is about selecting a Sharpe ratio, is left out and said to be.

Reads top-down (`run_sweep`): split the data, run the trials, evaluate them, backtest the
chosen one on the holdout, write the sweep folder. Each trial's backtest has its own folder, so
an interrupted sweep resumes where it stopped, trial and fold.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tsconv import executors, runfolder
from tsconv.config import Config, dump_yaml, load_config
from tsconv.errors import DataError, UsageError
from tsconv.evaluate import metrics
from tsconv.evaluate.risk_summary import selection_loss
from tsconv.evaluate.sweep_summary import (
    NO_DEFLATED_SHARPE,
    holdout_summary,
    leaderboard,
    lower_is_better,
    luck_measures,
    risk_holdout_summary,
)
from tsconv.evaluate.verdict import risk_sweep_verdict, sweep_verdict
from tsconv.executors import Executor
from tsconv.recipes import search_space
from tsconv.recipes.backtest import run_backtest
from tsconv.recipes.prepare import prepare
from tsconv.recipes.search_space import SpaceFile
from tsconv.recipes.trials import (
    SweepData,
    TrialHook,
    run_trials,
    split_data,
    trial_config,
    trial_row,
)
from tsconv.report import sweep_html
from tsconv.runfolder import RunFolder


def run_sweep(
    base: Config,
    spc: SpaceFile,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    execution: dict[str, Any] | None = None,
    on_trial: TrialHook | None = None,
    frames: dict[str, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the sweep into `out`; returns sweep.json's contents. `execution`: the
    execution keys (`backtest.workers`, ...) the trials and the holdout run with, by default
    the base config's; `on_trial(done, total, row)` as each trial ends. A new sweep replaces
    another run in `out` only with `overwrite`; the folder is locked for the sweep's life."""
    run = RunFolder(out)
    with runfolder.locked(run):
        return _sweep(run, base, spc, resume, overwrite, execution, on_trial, frames)


def _sweep(
    run: RunFolder,
    base: Config,
    spc: SpaceFile,
    resume: bool,
    overwrite: bool,
    execution: dict[str, Any] | None,
    on_trial: TrialHook | None,
    frames: dict[str, pd.DataFrame] | None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    data = split_data(base, spc, frames)
    start_sweep_folder(run, base, spc, resume, overwrite)
    n_trials = search_space.trials_to_run(spc)
    executing = search_space.with_values(base, execution or {}, "execution")
    executor = executors.choose(executing, n_trials)
    study = run_trials(run, base, spc, data, executor, n_trials, on_trial, resume)
    t_trials = time.perf_counter() - t0

    result = summarize_selection(spc, study, run.path, data.cut, data.selection[0], base)
    hm = run_holdout(run, base, spc, data, result["chosen"]["params"], executor)
    if base.target.kind == "return":
        result["holdout"] = holdout_summary(hm, data.cut)
        result["verdict"] = sweep_verdict(result)
    else:
        result["holdout"] = risk_holdout_summary(hm, data.cut, spc.sweep.objective)
        result["verdict"] = risk_sweep_verdict(result)
    result = metrics.clean(result)  # NaN (a flat strategy's Sharpe ratio) as null
    runfolder.write_json(run.sweep_result, result)
    runfolder.write_json(
        run.timing,
        {
            "trials_seconds": t_trials,
            "holdout_seconds": time.perf_counter() - t0 - t_trials,
            "workers": executor.workers,
            "executor": executor.kind,
            "threads": executor.threads,  # of each process running trials
        },
    )
    runfolder.write_text(run.report, sweep_html.render(result, run.path, hm))
    runfolder.write_manifest(run, complete=True)
    return result


def start_sweep_folder(
    run: RunFolder, base: Config, spc: SpaceFile, resume: bool, overwrite: bool
) -> None:
    """Mark the folder unfinished (a resume first checks the sweep's settings, a new sweep
    replaces another run only with `overwrite`), then write the settings."""
    if resume:
        check_resumable(run)
        runfolder.reopen(run)
    else:
        runfolder.start(run, overwrite=overwrite)
    runfolder.write_text(run.config, dump_yaml(base))
    runfolder.write_text(run.space, search_space.dump(spc))
    runfolder.write_json(run.versions, {**runfolder.versions(), "seed": base.seed})
    runfolder.record(run, [run.config, run.space, run.versions])


def run_holdout(
    run: RunFolder,
    base: Config,
    spc: SpaceFile,
    data: SweepData,
    params: dict[str, Any],
    executor: Executor,
) -> dict[str, Any]:
    """The chosen trial's config, backtested on every bar with test folds from the first
    holdout date on, run as the trials were; its metrics."""
    cfg = search_space.with_values(
        trial_config(base, spc, params, "holdout"),
        {"backtest.start": str(data.cut.date()), **executor.settings()},
        "holdout",
    )
    return run_backtest(
        cfg, run.holdout.path, resume=True, prep=prepare(cfg, data.frames, data.sources)
    )


def _trial_performance(out: Path, numbers: list[int], objective: str, base: Config) -> pd.DataFrame:
    """Per-bar performance of each trial's model, dates in rows and trials in columns, on the
    dates all of them traded: net returns, or for the r2_oos objective the squared-error
    reduction against the zero forecast (whose mean ranks trials as R^2 does), or for a risk
    target's loss its negative (a higher mean is a lower loss)."""
    cols = {}
    for n in numbers:
        folder = RunFolder(out).trial(n)
        if lower_is_better(objective):
            cols[n] = -selection_loss(pd.read_parquet(folder.predictions), base)
        elif objective == "r2_oos":
            p = pd.read_parquet(folder.predictions)
            gain = p["realized"] ** 2 - (p["prediction"] - p["realized"]) ** 2
            cols[n] = gain.groupby(p["date"]).mean()
        else:
            r = pd.read_parquet(folder.returns)
            cols[n] = r.set_index("date")["prediction"]
    return pd.DataFrame(cols).dropna()


def summarize_selection(
    spc: SpaceFile, study, out: Path, cut: pd.Timestamp, frames, base: Config
) -> dict[str, Any]:
    """sweep.json without the holdout: settings, the chosen trial, and the luck measures.
    Also writes trials.parquet and leaderboard.csv."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        errors = [RunFolder(out).trial(t.number).error for t in trials]
        first = next((e.read_text().strip() for e in errors if e.exists()), "no error recorded")
        raise DataError(f"sweep: {len(complete)} of {len(trials)} trials finished; {first}")
    table = trials_table(trials, out)
    runfolder.write_with(
        RunFolder(out).trials_table, lambda tmp: table.to_parquet(tmp, index=False)
    )
    objective = spc.sweep.objective
    board = leaderboard(table, objective)
    runfolder.write_text(RunFolder(out).leaderboard, board.to_csv(index=False))
    best = int(board["trial"].iloc[0])
    numbers = [t.number for t in complete]
    perf = _trial_performance(out, numbers, objective, base)
    if lower_is_better(objective):
        nets = None  # selected on a loss: no Sharpe ratio to deflate
    else:
        nets = _trial_performance(out, numbers, "sharpe", base) if objective != "sharpe" else perf
    periods = json.loads(RunFolder(out).trial(best).metrics.read_text())["periods_per_year"]
    luck = luck_measures(nets, perf, best, periods, spc.sweep.blocks, objective)
    row = table[table["trial"] == best].iloc[0]
    figures = ["sharpe", "r2_oos"] if nets is not None else ["managed_sharpe"]
    result = {
        "settings": spc.sweep.model_dump(mode="json") | {"trials_run": len(trials)},
        "space": list(spc.space),  # in the space file's order
        "selection": {
            "first_date": str(perf.index.min().date()),
            "last_date": str(max(f.index.max() for f in frames.values()).date()),
            "holdout_start": str(cut.date()),
        },
        "trials": {
            "complete": len(complete),
            "failed": len(trials) - len(complete),
            "distinct": luck["distinct_trials"],
            **_kept_start(out, numbers),
        },
        "chosen": {
            "trial": best,
            "params": search_space.decode(spc, {t.number: t for t in trials}[best].params),
            "objective": objective,
            "value": float(row["value"]),
            **{k: _none(row[k]) for k in figures},
        },
        "deflated_sharpe": luck["deflated_sharpe"],
        "pbo": luck["pbo"],
        "per_bar_sharpes": luck["per_bar_sharpes"],
        "periods_per_year": int(periods),
    }
    if nets is None:
        result["not_computed"] = {"deflated_sharpe": NO_DEFLATED_SHARPE.format(objective=objective)}
    return result


def _kept_start(out: Path, numbers: list[int]) -> dict[str, int]:
    """How many of the trials' folds kept the starting weights (no epoch beat them on
    validation): there the training parameters made no difference."""
    folds = [pd.read_csv(RunFolder(out).trial(n).fold_table) for n in numbers]
    return {
        "folds": sum(len(f) for f in folds),
        "folds_kept_start": sum(int((f["best_epoch"] == 0).sum()) for f in folds),
    }


def _none(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)


def trials_table(trials: list, out: Path) -> pd.DataFrame:
    """One row per trial: number, state, objective value, each parameter (as the config has
    it; lists as JSON text) and the selection-period figures."""
    metrics_rows = []
    for t in trials:
        folder = RunFolder(out).trial(t.number)
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower(), "value": t.value}
        for key, value in t.params.items():
            row[key] = value
        if folder.metrics.exists() and t.value is not None:
            row.update(trial_row(json.loads(folder.metrics.read_text())))
        if folder.error.exists():
            row["error"] = folder.error.read_text().strip()
        metrics_rows.append(row)
    return pd.DataFrame(metrics_rows)


def resumable(folder: Path, trials: int | None) -> tuple[Config, SpaceFile]:
    """The base config and space an interrupted sweep in `folder` ran with."""
    run = RunFolder(folder)
    if trials is not None:
        raise UsageError("--resume continues the sweep as it was set up; drop --trials")
    check_resumable(run)
    base = load_config(run.config)
    return base, search_space.read_space(run.space, base)


def check_resumable(run: RunFolder) -> None:
    """Refuse `--resume` on a folder without an interrupted sweep whose settings are the ones
    it recorded (its finished trials' folders are checked as the trials resume)."""
    if not run.study.exists() or not run.space.exists():
        raise UsageError(
            f"{run.path}: not an interrupted sweep (no {run.study.name} and {run.space.name})"
        )
    manifest = runfolder.read_manifest(run)
    if manifest is not None and manifest.get("complete") is True:
        raise UsageError(f"{run.path}: this sweep already finished; nothing to resume")
    runfolder.verify(run, [run.config, run.space], manifest)
