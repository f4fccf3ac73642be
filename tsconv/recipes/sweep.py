"""`tsconv sweep`: search configs on a selection period, evaluate the chosen one once on a later
holdout, and say how much of the best result is luck.

The data is split by date. Every trial is a full walk-forward backtest on the selection period
only: the bars (and covariates) are cut before the first holdout date before any feature is
computed, so no trial can read the holdout. The best trial by the objective is then evaluated once, walk-forward,
on the holdout (training, as always, on everything before each test fold). That is the result
the sweep reports, next to two measures of luck over the trials: the deflated Sharpe ratio of
the chosen one and the probability of backtest overfitting (`tsconv.selection`).

Optuna proposes the trials and stores them in a SQLite file in the sweep folder; trials run one
at a time, in local processes or as Ray tasks (`tsconv.parallel`). Each trial's backtest has its
own folder, so an interrupted sweep resumes where it stopped, trial and fold.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tsconv import executors, runfolder
from tsconv.config import Config, config_to_dict, dump_yaml, load_config, validate_config
from tsconv.data import covariates
from tsconv.errors import DataError, TsconvError, UsageError
from tsconv.evaluate import metrics
from tsconv.evaluate.sweep_summary import holdout_summary, leaderboard, luck_measures
from tsconv.evaluate.verdict import sweep_verdict
from tsconv.recipes import search_space
from tsconv.recipes.search_space import SpaceFile

TrialHook = Callable[[int, int, dict[str, Any]], None]


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


def trial_config(base: Config, spc: SpaceFile, params: dict[str, Any], source: str) -> Config:
    """The base config with the space's fixed keys and a trial's parameters; the trial's own
    folds run one after another (the sweep runs trials side by side instead)."""
    cfg = search_space.with_values(base, {**spc.fixed, **params}, source)
    return search_space.with_values(
        cfg, {"backtest.workers": 1, "backtest.executor": "local"}, source
    )


def _objective(m: dict[str, Any], objective: str) -> float:
    if objective == "r2_oos":
        return float(m["forecast"]["prediction"]["r2_oos"])
    sharpe = m["trading"]["prediction"].get("sharpe")
    return 0.0 if sharpe is None else float(sharpe)  # never in the market: flat, Sharpe 0


def trial_row(m: dict[str, Any]) -> dict[str, Any]:
    """A trial's selection-period figures for trials.parquet and the leaderboard."""
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


def _run_trial(data: tuple[dict, dict], task: tuple) -> dict[str, Any]:
    """One trial, in whichever process runs it: its backtest on the selection period's bars
    and covariates."""
    from tsconv.recipes.backtest import run_backtest
    from tsconv.recipes.prepare import prepare

    number, raw, folder, objective, cut = task
    t0 = time.perf_counter()
    try:
        cfg = validate_config(raw, f"trial {number}")
        m = run_backtest(
            cfg, Path(folder), resume=True, prep=prepare(cfg, *data), report_html=False
        )
        _check_before(Path(folder), pd.Timestamp(cut))
    except TsconvError as exc:
        return {"trial": number, "error": str(exc), "seconds": time.perf_counter() - t0}
    return {
        "trial": number,
        "value": _objective(m, objective),
        **trial_row(m),
        "seconds": time.perf_counter() - t0,
    }


def _check_before(folder: Path, cut: pd.Timestamp) -> None:
    """A trial folder resumed by hand on all the data would hold holdout predictions."""
    last = pd.read_parquet(folder / "predictions.parquet", columns=["date"])["date"].max()
    if pd.notna(last) and last >= cut:
        raise DataError(
            f"{folder}: holds predictions dated {pd.Timestamp(last).date()}, in the holdout "
            f"(from {cut.date()}); it was run outside the sweep: delete the folder to rerun it"
        )


def _trial_folder(out: Path, number: int) -> Path:
    return out / "trials" / f"{number:03d}"


