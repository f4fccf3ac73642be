"""Command line: parse, load the config, call one library function, print a summary."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import tsconv
from tsconv.errors import TsconvError, UsageError
from tsconv.runfolder import RunFolder

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train temporal convolutional networks on OHLCV data and evaluate them "
    "walk-forward, without look-ahead.",
)
# Piped to a file or a CI log, rich takes the width COLUMNS gives, else 80: the tables fit 80
# columns, and a fixed wider width made every paragraph wrap past a reader's 80.
out = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path,
    typer.Option("--config", "-c", help="YAML config file, or a shipped config's name (quick)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a key: --set train.epochs=3; --set train.threads=N for N CPU threads "
        "(default: the cores other processes leave free)",
        metavar="KEY=VALUE",
    ),
]
# how a backtest's folds or a sweep's trials run: the config's execution keys (backtest.*)
WorkersOpt = Annotated[
    str | None,
    typer.Option(
        "--workers",
        metavar="N",
        help="Processes running folds or trials at once (backtest.workers; auto: the cores)",
    ),
]
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        "--executor",
        metavar="local|ray",
        help="Where folds or trials run (backtest.executor): this machine, or Ray tasks",
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        metavar="ADDR",
        help="An existing Ray cluster (auto, ray://host:10001); unset: a local one",
    ),
]

# a new run into a folder that holds another (train, backtest, sweep)
OverwriteOpt = Annotated[
    bool,
    typer.Option("--overwrite", help="Replace the run already in the output folder", metavar=""),
]


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One line on stderr and a documented exit code instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TsconvError as exc:
            # the message is plain text: "[ray]" in it is not markup
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted; finished work is saved (use --resume to continue)")
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        out.print(f"tsconv {tsconv.__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Show the version and exit.",
            metavar="",
        ),
    ] = False,
) -> None:
    pass


def _config(config: Path | None, overrides: list[str] | None):
    from tsconv.config import load_config

    cfg = load_config(config, overrides or [])
    if cfg.data.source == "csv" and cfg.data.path is not None:
        # Paths outside the project are allowed; say which file is actually read.
        err.print(f"data: {cfg.data.path.resolve()}", highlight=False, soft_wrap=True)
    return cfg


def _required(config: Path | None) -> Path:
    if config is None:
        raise UsageError("--config is required (e.g. --config configs/quick.yaml)")
    return config


# --------------------------------------------------------------------------- fetch


@app.command()
@user_errors
def fetch(
    tickers: Annotated[
        list[str] | None, typer.Argument(help="Symbols, e.g. SPY AAPL ^GSPC")
    ] = None,
    start: Annotated[str | None, typer.Option(help="First date, YYYY-MM-DD")] = None,
    end: Annotated[str | None, typer.Option(help="Last date (exclusive), YYYY-MM-DD")] = None,
    interval: Annotated[str, typer.Option(help="Bar interval (yfinance), e.g. 1d")] = "1d",
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Cache folder")] = Path("data"),
    from_csv: Annotated[
        Path | None, typer.Option("--from-csv", help="Import a CSV/parquet file")
    ] = None,
    ticker: Annotated[str | None, typer.Option(help="Ticker name for --from-csv")] = None,
    sample: Annotated[
        bool,
        typer.Option("--sample", help="Copy the embedded sample into the cache", metavar=""),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", help="Show yfinance's own messages and warnings", metavar=""),
    ] = False,
) -> None:
    """Download daily bars from Yahoo Finance into the cache, or import a file or the sample."""
    import os

    from tsconv.data import fetch as fetching
    from tsconv.data.sources import sample_tickers

    if from_csv is not None:
        if not ticker:
            raise UsageError("--from-csv needs --ticker NAME")
        entry = fetching.import_file(data_dir, from_csv, ticker)
        out.print(
            f"imported {from_csv} as {ticker.upper()}: {entry['rows']} bars, "
            f"{entry['first']} to {entry['last']} -> {data_dir / entry['file']}"
        )
        return
    if sample:
        written = fetching.import_sample(data_dir, tickers or sample_tickers())
        for symbol, entry in written.items():
            out.print(f"{symbol}: {entry['rows']} bars ({entry['note']})")
        return
    if not tickers:
        raise UsageError(
            "name at least one ticker, or use --from-csv FILE --ticker NAME, or --sample"
        )
    if verbose:
        os.environ["TSCONV_VERBOSE"] = "1"
    report = fetching.fetch_many(data_dir, tickers, start=start, end=end, interval=interval)
    for symbol, entry in report.written.items():
        out.print(f"{symbol}: {entry['rows']} bars ({entry['note']})")
    if report.failed:
        if len(report.failed) == 1 and not report.written:
            raise TsconvError(next(iter(report.failed.values())))
        kept = f"fetched {', '.join(report.written) or 'nothing'}; " if report.written else ""
        raise TsconvError(f"{kept}failed: " + "; ".join(report.failed.values()))


# --------------------------------------------------------------------------- train


def _progress():
    from tsconv.report.progress import progress_bar

    return progress_bar(err)


@app.command()
@user_errors
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Run folder (default runs/<name>)")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue an interrupted run folder")
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a TCN or multi-scale model and write a run folder (model.pt, metrics, plots).

    Under torchrun (--nproc-per-node N -m tsconv train) the processes train one model.
    """
    from tsconv.engine import checkpoint, ddp
    from tsconv.engine.runtime import select_device

    if resume is not None:
        from tsconv.recipes.train import check_resumable

        _resume_alone(config, set_, out_dir, overwrite)
        check_resumable(resume)  # before its config is read, and the model's banner
        cfg = checkpoint.config_of({"config": _read_resolved(resume)}, RunFolder(resume).config)
        target = resume
    else:
        cfg = _config(_required(config), set_)
        target = out_dir or Path("runs") / (cfg.name or config.stem)
    with ddp.process_group(select_device(cfg.train.device), target):
        if not ddp.is_main():
            out.quiet = err.quiet = True
        _train(cfg, target, resume is not None, overwrite)


