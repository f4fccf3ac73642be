"""What tsconv can learn: every shipped config's walk-forward R^2 on series with a known answer.

    python scripts/known_answers.py [--out docs/known_answers.md] [--configs quick tcn ...]
                                    [--set train.ensemble=4 ...]
    python scripts/known_answers.py --battery [--seed 0] [--draws 24] [--configs quick ...]
                                    [--workers 2] [--out docs/known_answers.md]

The fixed cases (the default) are those of tests/test_known_answers.py (tsconv.synthetic.CASES,
the configs unchanged but for data keys and tsconv.synthetic.SPAN_KEYS): per series, the
oracle's R^2 on the predicted rows, the ridge AR baseline's and each config's, with the DM
p-value against zero and the wall time of the backtest.

--battery runs the randomized known-answer battery (tsconv.synthetic.draw_spec): each draw's
bars are written as CSV files, imported with `tsconv fetch --from-csv` and backtested with
`tsconv backtest --config <shipped>` and only data and span keys set, as a user would; each run
is scored against the attainable reference, a least-squares fit of the true form on the same
folds (tsconv.evaluate.battery). It prints a table per draw and a summary per config; with
--by-fold, also each fold's figures (where a draw's score is won or lost), e.g.

    python scripts/known_answers.py --battery --seed 1 --only 5 --configs tcn --by-fold

With --out, each mode rewrites its own part of the file: the fixed cases the part before
"## Randomized battery", the battery its config's and seed's section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from typer.testing import CliRunner

from tsconv import synthetic
from tsconv.cli import app
from tsconv.config import load_config
from tsconv.evaluate import battery
from tsconv.models.registry import receptive_field
from tsconv.recipes.backtest import run_backtest
from tsconv.recipes.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["quick", "wf_msft", "tcn", "multiscale"]
BATTERY_HEADING = "## Randomized battery"


def run(config: str, series: str, extra: list[str] | None = None) -> dict:
    """One backtest of a shipped config on a case ("sample": the real MSFT and AAPL bars),
    with `extra` overrides after the case's own."""
    overrides = list(synthetic.SPAN_KEYS.get(config, []))
    if series == "sample":
        frames, oracles = None, None
        overrides += ["data.source=sample", "data.tickers=[MSFT,AAPL]"]
    else:
        frames, oracles = synthetic.case_frames(series)
        overrides.append(f"data.tickers=[{','.join(frames)}]")
    cfg = load_config(ROOT / "configs" / f"{config}.yaml", [*overrides, *(extra or [])])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = run_backtest(cfg, Path(tmp) / "bt", prep=prepare(cfg, frames))
        seconds = time.perf_counter() - t0
        pred = pd.read_parquet(Path(tmp) / "bt" / "predictions.parquet")
    oracle = synthetic.oracle_r2_of(pred, oracles) if oracles is not None else np.nan
    f = m["forecast"]
    return {
        "model": f["prediction"]["r2_oos"],
        "ridge": f["ridge_ar"]["r2_oos"],
        "oracle": oracle,
        "dm_p": f["prediction"]["dm_vs_zero"]["p_value"],
        "dm_stat": f["prediction"]["dm_vs_zero"]["stat"],
        "seconds": seconds,
        "folds": m["folds"],
        "rows": m["n_predictions"],
    }


def fmt(x: float) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:+.3f}"


