"""`tsconv backtest`: walk-forward evaluation against naive baselines.

Reads top-down: prepare the data, make the folds, run each fold not already finished (resumed
from the run folder otherwise), evaluate the predictions, write the run folder. The fold rules
(what trains on what) are in `tsconv.recipes.walkforward`; how the folds' ensemble members are
spread over processes or Ray is `tsconv.executors`'s decision.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from tsconv import executors, runfolder
from tsconv.config import Config, dump_yaml, results_config
from tsconv.engine.runtime import intra_op_threads, recorded_threads, select_device
from tsconv.errors import ConfigError, UsageError
from tsconv.evaluate.risk_summary import summarize_risk
from tsconv.evaluate.summary import summarize_backtest
from tsconv.executors import Executor
from tsconv.recipes.caveats import backtest_caveats
from tsconv.recipes.fit_span import members_together
from tsconv.recipes.prepare import Prepared, prepare
from tsconv.recipes.walkforward import (
    Fold,
    MemberFit,
    combine_members,
    fit_member,
    fit_members_together,
    make_folds,
    run_fold,
)
from tsconv.report import backtest_html, risk_html
from tsconv.runfolder import (
    RunFolder,
    run_info,
    save_torch,
    write_json,
    write_manifest,
    write_text,
    write_with,
)

FoldHook = Callable[[int, int, dict[str, Any]], None]  # on_fold(done, total, info)
RESUMED = {"resumed": True}


def run_backtest(
    cfg: Config,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_fold: FoldHook | None = None,
    prep: Prepared | None = None,
    report_html: bool = True,
) -> dict[str, Any]:
    """Run every fold (resuming finished ones from disk), then write predictions, each
    strategy's net returns, metrics and (unless `report_html` is false) the report.
    `resume`: keep the folds a run of the same config finished in `out`, each checked
    against the manifest (none there: start afresh); otherwise `out` may hold no other run
    unless `overwrite`. `on_fold(done, total, info)` as each fold finishes; `prep`: the
    data, prepared already. The folder is locked for the run's life."""
    run = RunFolder(out)
    resumed = recorded_threads(run.versions) if resume else None  # the interrupted run's count
    with intra_op_threads(cfg.train.threads or resumed), runfolder.locked(run):
        t0 = time.perf_counter()
        prep = prep or prepare(cfg)
        t_prep = time.perf_counter() - t0
        check_portfolio(prep)
        folds = make_folds(prep)
        device = select_device(cfg.train.device)

        log = FoldLog(run, len(folds), on_fold)
        warm = cfg.backtest.retrain == "warm"  # each fold starts from the last one's weights
        kept = kept_manifest(run, cfg) if resume else None
        # checked before anything is written: a changed fold stops the resume here
        todo, warm_state = log.resume(folds, warm, kept) if kept is not None else (folds, None)
        start_run_folder(run, cfg, device, kept is not None, overwrite or resume)
        tasks = len(todo) * (1 if members_together(prep) else cfg.train.ensemble)
        executor = executors.choose(cfg, tasks, chained=warm)
        run_folds(prep, todo, device, executor, log, warm_state)
        t_folds = time.perf_counter() - t0 - t_prep

        predictions, table = log.combined()
        if cfg.target.kind == "return":
            metrics, nets = summarize_backtest(predictions, cfg)
        else:  # volatility or quantiles: their losses, tests and the volatility-managed book
            metrics, nets = summarize_risk(predictions, cfg, table)
        caveats = backtest_caveats(prep, folds, predictions)
        caveats["warnings"] = [*metrics.pop("warnings", []), *caveats.get("warnings", [])]
        metrics.update(caveats)
        metrics["timing"] = timing(log, t_prep, t_folds, executor)
        write_outputs(run, cfg, predictions, table, metrics, nets, report_html)
        return metrics


def check_portfolio(prep: Prepared) -> None:
    portfolio = prep.cfg.backtest.portfolio
    if portfolio != "per_ticker" and len(prep.data) < 2:
        raise ConfigError(
            f"backtest.portfolio: {portfolio} ranks tickers against each other and "
            f"needs two or more; the data has {', '.join(prep.data)} (per_ticker trades one)"
        )