def _train(cfg, target: Path, resume: bool, overwrite: bool) -> None:
    from tsconv.recipes.train import describe_model, run_training
    from tsconv.report.progress import epoch_words, step_words

    info = describe_model(cfg)
    out.print(
        f"model {info['kind']}: {info['parameters']:,} parameters, receptive field "
        f"{info['receptive_field']} steps, window {info['window']}; {info['training']}",
        soft_wrap=True,
    )
    if info["warning"]:
        err.print(f"[yellow]warning:[/yellow] {info['warning']}", soft_wrap=True)
    members = cfg.train.ensemble
    with _progress() as progress:
        task = progress.add_task("train", total=cfg.train.epochs, info="")

        def on_member(m: int) -> None:
            together = cfg.train.grouped_members  # one fit of every member, no epochs shown
            words = f"{members} members together" if together else f"member {m + 1}/{members}"
            progress.update(task, description=words, completed=0)

        def on_step(s: dict[str, float]) -> None:
            done = s["epoch"] - 1 + s["seen"] / s["of"]
            progress.update(task, completed=done, info=step_words(s))

        def on_epoch(state: Any) -> None:
            info = epoch_words(state.result.history[-1])
            progress.update(task, completed=state.epoch, info=info)

        summary = run_training(
            cfg,
            target,
            resume=resume,
            overwrite=overwrite,
            on_step=on_step,
            on_epoch_done=on_epoch,
            on_member=on_member if members > 1 else None,
        )
    if not summary:  # another rank than 0: rank 0 reports
        return
    if members > 1:
        kept = [m["best_epoch"] for m in summary["members"]]
        if summary["members_kept_start"] == members:
            err.print(
                f"[yellow]warning:[/yellow] all {members} members kept their starting weights "
                "(zero head + ridge highway), which do not depend on the seed: the ensemble "
                "predicts as one model",
                soft_wrap=True,
            )
        mean = summary["ensemble_val_loss"]
        mean = "n/a (no validation rows)" if mean is None else f"{mean:.4f}"
        out.print(
            f"ensemble of {members}: best epochs {kept} ({summary['steps']} steps in all); "
            f"validation MSE of the mean prediction {mean}, members' mean "
            f"{summary['best_val_loss']:.4f} (scaled target) on {summary['device']} -> {target}",
            soft_wrap=True,
        )
        return
    best = (
        f"best epoch {summary['best_epoch']}/{summary['epochs_run']}"
        if summary["best_epoch"]
        else f"no epoch of {summary['epochs_run']} beat the starting weights"
    )
    out.print(
        f"{best} ({summary['steps']} steps): validation MSE {summary['best_val_loss']:.4f} "
        f"(scaled target) on {summary['device']} -> {target}"
    )


