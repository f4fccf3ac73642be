"""A sweep's trials: the data split by date, and the Optuna study run in rounds of trials,
each trial a walk-forward backtest on the selection period in whichever process runs it.

Optuna proposes the trials (`tsconv.recipes.search_space` seeds its samplers by trial number)
and stores them in a SQLite file in the sweep folder; an executor (`tsconv.executors`) runs
each round's trials side by side, and this process records each one as it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tsconv import executors, runfolder
from tsconv.config import Config, config_to_dict, validate_config
from tsconv.data import covariates
from tsconv.data.load import load_frames
from tsconv.data.targets import RISK_KINDS
from tsconv.errors import DataError, FolderError, TsconvError
from tsconv.evaluate.risk_summary import selection_value
from tsconv.evaluate.sweep_summary import lower_is_better
from tsconv.executors import Executor
from tsconv.recipes import search_space
from tsconv.recipes.backtest import run_backtest
from tsconv.recipes.prepare import prepare
from tsconv.recipes.search_space import SpaceFile
from tsconv.runfolder import RunFolder

TrialHook = Callable[[int, int, dict[str, Any]], None]  # on_trial(done, total, row)


@dataclass
class SweepData:
    """The data split by date: every bar (and covariate) for the holdout's backtest, and the
    selection period's, cut before the first holdout date, for the trials."""

    frames: dict[str, pd.DataFrame]
    sources: dict[str, pd.DataFrame]
    cut: pd.Timestamp  # the first holdout date
    selection: tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]  # frames, sources


def split_data(base: Config, spc: SpaceFile, frames: dict[str, pd.DataFrame] | None) -> SweepData:
    frames = frames if frames is not None else load_frames(base.data)
    cut = holdout_start(frames, spc.sweep.holdout)
    chosen_frames = selection_frames(frames, cut)
    _check_selection(base, spc, chosen_frames, cut)
    sources = covariates.load_sources(base)  # the same for every trial: they cannot vary
    return SweepData(frames, sources, cut, (chosen_frames, selection_frames(sources, cut)))


def holdout_start(frames: dict[str, pd.DataFrame], holdout: Any) -> pd.Timestamp:
    """The first holdout date: the date a fraction `holdout` of the dates from the end, or the
    first date on or after the date `holdout`."""
    dates = pd.DatetimeIndex(sorted(set().union(*(f.index for f in frames.values()))))
    if isinstance(holdout, float):
        k = min(len(dates) - 1, int(round(len(dates) * (1 - holdout))))
    else:
        k = int(dates.searchsorted(pd.Timestamp(holdout)))
        if k >= len(dates):
            raise DataError(
                f"sweep.holdout: {holdout} is after the last date of the data, {dates[-1].date()}"
            )
    return dates[k]


def selection_frames(frames: dict[str, pd.DataFrame], cut: pd.Timestamp) -> dict[str, pd.DataFrame]:
    return {t: f[f.index < cut] for t, f in frames.items() if (f.index < cut).any()}


def _check_selection(base: Config, spc: SpaceFile, frames, cut: pd.Timestamp) -> None:
    n = max((len(f) for f in frames.values()), default=0)
    need = base.backtest.train_span + base.backtest.gap + base.window
    if n <= need:
        raise DataError(
            f"sweep.holdout: the selection period before {cut.date()} has {n} bars, no more than "
            f"backtest.train_span + gap + window = {need}; hold out less, or lower train_span"
        )


def run_trials(
    run: RunFolder,
    base: Config,
    spc: SpaceFile,
    data: SweepData,
    executor: Executor,
    n_trials: int,
    on_trial: TrialHook | None,
    resume: bool = False,
):
    """Every trial of the study (`resume`: an interrupted one's are continued), in rounds of
    trials proposed together; returns the Optuna study."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(run, resume, spc.sweep.objective)
    if resume:  # the trials an interrupted sweep finished: each folder as its backtest wrote it
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            runfolder.verify_finished(run.trial(t.number))

    def finished(task: TrialTask, row: dict[str, Any]) -> None:
        if "error" in row:
            runfolder.write_text(run.trial(task.number).error, row["error"] + "\n")
            study.tell(task.number, state=TrialState.FAIL)
        else:
            study.tell(task.number, row["value"])
        if on_trial is not None:
            on_trial(len(study.get_trials(deepcopy=False, states=_done_states())), n_trials, row)

    with executor.start(data.selection) as run_tasks:
        while pending := next_round(study, spc, n_trials):
            params = {t.number: t.params for t in study.get_trials(deepcopy=False)}
            tasks = [
                TrialTask(
                    n,
                    config_to_dict(
                        trial_config(base, spc, search_space.decode(spc, params[n]), f"trial {n}")
                    ),
                    str(run.trial(n).path),
                    spc.sweep.objective,
                    str(data.cut.date()),
                )
                for n in pending
            ]
            run_tasks(tasks, run_trial, finished)
    return study


def open_study(run: RunFolder, resume: bool, objective: str):
    """The sweep's Optuna study in study.db: a new one, maximising `objective` or minimising
    it (a loss), or (`resume`) the interrupted sweep's, which must be there. A damaged or
    locked file is one line, not SQLAlchemy's traceback."""
    import optuna
    import sqlalchemy.exc  # optuna's storage

    storage = f"sqlite:///{run.study}"
    try:
        if resume:
            study = optuna.load_study(storage=storage, study_name="sweep")
        else:
            direction = "minimize" if lower_is_better(objective) else "maximize"
            study = optuna.create_study(storage=storage, study_name="sweep", direction=direction)
        study.get_trials(deepcopy=False)  # reads every table a resume needs
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.OptunaError, KeyError) as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip("'\"") or type(exc).__name__
        raise FolderError(
            f"{run.study}: not a readable sweep study ({cause.splitlines()[0][:160]}); another "
            "program may hold it locked, or it is damaged: --overwrite starts the sweep again"
        ) from None
    return study