def table(results: dict[tuple[str, str], dict], configs: list[str], series: list[str]) -> str:
    lines = [
        "| series | config | oracle | ridge AR | model | model / oracle | model / ridge "
        "| DM vs zero | folds | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in series:
        for c in configs:
            r = results[(c, s)]
            of_oracle = (
                r["model"] / r["oracle"] if r["oracle"] and np.isfinite(r["oracle"]) else None
            )
            of_ridge = r["model"] / r["ridge"] if r["ridge"] > 0.01 else None
            lines.append(
                f"| {s} | {c} | {fmt(r['oracle'])} | {fmt(r['ridge'])} | {fmt(r['model'])} | "
                f"{'-' if of_oracle is None else f'{of_oracle:.0%}'} | "
                f"{'-' if of_ridge is None else f'{of_ridge:.2f}x'} | "
                f"p = {pval(r['dm_p'])} ({side(r['dm_stat'])}) | {r['folds']} | "
                f"{r['seconds']:.0f} s |"
            )
    return "\n".join(lines)


def fixed_cases_markdown(args: argparse.Namespace, text: str) -> str:
    return (
        "# What tsconv can learn\n\n"
        "Walk-forward R^2 out of sample (against the zero forecast) of every shipped config on "
        "series whose best forecast is known, from `make known-answers` "
        f"(`python scripts/known_answers.py --out {args.out}`) on {platform.node() or 'this machine'}"
        f", torch {torch.__version__}, {torch.get_num_threads()} threads"
        + (f", with {' '.join(args.overrides)}" if args.overrides else "")
        + ". Ridge AR is the "
        "baseline of the same backtest (the configs differ in features and spans). The oracle "
        "is the generating process's own conditional mean on the same rows. DM: the "
        "Diebold-Mariano test of the model's squared error against the zero forecast's. "
        "tests/test_known_answers.py asserts these cases: on ar1 model >= 0.95 x ridge and "
        "DM p < 0.01; on tent model >= 80% of the oracle and beating ridge (DM p < 0.01); "
        "on random_walk no edge; on the sample not significantly worse than zero.\n\n"
        "- ar1: AR(1), phi 0.5, 1 ticker x 3,000 bars.\n"
        "- tent: small moves continue and large ones reverse (tsconv.synthetic.tent_ar), "
        "8 tickers x 3,000 bars; linear forecasts find almost nothing.\n"
        "- random_walk: independent returns, 2 tickers x 3,000 bars: the oracle is zero.\n"
        "- sample: the embedded MSFT and AAPL daily bars, 2000-2013.\n\n" + text + "\n"
    )


def fixed_cases(args: argparse.Namespace) -> None:
    results = {}
    for config in args.configs:
        for series in args.series:
            results[(config, series)] = r = run(config, series, args.overrides)
            print(
                f"{config:10s} {series:12s} model {fmt(r['model'])} ridge {fmt(r['ridge'])} "
                f"oracle {fmt(r['oracle'])} DM p {pval(r['dm_p'])} ({r['folds']} folds, "
                f"{r['rows']} predictions, {r['seconds']:.1f} s)",
                flush=True,
            )
    text = table(results, args.configs, args.series)
    print(text)
    if args.out:
        old = args.out.read_text() if args.out.exists() else ""
        kept = old[old.index(BATTERY_HEADING) :] if BATTERY_HEADING in old else ""
        args.out.write_text(fixed_cases_markdown(args, text) + ("\n" + kept if kept else ""))


# --- the randomized battery ---


def cli(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    if result.exit_code != 0:
        raise RuntimeError(f"tsconv {' '.join(args)} failed:\n{result.output}")


def import_draws(answers: list[synthetic.KnownAnswer], root: Path) -> Path:
    """Every draw's tickers written as CSV files and imported into one cache folder."""
    cache = root / "cache"
    for answer in answers:
        for name, frame in answer.frames.items():
            path = root / f"{name}.csv"
            frame.to_csv(path)
            cli("fetch", "--from-csv", str(path), "--ticker", name, "--data-dir", str(cache))
    return cache


def backtest_draw(
    config: str,
    answer: synthetic.KnownAnswer,
    cache: Path,
    out: Path,
    workers: int,
    overrides: list[str],
) -> tuple[dict, pd.DataFrame, pd.DataFrame, float]:
    """`tsconv backtest` of a shipped config on one draw, only data and span keys set (and
    `overrides` after them, to try a change of recipe): its metrics.json, predictions, folds
    and wall time."""
    keys = [
        "data.source=cache",
        f"data.dir={cache}",
        f"data.tickers=[{','.join(answer.frames)}]",
        *synthetic.SPAN_KEYS.get(config, []),
        *overrides,
    ]
    args = ["backtest", "--config", config, "--out", str(out), "--workers", str(workers)]
    t0 = time.perf_counter()
    cli(*args, *(a for key in keys for a in ("--set", key)))
    seconds = time.perf_counter() - t0
    m = json.loads((out / "metrics.json").read_text())
    return m, pd.read_parquet(out / "predictions.parquet"), pd.read_csv(out / "folds.csv"), seconds


def run_battery(
    config: str,
    answers: list[synthetic.KnownAnswer],
    cache: Path,
    root: Path,
    args: argparse.Namespace,
) -> list[dict]:
    """Every draw through one config, scored; prints a line per draw."""
    cfg = load_config(Path(config), [*synthetic.SPAN_KEYS.get(config, []), *args.overrides])
    field = receptive_field(cfg.model)
    rows = []
    for answer in answers:
        d = answer.draw
        out = root / "runs" / config / f"draw_{d.index:02d}"
        m, pred, folds, seconds = backtest_draw(
            config, answer, cache, out, args.workers, args.overrides
        )
        row = battery.score_draw(answer, m, pred, folds)
        row.update(
            index=d.index,
            family=d.family,
            signal=d.form.describe(),
            noise=d.noise.describe(),
            tickers=d.tickers,
            bars=d.bars,
            target=d.target_r2,
            gaps=battery.input_gaps(d.form, cfg.features, field),
            folds=m["folds"],
            seconds=seconds,
        )
        rows.append(row)
        print(f"{config:10s} {draw_line(row)}", flush=True)
        if args.by_fold:
            for f in battery.scores_by_fold(answer, pred, folds):
                print(f"{'':14s}{fold_line(f)}", flush=True)
    return rows


def pval(x: float | None) -> str:
    return "-" if x is None else f"{x:.2g}"


def side(dm_stat: float | None) -> str:
    """Which way the model's squared error went against the zero forecast's; no test when the
    model's forecast is the zero forecast on every row."""
    if dm_stat is None:
        return "the zero forecast itself"
    return ("lower" if dm_stat < 0 else "higher") + " MSE"


def pct(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{round(100 * x)}%"  # an int: never "-0%"


def draw_line(r: dict) -> str:
    return (
        f"#{r['index']:02d} {r['family']:11s} {r['signal']:34s} {r['noise']:24s} "
        f"target {r['target']:.3f} oracle {fmt(r['oracle'])} attainable {fmt(r['attainable'])} "
        f"ridge {fmt(r['ridge'])} model {fmt(r['model'])} ratio {pct(r['ratio'])} "
        f"(below half: p {pval(r['short_p'])}) "
        f"DM p {pval(r['dm_p'])} (Holm {pval(r['dm_p_holm'])}) {r['seconds']:.0f} s"
    )


def fold_line(f: dict) -> str:
    terms = f["linear_terms"] if isinstance(f["linear_terms"], str) else "lags only"
    penalty = "-" if f["linear_penalty"] is None else f"{f['linear_penalty']:.3g}"
    return (
        f"fold {f['fold']} from {f['test_start']} ({f['rows']} rows): oracle {fmt(f['oracle'])} "
        f"attainable {fmt(f['attainable'])} ridge {fmt(f['ridge'])} model {fmt(f['model'])}; "
        f"linear part: {terms} at penalty {penalty}, best epoch {f['best_epoch']}"
    )


def battery_table(rows: list[dict]) -> str:
    lines = [
        "| # | family | signal | noise | tickers x bars | target | oracle | attainable | ridge AR "
        "| model | model / attainable | below half (p) | DM vs zero (Holm) | missing inputs "
        "| time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['index']} | {r['family']} | {r['signal']} | {r['noise']} | "
            f"{r['tickers']} x {r['bars']} | {r['target']:.3f} | {fmt(r['oracle'])} | "
            f"{fmt(r['attainable'])} | {fmt(r['ridge'])} | {fmt(r['model'])} | "
            f"{pct(r['ratio'])} | {pval(r['short_p'])} | "
            f"p = {pval(r['dm_p'])} ({pval(r['dm_p_holm'])}; {side(r['dm_stat'])}) | "
            f"{r['gaps'] or '-'} | {r['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def summary_text(config: str, seed: int, rows: list[dict]) -> str:
    s = battery.summarize_battery(rows)
    families = ", ".join(f"{f} {pct(v)}" for f, v in s["by_family"].items())
    minutes = sum(r["seconds"] for r in rows) / 60
    return (
        f"{config}, seed {seed}: median model / attainable {pct(s['median_ratio'])}, least "
        f"{pct(s['min_ratio'])} over {s['signal_draws']} draws with a signal (median by family: "
        f"{families}); {s['short_of_share']} of them below half of the attainable by more than "
        f"chance (one-sided, 5%), {s['signal_with_edge']} beat the zero forecast (DM, Holm, 5%); "
        f"{s['null_with_edge']} of {s['null_draws']} null draws show a significant edge. "
        f"{minutes:.1f} minutes of backtests ({60 * minutes / max(len(rows), 1):.0f} s a draw)."
    )


BATTERY_INTRO = f"""{BATTERY_HEADING}

Known answers as a distribution (issue 30): `python scripts/known_answers.py --battery --seed S
--draws N` draws N series from the seed (tsconv.synthetic.draw_spec): a linear forecast from
the last L = 2..40 returns (their sum, the L-bar momentum, or decaying weights), a nonlinear
function (abs, square, sign, threshold) of one OHLCV feature (log_return, hl_range, close_loc,
volume_z_20), an interaction of two, the same signal shared by a panel of 4-8 tickers, and
null draws (no signal, GARCH-t noise); Student-t or GARCH-t noise on some draws. The signal
that drives r[t+1] is computed from the bars up to t with tsconv's feature definitions, and
its scale is set so that the oracle explains the drawn `target` share of the series' variance
(log-uniform in 0.03..0.25). Each draw is imported with `tsconv fetch --from-csv` and
backtested with the shipped config, only data and span keys (tsconv.synthetic.SPAN_KEYS) set.

- oracle: the generating process's conditional mean, R^2 on the predicted rows;
- attainable: the true form with its one coefficient fitted by least squares on each fold's
  training dates (folds.csv), all tickers pooled: what this much data teaches a model that
  knows the form (tsconv.evaluate.battery);
- ridge AR and model: metrics.json's `r2_oos` (R^2 against the zero forecast);
- model / attainable: the score; below half: the one-sided p-value of the model's R^2 being
  below half of the attainable's on these rows, a Diebold-Mariano test on per-date sums of
  e_model^2 - (e_attainable^2 + y^2) / 2, whose mean is R^2_attainable / 2 - R^2_model times
  the mean of y^2 (tsconv.evaluate.battery.short_of_share): a small p is a draw the model
  fails; a large one beside a ratio under 50% is a draw too weak to tell;
- DM: the model's squared error against the zero forecast's,
  raw p and Holm-adjusted over the baselines as in metrics.json; an edge is a lower MSE at 5%
  after Holm;
- missing inputs: what the config lacks to see the signal (a feature, or lags beyond its
  model's receptive field).
"""


def write_battery_section(path: Path, label: str, seed: int, text: str) -> None:
    """Put `text` in the file's section for this config (`label`: its name and any overrides)
    and seed, replacing an older one."""
    old = path.read_text() if path.exists() else ""
    if BATTERY_HEADING not in old:
        old = old.rstrip("\n") + "\n\n" + BATTERY_INTRO
    begin, end = (
        f"<!-- battery {label} seed {seed} -->",
        f"<!-- end battery {label} seed {seed} -->",
    )
    block = f"{begin}\n{text}\n{end}"
    if begin in old:
        head, rest = old.split(begin, 1)
        old = head + block + rest.split(end, 1)[1]
    else:
        old = old.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(old)


def battery_mode(args: argparse.Namespace) -> None:
    load = os.getloadavg()[0]  # the time column means little when other work shares the cores
    specs = synthetic.battery(args.seed, args.draws, args.bars)
    if args.only:  # draws picked by index: the same series as in the full battery
        specs = [d for d in specs if d.index in args.only]
    answers = [synthetic.generate(d) for d in specs]
    with tempfile.TemporaryDirectory() as tmp:
        cache = import_draws(answers, Path(tmp))
        for config in args.configs:
            rows = run_battery(config, answers, cache, Path(tmp), args)
            summary = summary_text(config, args.seed, rows)
            text = battery_table(rows)
            print(f"\n{text}\n\n{summary}\n", flush=True)
            if args.out:
                where = f"{platform.node() or 'this machine'}, torch {torch.__version__}"
                changed = f", with {' '.join(args.overrides)}" if args.overrides else ""
                heading = (
                    f"### {config}{changed}, seed {args.seed}, {len(answers)} draws\n\n"
                    f"{summary}\n\n(`--workers {args.workers}` on {where}, "
                    f"{torch.get_num_threads()} threads, load average {load:.1f} at the start.)\n\n"
                )
                write_battery_section(args.out, config + changed, args.seed, heading + text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, help="also write the tables as markdown here")
    ap.add_argument("--configs", nargs="+", choices=CONFIGS, help="default: all; --battery: quick")
    ap.add_argument("--series", nargs="+", default=[*synthetic.CASES, "sample"])
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override after the case's own, e.g. train.ensemble=4 (repeatable)",
    )
    ap.add_argument("--battery", action="store_true", help="the randomized battery instead")
    ap.add_argument("--seed", type=int, default=0, help="--battery: the draws' seed")
    ap.add_argument("--draws", type=int, default=24, help="--battery: how many draws")
    ap.add_argument(
        "--bars", type=int, default=synthetic.BATTERY_BARS, help="--battery: per ticker"
    )
    ap.add_argument("--workers", type=int, default=1, help="--battery: tsconv backtest --workers")
    ap.add_argument(
        "--only", type=int, nargs="+", help="--battery: run only these draws (by index)"
    )
    ap.add_argument(
        "--by-fold",
        action="store_true",
        help="--battery: also each fold's R^2s and the linear part's choice, under each draw",
    )
    args = ap.parse_args()
    if args.battery:
        args.configs = args.configs or ["quick"]
        battery_mode(args)
    else:
        args.configs = args.configs or CONFIGS
        fixed_cases(args)


if __name__ == "__main__":
    main()