def _read_resolved(run: Path) -> dict[str, Any]:
    import yaml

    path = RunFolder(run).config
    if not path.exists():
        raise UsageError(f"{run}: not a run folder (no {path.name})")
    return yaml.safe_load(path.read_text())


# --------------------------------------------------------------------------- predict


@app.command()
@user_errors
def predict(
    run: Annotated[Path, typer.Option("--run", help="A run folder written by tsconv train")],
    tickers: Annotated[
        list[str] | None, typer.Option("--tickers", help="Tickers (default: the run's)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON", metavar="")] = False,
) -> None:
    """Predict the next-step return after each ticker's latest bar."""
    from tsconv.recipes.predict import predict_latest

    rows = predict_latest(run, tickers)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if rows and "predicted_vol" in rows[0]:
        _print_risk_forecast(rows)
        return
    # basis points: a daily forecast is a few of them, which "+0.00001" hid
    table = Table("ticker", "latest bar", "horizon", "log return, bps", "position", "scaler")
    for r in rows:
        w = r["position"]
        held = "flat" if w == 0 else f"{'long' if w > 0 else 'short'} {abs(w):.2f}"
        table.add_row(
            r["ticker"],
            r["last_bar"],
            str(r["horizon"]),
            f"{r['predicted_bps']:+.2f}",
            held,
            r["scaler"],
        )
    out.print(table)
    if rows:
        out.print(f"position: {rows[0]['position_rule']}", highlight=False)


def _print_risk_forecast(rows: list[dict[str, Any]]) -> None:
    """The forecast volatility (and quantiles, in bps of log return) after the latest bar."""
    levels = list(rows[0].get("quantiles", {}))
    table = Table("ticker", "latest bar", "h", "vol", "ann. vol", *(f"q{q}" for q in levels))
    for r in rows:
        table.add_row(
            r["ticker"],
            r["last_bar"],
            str(r["horizon"]),
            f"{r['predicted_vol']:.4%}",
            f"{r['predicted_vol_annualised']:.1%}",
            *(f"{v * 1e4:+.0f}" for v in r.get("quantiles", {}).values()),
        )
    out.print(table)
    quantiles = ", quantiles in bps of log return" if levels else ""
    out.print(f"vol: over the next h bars; proxy {rows[0]['proxy']}{quantiles}", highlight=False)
    clipped = [r["ticker"] for r in rows if r["clipped"]]
    if clipped:
        out.print(
            f"clipped: {', '.join(clipped)} (the forecast lay beyond the model's forecasts on "
            "the training rows)",
            highlight=False,
        )


# --------------------------------------------------------------------------- backtest