def check_resumable(folder: Path) -> None:
    """Refuse `--resume` on a folder without an interrupted backtest whose config is the one
    the run recorded."""
    run = RunFolder(folder)
    if not run.results_config.exists():
        raise UsageError(
            f"{folder}: not an interrupted backtest (no {run.results_config.relative_to(run.path)})"
        )
    manifest = runfolder.read_manifest(run)
    if manifest is not None and manifest.get("complete") is True:
        raise UsageError(
            f"{folder}: this backtest already finished; nothing to resume (--overwrite with "
            "--config runs it again)"
        )
    runfolder.verify(run, [run.results_config], manifest)


def kept_manifest(run: RunFolder, cfg: Config) -> dict[str, Any] | None:
    """The manifest of the run in `run` whose folds a resume keeps, its config checked
    against the record and `cfg` (execution keys aside); None when the folder records no
    run's config (nothing to keep)."""
    manifest = runfolder.read_manifest(run)
    if not runfolder.recorded(run, manifest, run.results_config):
        return None
    runfolder.verify(run, [run.results_config], manifest)
    if json.loads(run.results_config.read_text()) != results_config(cfg):
        raise UsageError(f"{run.path}: --resume with a different config than the interrupted run")
    return manifest


def start_run_folder(
    run: RunFolder, cfg: Config, device: torch.device, kept: bool, overwrite: bool
) -> None:
    """Mark the folder unfinished (a resume keeps the records of its folds, a new run
    replaces another only with `overwrite`), then write the config and what the numbers
    depend on."""
    if kept:
        outputs = [run.predictions, run.returns, run.fold_table, run.metrics, run.timing]
        runfolder.reopen(run, [*outputs, run.report])
    else:
        runfolder.start(run, overwrite=overwrite)
        for old in run.fold_files():  # unrecorded folds of an earlier run: never kept
            old.unlink()
    write_text(run.config, dump_yaml(cfg))
    write_json(run.results_config, results_config(cfg))
    write_json(run.versions, run_info(cfg.seed, device))
    runfolder.record(run, [run.config, run.results_config, run.versions])