def _engine(frames, workers: int, executor: str, address: str | None, base: Config):
    import torch

    if executor == "ray":
        from tsconv.engine.runtime import select_device

        gpus = int(select_device(base.train.device).type == "cuda")
        return executors.ray_cluster(frames, base.train.threads or 1, gpus, address)
    threads = base.train.threads or max(1, torch.get_num_threads() // workers)
    return executors.local_pool(frames, workers, threads)


def run_sweep(
    base: Config,
    spc: SpaceFile,
    out: Path,
    *,
    resume: bool = False,
    workers: int = 1,
    executor: str = "local",
    address: str | None = None,
    on_trial: TrialHook | None = None,
    frames: dict[str, pd.DataFrame] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the sweep into `out`; returns sweep.json's contents."""
    import optuna
    from optuna.trial import TrialState

    from tsconv.data.load import load_frames

    out = Path(out)
    t0 = time.perf_counter()
    frames = frames if frames is not None else load_frames(base.data)
    cut = holdout_start(frames, spc.sweep.holdout)
    chosen_frames = selection_frames(frames, cut)
    _check_selection(base, spc, chosen_frames, cut)
    sources = covariates.load_sources(base)  # the same for every trial: they cannot vary
    selection_data = (chosen_frames, selection_frames(sources, cut))
    db = out / "study.db"
    if db.exists() and not resume:
        raise UsageError(f"{out} already holds a sweep: --resume {out} continues it, or pick --out")
    n_trials = spc.sweep.trials
    if spc.sweep.sampler == "grid":
        n_trials = min(n_trials, search_space.grid_size(spc))
    runfolder.write_text(out / "config.yaml", dump_yaml(base))
    runfolder.write_text(out / "space.yaml", search_space.dump(spc))
    runfolder.write_json(out / "versions.json", {**runfolder.versions(), "seed": base.seed})

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{db}", study_name="sweep", direction="maximize", load_if_exists=True
    )
    dists = search_space.distributions(spc)

    def finished(task: tuple, row: dict[str, Any]) -> None:
        number = row["trial"]
        if "error" in row:
            runfolder.write_text(_trial_folder(out, number) / "error.txt", row["error"] + "\n")
            study.tell(number, state=TrialState.FAIL)
        else:
            study.tell(number, row["value"])
        if on_trial is not None:
            on_trial(len(study.get_trials(deepcopy=False, states=_done_states())), n_trials, row)

    workers = 1 if executor == "ray" else max(1, min(workers, n_trials))
    engine = _engine(selection_data, workers, executor, address, base)
    with engine as run:
        while True:
            trials = study.get_trials(deepcopy=False)
            pending = [t.number for t in trials if t.state == TrialState.RUNNING]
            if not pending and len(trials) >= n_trials:
                break
            start = len(trials) - 1 if pending else len(trials)
            for number in range(len(trials), search_space.round_end(spc, start, n_trials)):
                study.sampler = search_space.sampler(spc, number)
                pending.append(study.ask(dists).number)
            params = {t.number: t.params for t in study.get_trials(deepcopy=False)}
            tasks = [
                (
                    n,
                    config_to_dict(
                        trial_config(base, spc, search_space.decode(spc, params[n]), f"trial {n}")
                    ),
                    str(_trial_folder(out, n)),
                    spc.sweep.objective,
                    str(cut.date()),
                )
                for n in pending
            ]
            run(tasks, _run_trial, finished)
    t_trials = time.perf_counter() - t0

    result = summarize_selection(spc, study, out, cut, chosen_frames)
    best = result["chosen"]
    holdout_cfg = search_space.with_values(
        trial_config(base, spc, best["params"], "holdout"),
        {
            "backtest.start": str(cut.date()),
            "backtest.workers": workers,
            "backtest.executor": executor,
            "backtest.ray_address": address,
        },
        "holdout",
    )
    from tsconv.recipes.backtest import run_backtest
    from tsconv.recipes.prepare import prepare

    hm = run_backtest(
        holdout_cfg, out / "holdout", resume=True, prep=prepare(holdout_cfg, frames, sources)
    )
    result["holdout"] = holdout_summary(hm, cut)
    result["verdict"] = sweep_verdict(result)
    result = metrics.clean(result)  # NaN (a flat strategy's Sharpe ratio) as null
    runfolder.write_json(out / "sweep.json", result)
    runfolder.write_json(
        out / "timing.json",
        {
            "trials_seconds": t_trials,
            "holdout_seconds": time.perf_counter() - t0 - t_trials,
            "workers": workers,
            "executor": executor,
        },
    )
    from tsconv.report import sweep_html

    runfolder.write_text(out / "report.html", sweep_html.render(result, out, hm))
    runfolder.write_manifest(out, complete=True)
    return result


def _check_selection(base: Config, spc: SpaceFile, frames, cut: pd.Timestamp) -> None:
    n = max((len(f) for f in frames.values()), default=0)
    need = base.backtest.train_span + base.backtest.gap + base.window
    if n <= need:
        raise DataError(
            f"sweep.holdout: the selection period before {cut.date()} has {n} bars, no more than "
            f"backtest.train_span + gap + window = {need}; hold out less, or lower train_span"
        )


def _trial_performance(out: Path, numbers: list[int], objective: str) -> pd.DataFrame:
    """Per-bar performance of each trial's model, dates in rows and trials in columns, on the
    dates all of them traded: net returns, or for the r2_oos objective the squared-error
    reduction against the zero forecast (whose mean ranks trials as R^2 does)."""
    cols = {}
    for n in numbers:
        folder = _trial_folder(out, n)
        if objective == "r2_oos":
            p = pd.read_parquet(folder / "predictions.parquet")
            gain = p["realized"] ** 2 - (p["prediction"] - p["realized"]) ** 2
            cols[n] = gain.groupby(p["date"]).mean()
        else:
            r = pd.read_parquet(folder / "returns.parquet")
            cols[n] = r.set_index("date")["prediction"]
    return pd.DataFrame(cols).dropna()


def summarize_selection(
    spc: SpaceFile, study, out: Path, cut: pd.Timestamp, frames
) -> dict[str, Any]:
    """sweep.json without the holdout: settings, the chosen trial, and the luck measures.
    Also writes trials.parquet and leaderboard.csv."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        errors = [_trial_folder(out, t.number) / "error.txt" for t in trials]
        first = next((e.read_text().strip() for e in errors if e.exists()), "no error recorded")
        raise DataError(f"sweep: {len(complete)} of {len(trials)} trials finished; {first}")
    table = trials_table(trials, out)
    runfolder.write_with(out / "trials.parquet", lambda tmp: table.to_parquet(tmp, index=False))
    board = leaderboard(table)
    runfolder.write_text(out / "leaderboard.csv", board.to_csv(index=False))
    best = int(board["trial"].iloc[0])
    numbers = [t.number for t in complete]
    perf = _trial_performance(out, numbers, spc.sweep.objective)
    nets = _trial_performance(out, numbers, "sharpe") if spc.sweep.objective != "sharpe" else perf
    periods = json.loads((_trial_folder(out, best) / "metrics.json").read_text())[
        "periods_per_year"
    ]
    luck = luck_measures(nets, perf, best, periods, spc.sweep.blocks, spc.sweep.objective)
    row = table[table["trial"] == best].iloc[0]
    return {
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
            "objective": spc.sweep.objective,
            "value": float(row["value"]),
            "sharpe": _none(row["sharpe"]),
            "r2_oos": _none(row["r2_oos"]),
        },
        "deflated_sharpe": luck["deflated_sharpe"],
        "pbo": luck["pbo"],
        "per_bar_sharpes": luck["per_bar_sharpes"],
        "periods_per_year": int(periods),
    }


def _kept_start(out: Path, numbers: list[int]) -> dict[str, int]:
    """How many of the trials' folds kept the starting weights (no epoch beat them on
    validation): there the training parameters made no difference."""
    folds = [pd.read_csv(_trial_folder(out, n) / "folds.csv") for n in numbers]
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
        folder = _trial_folder(out, t.number)
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower(), "value": t.value}
        for key, value in t.params.items():
            row[key] = value
        if (folder / "metrics.json").exists() and t.value is not None:
            row.update(trial_row(json.loads((folder / "metrics.json").read_text())))
        if (folder / "error.txt").exists():
            row["error"] = (folder / "error.txt").read_text().strip()
        metrics_rows.append(row)
    return pd.DataFrame(metrics_rows)


def resumable(folder: Path, trials: int | None) -> tuple[Config, SpaceFile]:
    """The base config and space an interrupted sweep in `folder` ran with."""
    folder = Path(folder)
    if not (folder / "study.db").exists() or not (folder / "space.yaml").exists():
        raise UsageError(f"{folder}: not an interrupted sweep (no study.db and space.yaml)")
    if trials is not None:
        raise UsageError("--resume continues the sweep as it was set up; drop --trials")
    base = load_config(folder / "config.yaml")
    return base, search_space.read_space(folder / "space.yaml", base)


def _done_states():
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.FAIL)