@app.command()
@user_errors
def backtest(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default runs/<name>-bt)")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue an interrupted backtest folder (its own config)"),
    ] = None,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Walk-forward evaluation against naive baselines; writes predictions, metrics and report.html."""
    if resume is not None:
        cfg, target = _resumable_backtest(resume, config, set_, out_dir, overwrite), resume
    else:
        cfg = _config(_required(config), set_)
        target = out_dir or Path("runs") / f"{cfg.name or config.stem}-bt"
    cfg = _with_execution(cfg, workers=workers, executor=executor, ray_address=ray_address)
    _prestart_workers(cfg, "tsconv.recipes.backtest")
    from tsconv.recipes.backtest import run_backtest

    parallel = cfg.backtest.workers != 1 or cfg.backtest.executor != "local"
    if parallel and cfg.backtest.retrain == "warm":
        err.print("backtest.retrain: warm chains each fold to the last, so folds run one at a time")
    with _progress() as progress:
        task = progress.add_task("walk-forward", total=None, info="")

        def on_fold(done: int, total: int, info: dict[str, Any]) -> None:
            progress.update(
                task,
                total=total,
                completed=done,
                info=(f"fold {done}/{total} test {info['test_start']}..{info['test_end']}"),
            )

        m = run_backtest(
            cfg, target, resume=resume is not None, overwrite=overwrite, on_fold=on_fold
        )
    _print_backtest(m, cfg, RunFolder(target))


def _prestart_workers(cfg, module: str) -> None:
    """Start the fork server that local pool workers fork from (`tsconv.forkserver`) before
    this process imports torch, so that both import side by side, when the run may use
    more than one process."""
    import os

    from tsconv import forkserver

    workers = cfg.backtest.workers
    many = (os.cpu_count() or 1) > 1 if workers == "auto" else workers > 1
    if cfg.backtest.executor == "local" and many:
        forkserver.prestart(module)


def _print_backtest(m: dict[str, Any], cfg, run: RunFolder) -> None:
    """The verdict, the results and costs tables, the forecast buckets and the timing."""
    from tsconv.report.tables import (
        TABLE_HEADER,
        cost_header,
        cost_rows,
        cost_title,
        quantile_words,
        table_rows,
    )

    for line in m.get("warnings", []):
        err.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)
    out.print(m["bottom_line"], soft_wrap=False)
    out.print(m["verdict"], soft_wrap=False)
    if m.get("target", "return") != "return":
        _print_risk_tables(m)
    else:
        out.print(results_table(m, TABLE_HEADER, table_rows(m)))
        costs = results_table(m, cost_header(drag=False), cost_rows(m, drag=False))
        costs.title = cost_title(cfg.backtest.cost_bps, cfg.backtest.portfolio)
        out.print(costs)
        out.print(quantile_words(m.get("quantiles") or {}), soft_wrap=False)
    t = m["timing"]
    ran = t["folds"] - t["folds_resumed"]
    folds = (
        f"{t['folds']} folds"
        if not t["folds_resumed"]
        else (
            f"{t['folds']} folds ({t['folds_resumed']} kept from the interrupted run, {ran} run now)"
        )
    )
    if t.get("workers", 1) > 1:
        folds += f" on {t['workers']} processes"
    # two lines, each under 80 columns but for a long folder name (one line was ~130)
    out.print(
        f"{folds} in {t['folds_seconds']:.1f} s, {t['seconds_per_fold']:.2f} s per fold run",
        soft_wrap=True,
    )
    out.print(
        f"training {t['fit_seconds']:.1f} s, prediction {t['predict_seconds']:.2f} s, "
        f"data prep {t['prepare_seconds']:.2f} s -> {run.report}",
        soft_wrap=True,
    )


def _print_risk_tables(m: dict[str, Any]) -> None:
    """A volatility or quantiles backtest's forecast table and its volatility-managed books."""
    from tsconv.report import risk_html

    if m["target"] == "volatility":
        out.print(results_table(m, risk_html.VOL_HEADER, risk_html.vol_table_rows(m)))
    else:
        header = risk_html.quantile_header(m)
        out.print(results_table(m, header, risk_html.quantile_table_rows(m)))
    s = m["strategy"]
    title = (
        f"volatility-managed buy-and-hold: target {s['target_vol']:.0%}, "
        f"{s['cost_bps']:g} bps costs"
    )
    rows = risk_html.strategy_table_rows(m)
    out.print(results_table(m, risk_html.STRATEGY_HEADER, rows, title=title))