def next_round(study, spc: SpaceFile, n_trials: int) -> list[int]:
    """The numbers of the next round's trials: any an interrupted sweep left running, and new
    ones proposed up to the round's end; none once `n_trials` are done."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    pending = [t.number for t in trials if t.state == TrialState.RUNNING]
    if not pending and len(trials) >= n_trials:
        return []
    start = len(trials) - 1 if pending else len(trials)
    dists = search_space.distributions(spc)
    points = search_space.grid_points(spc) if spc.sweep.sampler == "grid" else None
    for number in range(len(trials), search_space.round_end(spc, start, n_trials)):
        study.sampler = search_space.sampler(spc, number)
        if points is not None:  # the grid's point `number`, given rather than drawn
            study.enqueue_trial(points[number])
        pending.append(study.ask(dists).number)
    return pending


def trial_config(base: Config, spc: SpaceFile, params: dict[str, Any], source: str) -> Config:
    """The base config with the space's fixed keys and a trial's parameters; the trial's own
    folds run one after another (the sweep runs trials side by side instead)."""
    cfg = search_space.with_values(base, {**spc.fixed, **params}, source)
    return search_space.with_values(cfg, executors.SERIAL, source)


@dataclass(frozen=True)
class TrialTask:
    """What a process needs to run one trial (sent to it, so plain values)."""

    number: int
    config: dict[str, Any]  # the trial's resolved config
    folder: str
    objective: str
    holdout_start: str


def run_trial(data: tuple[dict, dict], task: TrialTask) -> dict[str, Any]:
    """One trial, in whichever process runs it: its backtest on the selection period's bars
    and covariates `data`; its row for the study, or its error."""
    t0 = time.perf_counter()
    try:
        cfg = validate_config(task.config, f"trial {task.number}")
        m = run_backtest(
            cfg, Path(task.folder), resume=True, prep=prepare(cfg, *data), report_html=False
        )
        _check_before(RunFolder(task.folder), pd.Timestamp(task.holdout_start))
    except FolderError:
        raise  # its folder is not as its run left it: stop the sweep, not count a failure
    except TsconvError as exc:
        return {"trial": task.number, "error": str(exc), "seconds": time.perf_counter() - t0}
    return {
        "trial": task.number,
        "value": _objective(m, task.objective),
        **trial_row(m),
        "seconds": time.perf_counter() - t0,
    }


def _objective(m: dict[str, Any], objective: str) -> float:
    if lower_is_better(objective):  # a risk forecast's loss
        return float(selection_value(m))
    if objective == "r2_oos":
        return float(m["forecast"]["prediction"]["r2_oos"])
    sharpe = m["trading"]["prediction"].get("sharpe")
    return 0.0 if sharpe is None else float(sharpe)  # never in the market: flat, Sharpe 0


def trial_row(m: dict[str, Any]) -> dict[str, Any]:
    """A trial's selection-period figures for trials.parquet and the leaderboard."""
    if m.get("target") in RISK_KINDS:
        return _risk_trial_row(m)
    f, t = m["forecast"]["prediction"], m["trading"]["prediction"]
    return {
        "sharpe": t.get("sharpe"),
        "annual_return": t.get("annual_return"),
        "max_drawdown": t.get("max_drawdown"),
        "in_market": t.get("in_market"),
        "r2_oos": f.get("r2_oos"),
        "ic": f.get("ic"),
        "directional_accuracy": f.get("directional_accuracy"),
        "dm_vs_zero_p": (f.get("dm_vs_zero") or {}).get("p_value"),
        "n_predictions": m["n_predictions"],
    }


def _risk_trial_row(m: dict[str, Any]) -> dict[str, Any]:
    """A volatility trial's QLIKE, MSE of the log variance and Mincer-Zarnowitz R^2, or a
    quantiles trial's mean pinball loss and its worst coverage error over the levels; both
    with the net Sharpe ratio of the book it manages."""
    if m["target"] == "volatility":
        f = m["forecast"]["prediction"]
        row = {"qlike": f["qlike"], "mse_log": f["mse_log"], "mz_r2": f["mincer_zarnowitz"]["r2"]}
    else:
        misses = [
            abs(r["prediction"]["coverage"] - float(q))
            for q, r in m["levels"].items()
            if r["prediction"]["coverage"] is not None
        ]
        row = {
            "pinball": selection_value(m),
            "coverage_error": max(misses) if misses else None,
        }
    return {
        **row,
        "managed_sharpe": m["strategy"]["strategies"]["prediction"].get("sharpe"),
        "n_predictions": m["n_predictions"],
    }


def _check_before(run: RunFolder, cut: pd.Timestamp) -> None:
    """A trial folder resumed by hand on all the data would hold holdout predictions."""
    last = pd.read_parquet(run.predictions, columns=["date"])["date"].max()
    if pd.notna(last) and last >= cut:
        raise DataError(
            f"{run.path}: holds predictions dated {pd.Timestamp(last).date()}, in the holdout "
            f"(from {cut.date()}); it was run outside the sweep: delete the folder to rerun it"
        )


def _done_states():
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.FAIL)