@dataclass
class FoldLog:
    """Each fold's predictions and info as it finishes, here in this process: written to the
    run folder for --resume, and reported to `on_fold`."""

    run: RunFolder
    total: int
    on_fold: FoldHook | None
    results: dict[int, tuple[pd.DataFrame, dict[str, Any]]] = field(default_factory=dict)

    def finished(
        self,
        fold: Fold,
        preds: pd.DataFrame,
        info: dict[str, Any],
        state: list[dict[str, torch.Tensor]] | None = None,
    ) -> None:
        files = self.files(fold, state is not None)
        write_with(files[0], lambda tmp: preds.to_parquet(tmp, index=False))
        if state is not None:
            save_torch(files[2], state)
        # in the info's own order, which folds.csv keeps whether a fold ran now or is resumed
        write_text(files[1], json.dumps(info, indent=2, default=str) + "\n")
        # a fold is finished once the manifest records its files, with their sha256
        runfolder.record(self.run, files)
        self._collect(fold, preds, info)

    def files(self, fold: Fold, warm: bool) -> list[Path]:
        """The fold's predictions, its info and (warm) its final weights."""
        run, k = self.run, fold.index
        return [run.fold_predictions(k), run.fold_info(k), *([run.fold_state(k)] if warm else [])]

    def resume(
        self, folds: list[Fold], warm: bool, manifest: dict[str, Any]
    ) -> tuple[list[Fold], list | None]:
        """Take the folds an interrupted run finished, each file checked against `manifest`;
        return the others, and for `retrain: warm` the weights the first of them starts
        from. Warm folds chain: once one has to run, every later one runs after it."""
        todo, state = [], None
        for fold in folds:
            files = self.files(fold, warm)
            preds, info = files[:2]
            finished = all(runfolder.recorded(self.run, manifest, f) for f in files)
            if finished and not (warm and todo):
                runfolder.verify(self.run, files, manifest)
                if warm:
                    state = torch.load(
                        self.run.fold_state(fold.index), map_location="cpu", weights_only=True
                    )
                self._collect(fold, pd.read_parquet(preds), json.loads(info.read_text()) | RESUMED)
            else:
                todo.append(fold)
        return todo, state

    def _collect(self, fold: Fold, preds: pd.DataFrame, info: dict[str, Any]) -> None:
        self.results[fold.index] = (preds, info)
        if self.on_fold is not None:
            self.on_fold(len(self.results), self.total, info)

    def infos(self) -> list[dict[str, Any]]:
        return [self.results[k][1] for k in sorted(self.results)]

    def combined(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Every fold's predictions by date and ticker, and the fold table (folds.csv)."""
        parts = [self.results[k][0] for k in sorted(self.results)]
        table = pd.DataFrame([{k: v for k, v in i.items() if k != "resumed"} for i in self.infos()])
        predictions = pd.concat(parts, ignore_index=True)
        predictions = predictions.sort_values(["date", "ticker"], kind="stable")
        return predictions.reset_index(drop=True), table


def run_folds(
    prep: Prepared,
    folds: list[Fold],
    device: torch.device,
    executor: Executor,
    log: FoldLog,
    warm_state: list | None,
) -> None:
    """Every fold here, one after another (each warm fold starting from the last one's
    weights), or, spread out, every fold's ensemble members as the executor's tasks."""
    if folds and executor.parallel:
        run_members(prep, folds, device, executor, log.finished)
        return
    warm, state = prep.cfg.backtest.retrain == "warm", warm_state
    for fold in folds:
        preds, info, state = run_fold(prep, fold, device, state)
        log.finished(fold, preds, info, state if warm else None)


def fit_member_task(prep: Prepared, task: tuple[Fold, int | None, torch.device]) -> list[MemberFit]:
    """One ensemble member of a full-retrain fold (member None: all of them, trained
    together), as an executor's task (their final weights are not needed)."""
    fold, member, device = task
    if member is None:
        return fit_members_together(prep, fold, device, keep_state=False)
    return [fit_member(prep, fold, member, device, keep_state=False)]


def run_members(
    prep: Prepared,
    folds: list[Fold],
    device: torch.device,
    executor: Executor,
    finished: Callable[[Fold, pd.DataFrame, dict[str, Any]], None],
) -> None:
    """Every ensemble member of `folds` (smallest fold first) as a task of `executor`,
    calling `finished(fold, predictions, info)` here as each fold's last member ends."""
    members = prep.cfg.train.ensemble
    fits: dict[int, list[MemberFit]] = {}

    def member_done(task: tuple[Fold, int | None, torch.device], fitted: list[MemberFit]) -> None:
        fold = task[0]
        fits.setdefault(fold.index, []).extend(fitted)
        if len(fits[fold.index]) == members:
            finished(fold, *combine_members(fits.pop(fold.index)))

    if members_together(prep):  # a fold's members are one task
        tasks = [(fold, None, device) for fold in folds]
    else:
        tasks = [(fold, m, device) for fold in folds for m in range(members)]
    with executor.start(prep) as run:
        run(tasks, fit_member_task, member_done)


def timing(log: FoldLog, t_prep: float, t_folds: float, executor: Executor) -> dict[str, Any]:
    infos = log.infos()
    ran = [i for i in infos if not i.get("resumed")]  # this invocation's folds only
    return {
        "prepare_seconds": t_prep,
        "folds_seconds": t_folds,
        "folds": log.total,
        "folds_resumed": len(infos) - len(ran),
        "workers": executor.workers,
        "threads": executor.threads,  # of each process training folds
        "seconds_per_fold": t_folds / max(len(ran), 1),
        "fit_seconds": float(sum(i.get("fit_seconds", 0.0) for i in ran)),
        "predict_seconds": float(sum(i.get("predict_seconds", 0.0) for i in ran)),
    }


def write_outputs(
    run: RunFolder,
    cfg: Config,
    predictions: pd.DataFrame,
    table: pd.DataFrame,
    metrics: dict[str, Any],
    nets: dict[str, pd.Series],
    report_html: bool,
) -> None:
    """The run's results, then the manifest that says it finished."""
    write_with(run.predictions, lambda tmp: predictions.to_parquet(tmp, index=False))
    write_text(run.fold_table, table.to_csv(index=False))
    returns = pd.DataFrame(nets).rename_axis("date").reset_index()
    write_with(run.returns, lambda tmp: returns.to_parquet(tmp, index=False))
    write_json(run.metrics, {k: v for k, v in metrics.items() if k != "timing"})
    write_json(run.timing, metrics["timing"])
    if report_html:
        render = backtest_html.render if cfg.target.kind == "return" else risk_html.render
        write_text(run.report, render(predictions, metrics, table, cfg, nets))
    write_manifest(run, complete=True)