def results_table(
    m: dict[str, Any], header: list[str], rows: list[list[str]], title: str | None = None
) -> Table:
    """The results in 80 columns: no borders, and every column at least as wide as its
    longest value, so only headers wrap and no figure is ever cut."""
    from rich import box

    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 0, 0, 1),
        title=title
        or f"walk-forward: {m['n_predictions']} predictions, "
        f"{m['first_date']} to {m['last_date']}, {m['folds']} folds",
    )
    for i, name in enumerate(header):
        # as wide as the longest value (or a header word): 79 columns in all
        widest = max(*(len(r[i]) for r in rows), *(len(word) for word in name.split()))
        table.add_column(name, width=widest, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _with_execution(cfg, **options: str | None):
    """`cfg` with the execution options given (--workers, --executor, --ray-address) as their
    backtest keys, validated as the keys are; an error names the option."""
    from tsconv.config import EXECUTION_KEYS, config_to_dict, execution_option, validate_config

    for key in EXECUTION_KEYS:
        section, name = key.split(".")
        value = options[name]
        if value is None:
            continue
        if name == "workers" and value != "auto":
            value = _int_or_text(value)
        raw = config_to_dict(cfg)
        raw[section][name] = value
        cfg = validate_config(raw, f"{execution_option(key)} {value}")
    if cfg.backtest.executor == "ray":  # in seconds, and before anything is written
        from tsconv.executors import check_ray_address

        check_ray_address(cfg.backtest.ray_address)
    return cfg


def _int_or_text(text: str) -> int | str:
    return int(text) if text.strip().lstrip("-").isdigit() else text


def _resume_alone(config, set_, out_dir, overwrite: bool) -> None:
    _resume_or_overwrite(overwrite)
    if config is not None or set_ or out_dir is not None:
        raise UsageError(
            "--resume FOLDER continues with the config saved in FOLDER; drop --config, --set "
            "and --out"
        )


def _resume_or_overwrite(overwrite: bool) -> None:
    if overwrite:
        raise UsageError(
            "--resume continues the run in its folder, --overwrite replaces it: give one"
        )


def _resumable_backtest(folder: Path, config, set_, out_dir, overwrite: bool):
    """The config an interrupted backtest in `folder` ran with (as `train --resume` does)."""
    from tsconv.engine import checkpoint
    from tsconv.recipes.backtest import check_resumable

    _resume_alone(config, set_, out_dir, overwrite)
    run = RunFolder(folder)
    sweep = run.sweep_of_trial()
    if sweep is not None:
        # a trial saw only the selection period; resumed here it would test on the holdout
        raise UsageError(
            f"{folder} is a trial of the sweep in {sweep.path}: continue it with "
            f"`tsconv sweep --resume {sweep.path}`"
        )
    check_resumable(folder)  # not finished, and its config the one the run recorded
    stored = run.results_config
    return checkpoint.config_of({"config": json.loads(stored.read_text())}, stored)


# --------------------------------------------------------------------------- sweep


@app.command()
@user_errors
def sweep(
    config: ConfigOpt = None,
    space_file: Annotated[
        Path | None,
        typer.Option("--space", "-s", help="Search space YAML, or a shipped space's name (quick)."),
    ] = None,
    set_: SetOpt = None,
    trials: Annotated[
        int | None, typer.Option("--trials", metavar="N", help="Trials (sweep.trials)")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Sweep folder (default runs/<name>-sweep)")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue an interrupted sweep folder (its own settings)"),
    ] = None,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Search configs on a selection period; evaluate the best once on a later holdout.

    Each trial is a walk-forward backtest; the report says how much of the best is luck.
    """
    from tsconv.config import execution_settings

    if resume is not None:
        _resume_or_overwrite(overwrite)
    base, spc, target = _sweep_setup(config, space_file, set_, trials, out_dir, resume)
    # validated as the backtest keys are, then the trials and the holdout run so
    run_cfg = _with_execution(base, workers=workers, executor=executor, ray_address=ray_address)
    _prestart_workers(run_cfg, "tsconv.recipes.trials")
    from tsconv.evaluate.sweep_summary import lower_is_better
    from tsconv.recipes import search_space as spaces
    from tsconv.recipes.sweep import run_sweep

    pick = min if lower_is_better(spc.sweep.objective) else max
    n_trials = spaces.trials_to_run(spc)
    if n_trials < spc.sweep.trials:  # a grid: each point once
        err.print(
            f"sweep: the grid has {n_trials} points; running {n_trials} trials, not "
            f"{spc.sweep.trials}",
            highlight=False,
        )
    with _progress() as progress:
        task = progress.add_task("sweep", total=n_trials, info="")
        best: list[float] = []

        def on_trial(done: int, total: int, row: dict[str, Any]) -> None:
            if "value" in row:
                best.append(row["value"])
            info = f"trial {row['trial']}: " + (
                f"{spc.sweep.objective} {row['value']:.3f} (best {pick(best):.3f})"
                if "value" in row
                else "failed"
            )
            progress.update(task, total=total, completed=done, info=info)

        r = run_sweep(
            base,
            spc,
            target,
            resume=resume is not None,
            overwrite=overwrite,
            execution=execution_settings(run_cfg),
            on_trial=on_trial,
        )
    out.print(_leaderboard_table(RunFolder(target), list(spc.space), spc.sweep.objective))
    out.print(r["verdict"], soft_wrap=False)
    out.print(f"-> {RunFolder(target).report}", soft_wrap=True)


def _sweep_setup(config, space_file, set_, trials, out_dir, resume):
    """The base config, the space and the sweep folder: an interrupted sweep's own, or from
    --config, --space and --set."""
    from tsconv.recipes import search_space as spaces
    from tsconv.recipes.sweep import resumable

    if trials is not None and trials < 2:
        raise UsageError(f"--trials {trials}: must be at least 2 (a sweep selects among trials)")
    if resume is not None:
        if config is not None or space_file is not None or set_ or out_dir is not None:
            raise UsageError(
                "--resume FOLDER continues with the config and space saved in FOLDER; drop "
                "--config, --space, --set and --out"
            )
        base, spc = resumable(resume, trials)
        return base, spc, resume
    if config is None or space_file is None:
        raise UsageError("--config and --space are required (e.g. --config quick --space quick)")
    base = _config(config, set_)
    spc = spaces.read_space(space_file, base, trials)
    return base, spc, out_dir or Path("runs") / f"{base.name or config.stem}-sweep"


def _leaderboard_table(
    run: RunFolder, keys: list[str], objective: str = "sharpe", top: int = 5
) -> Table:
    """The best trials side by side, one column each (a row per parameter keeps the table
    narrow however many parameters the space has), each under the last part of its key,
    then the figures of the objective's target (the report's)."""
    import pandas as pd
    from rich import box

    from tsconv.report.sweep_html import FIGURES

    everyone = pd.read_csv(run.leaderboard)
    board = everyone.head(top)
    short = [k.rsplit(".", 1)[-1] for k in keys]
    figures = FIGURES[objective]
    names = [*(keys if len(set(short)) < len(short) else short), *figures.values()]
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        title=f"best {len(board)} of {len(everyone)} trials on the selection period",
    )
    table.add_column("trial")
    for number in board["trial"]:
        table.add_column(f"#{number}", justify="right")
    # in_market as a percentage, as the report has it (0.833 read as a ratio)
    for name, key in zip(names, [*keys, *figures], strict=True):
        table.add_row(name, *(_cell(v, ".0%" if key == "in_market" else ".3g") for v in board[key]))
    return table


def _cell(v: Any, spec: str = ".3g") -> str:
    if isinstance(v, float):
        return "-" if v != v else format(v, spec)
    return str(v)


# --------------------------------------------------------------------------- audit


@app.command()
@user_errors
def audit(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    folds: Annotated[
        int, typer.Option("--folds", help="Walk-forward folds whose predictions are checked")
    ] = 2,
    cut: Annotated[
        str | None,
        typer.Option(
            "--cut", metavar="DATE", help="Cut date (default: inside the last fold checked)"
        ),
    ] = None,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="JSON report (default runs/<name>-audit.json)"),
    ] = None,
) -> None:
    """Check a config and its data for look-ahead (exit 0 clean, 3 leak, 4 smells).

    Perturbs and removes the bars after a cut date, and looks for columns holding the future.
    """
    import pandas as pd

    from tsconv import runfolder
    from tsconv.recipes.audit import run_audit

    _required(config)
    if folds < 1:
        raise UsageError(f"--folds {folds}: must be at least 1")
    cfg = _config(config, set_)
    when = None
    if cut is not None:
        try:
            when = pd.Timestamp(cut)
        except ValueError:
            raise UsageError(f"--cut {cut}: not a date (YYYY-MM-DD)") from None
    report = run_audit(cfg, folds=folds, cut=when)
    target = out_file or Path("runs") / f"{cfg.name or config.stem}-audit.json"
    runfolder.write_json(target, report)
    for f in report["findings"]:
        out.print(f["line"], highlight=False, soft_wrap=True)
    checked = report["checked"]
    out.print(
        f"checked {', '.join(checked['tickers'])}"
        + (f" with covariates {', '.join(checked['covariates'])}" if checked["covariates"] else "")
        + f"; pipeline: {checked['pipeline']}",
        highlight=False,
        soft_wrap=True,
    )
    verdict = (
        "clean"
        if report["verdict"] == "clean"
        else f"{report['leaks']} leak(s), {report['smells']} smell(s)"
    )
    out.print(f"{verdict} -> {target}", highlight=False, soft_wrap=True)
    if report["exit_code"]:
        raise typer.Exit(report["exit_code"])


# --------------------------------------------------------------------------- compare


@app.command()
@user_errors
def compare(
    run_a: Annotated[Path, typer.Argument(help="A finished backtest folder", metavar="RUN_A")],
    run_b: Annotated[Path, typer.Argument(help="Another one", metavar="RUN_B")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON", metavar="")] = False,
) -> None:
    """Test two finished backtests against each other on their common dates and tickers.

    Diebold-Mariano on squared error, and the Sharpe-difference test on each run's strategy.
    """
    from tsconv.recipes.compare import compare_runs
    from tsconv.report.tables import compare_lines, compare_rows

    r = compare_runs(run_a, run_b)
    if as_json:
        sys.stdout.write(json.dumps(r, indent=2) + "\n")
        return
    out.print(r["verdict"], soft_wrap=False, highlight=False)
    header = ["run", "MSE", "R2 oos", "IC", "Sharpe", "ann. return", "max DD"]
    title = f"{r['rows']:,} common predictions, {r['first_date']} to {r['last_date']}"
    out.print(results_table(r, header, compare_rows(r), title))
    for line in compare_lines(r):
        out.print(line, soft_wrap=True, highlight=False)


@app.command()
@user_errors
def manage(
    run_returns: Annotated[
        Path, typer.Argument(help="A finished return backtest", metavar="RETURN_RUN")
    ],
    run_vol: Annotated[
        Path, typer.Argument(help="A finished volatility backtest", metavar="VOL_RUN")
    ],
    target_vol: Annotated[
        float | None,
        typer.Option("--target-vol", help="Annualised volatility to manage to (default 0.10)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON", metavar="")] = False,
) -> None:
    """The return model's strategy, volatility-managed by a volatility backtest's forecast.

    Against the same scaled by trailing volatility, and unmanaged (Sharpe-difference test).
    """
    from tsconv.recipes.manage import manage_runs
    from tsconv.report import risk_html

    r = manage_runs(run_returns, run_vol, target_vol)
    if as_json:
        sys.stdout.write(json.dumps(r, indent=2) + "\n")
        return
    title = (
        f"{r['rows']:,} common rows, {r['first_date']} to {r['last_date']}: managed to "
        f"{r['target_vol']:.0%}"
    )
    m = {"strategy": {"strategies": r["strategies"]}}
    rows = risk_html.strategy_table_rows(m, model="vol_managed")
    out.print(results_table(r, risk_html.STRATEGY_HEADER, rows, title))


# --------------------------------------------------------------------------- config

config_app = typer.Typer(no_args_is_help=True, help="The shipped configs: list them, copy one.")
app.add_typer(config_app, name="config")


@config_app.command("list")
@user_errors
def config_list() -> None:
    """Name of each shipped config and what it suits (its first comment line)."""
    from tsconv.config import shipped_configs

    for name, path in shipped_configs().items():
        first = path.read_text().splitlines()[0].lstrip("# ")
        out.print(f"{name:<11} {first}", highlight=False, soft_wrap=True)


@config_app.command("show")
@user_errors
def config_show(
    name: Annotated[str, typer.Argument(help="A shipped config (quick, tcn, ...) or a file")],
) -> None:
    """Print a config with its comments, e.g. `tsconv config show quick > my.yaml`."""
    from tsconv.config import resolve_config_path

    path = resolve_config_path(Path(name))
    if not path.is_file():
        raise UsageError(f"{name}: no such config file or shipped config")
    sys.stdout.write(path.read_text())


def main() -> None:
    """The `tsconv` command. Click's usage errors (a missing option, an unknown flag or
    command) come out as one line too, not as a box: every user error is one line."""
    try:
        code = typer.main.get_command(app).main(standalone_mode=False)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:
        # typer vendors click, so its exception classes are private: a click error is one
        # with click's interface
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        if type(exc).__name__ != "NoArgsIsHelpError":  # its help is printed already
            ctx = getattr(exc, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            err.print(f"[red]error:[/red] {escape(exc.format_message())}{hint}", soft_wrap=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
