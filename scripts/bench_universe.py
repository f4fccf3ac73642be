"""A research-size panel end to end: N tickers x B bars walked forward with about 40 refits,
timed phase by phase, with peak memory and the fit's R^2 against the oracle.

    python scripts/bench_universe.py [--config quick] [--tickers 8 32] [--bars 5040]
        [--refits 40] [--project 500] [--project-refits 40] [--after 500] [--prepare 3000]
        [--linear 64] [--whole 500 [--workers 8]] [--set KEY=V ...]

The panel: N tickers of AR(1) returns (`tsconv.synthetic.ar1`, independent draws, seed = the
ticker's number), B business days each (5,040: twenty years), whose best forecast is known,
so the fit's R^2 out of sample is printed beside the oracle's and ridge's on the same rows:
speed never hides a broken fit. A shipped config runs unchanged but for the data and
`backtest.test_span`, chosen so that the test bars after `backtest.train_span` make
`--refits` folds.

Each run is the whole backtest (`run_backtest`, serial, in this process: folds, metrics,
report, outputs), timed by phase with one mechanism, `Phases`: a timer wrapped around the
functions the recipes call for each phase (their modules' attributes, for this process's
run only); nothing in tsconv is changed for it. Phases: data preparation, the linear part's
ridge fit (highway, per fold), training (the epochs' optimizer steps), validation (each
epoch's), prediction, baselines (per ticker and fold: ridge AR, persistence, trailing mean),
tests and metrics (`summarize_backtest` and the caveats), the report (HTML and figures),
writing outputs, and the rest (fold bookkeeping).

Then a cost model: each phase's time as a fixed cost per fold plus a cost per fold and
ticker-bar (prepare: per ticker-bar only), fitted to the runs by least squares, which gives
the projection to `--project` tickers at the same bars and refits (or `--project-refits`
refits: measure few refits, project many; work per fold grows with the training rows, N x
the bars before the fold, so a model in N at fixed B and refits is the same as one in N x B
per fold; see docs/benchmarks.md), and names the phase that dominates there.

`--after N`: everything after training at N tickers without training: the folds'
predictions are the oracle's plus noise, and the baselines, the tests and metrics and the
report are timed on them (what item 3 of issue 33 asks to take seconds at N = 500).
`--prepare N`: peak resident memory of preparing N x B bars with the config's features, in a
fresh process (the frames as a source would hand them over, then `prepare`).
`--linear N`: the linear part's selection (`select_ridge`, nonlinear, the config's window and
feature count) on the last fold's pooled training rows of N tickers (0.8 B rows each): peak
memory it allocates (tracemalloc, which numpy reports to) per row, and seconds.
`--whole N`: the whole backtest at N tickers and `--refits` folds, measured rather than
projected, its folds on `--workers` processes (`backtest.workers`; phases are not timed
there, timing.json's split is printed): wall time, peak memory of this process and of the
largest reaped child process, R^2 against the oracle. On a lent GPU with `--set
train.device=cuda` this is issue 33's measurement of N = 500 x 40 refits
(`scripts/gpu_checks.sh`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from _bench import machine, table

from tsconv import synthetic
from tsconv.config import Config, load_config
from tsconv.recipes.prepare import Prepared, known_rows, prepare

ROOT = Path(__file__).resolve().parents[1]
PHASES = [
    "data preparation",
    "linear part (ridge)",
    "training",
    "validation",
    "prediction",
    "baselines",
    "tests and metrics",
    "report",
    "writing outputs",
    "rest",
]


def panel(n: int, bars: int) -> tuple[dict[str, pd.DataFrame], dict[str, pd.Series]]:
    """N AR(1) tickers of `bars` bars and each one's oracle forecast by date (the target of
    row t is r[t+1]; its oracle is phi r[t])."""
    frames, oracles = {}, {}
    for i in range(n):
        r, oracle = synthetic.ar1(bars, seed=i)
        name = f"T{i:04d}"
        frames[name] = synthetic.ohlcv_from_returns(r, seed=i)
        oracles[name] = pd.Series(oracle, index=frames[name].index)
    return frames, oracles


def config(name: str, sets: list[str]) -> Config:
    return load_config(ROOT / "configs" / f"{name}.yaml", sets)


def with_refits(cfg: Config, prep: Prepared, refits: int) -> Config:
    """`cfg` with the test span that makes `refits` folds after the first training span."""
    usable = max(known_rows(td) for td in prep.data.values())
    test_bars = usable - cfg.backtest.train_span - cfg.backtest.gap
    span = math.ceil(test_bars / refits)
    bt = cfg.backtest.model_copy(update={"test_span": span, "workers": 1, "executor": "local"})
    data = cfg.data.model_copy(update={"tickers": list(prep.data)})
    return cfg.model_copy(update={"backtest": bt, "data": data})


class Phases:
    """Seconds per phase, from timers wrapped around module functions (`wrap`) while a run
    lasts. A wrapped function's time counts once however deeply it is called."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.fit_histories: list[list[dict[str, float]]] = []

    @contextlib.contextmanager
    def wrap(self, module: str, name: str, phase: str) -> Iterator[None]:
        mod = importlib.import_module(module)
        original = getattr(mod, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - t0

        setattr(mod, name, timed)
        try:
            yield
        finally:
            setattr(mod, name, original)

    @contextlib.contextmanager
    def fits(self) -> Iterator[None]:
        """Each fold's training record (`fit_span`'s result), for its epochs' split into
        optimizer steps and validation."""
        mod = importlib.import_module("tsconv.recipes.walkforward")
        original = mod.fit_span

        def recorded(*args, **kwargs):
            t0 = time.perf_counter()
            out = original(*args, **kwargs)
            self.seconds["fit"] += time.perf_counter() - t0
            self.fit_histories.append(out[3].history)
            return out

        mod.fit_span = recorded
        try:
            yield
        finally:
            mod.fit_span = original

    def table(self, total: float) -> dict[str, float]:
        """Exclusive seconds per phase of PHASES; they add up to `total`."""
        s = self.seconds
        validation = sum(h["seconds"] - h["train_seconds"] for f in self.fit_histories for h in f)
        out = {
            "data preparation": s["data preparation"],
            "linear part (ridge)": s["linear part (ridge)"],
            "training": s["fit"] - s["linear part (ridge)"] - validation,
            "validation": validation,
            "prediction": s["prediction"],
            "baselines": s["baselines"],
            "tests and metrics": s["tests and metrics"],
            "report": s["report"],
            "writing outputs": s["outputs"] - s["report"],
        }
        out["rest"] = total - sum(out.values())
        return out


def timed_backtest(cfg: Config, prep: Prepared, out: Path) -> tuple[dict[str, float], dict]:
    """One serial backtest in this process; its seconds per phase and its metrics."""
    from tsconv.recipes.backtest import run_backtest

    phases = Phases()
    hooks = [
        ("tsconv.recipes.fit_span", "fit_highway", "linear part (ridge)"),
        ("tsconv.recipes.walkforward", "predict_rows", "prediction"),
        ("tsconv.recipes.walkforward", "_fold_rows", "baselines"),
        ("tsconv.recipes.backtest", "summarize_backtest", "tests and metrics"),
        ("tsconv.recipes.backtest", "backtest_caveats", "tests and metrics"),
        ("tsconv.report.backtest_html", "render", "report"),
        ("tsconv.recipes.backtest", "write_outputs", "outputs"),
    ]
    with contextlib.ExitStack() as stack:
        for hook in hooks:
            stack.enter_context(phases.wrap(*hook))
        stack.enter_context(phases.fits())
        t0 = time.perf_counter()
        metrics = run_backtest(cfg, out, prep=prep)
        total = time.perf_counter() - t0
    return phases.table(total), metrics


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepared_panel(name: str, sets: list[str], n: int, bars: int, refits: int):
    """The panel of N tickers prepared, with the config set for `refits` folds: (config,
    prepared data, the oracle's forecasts, seconds of preparation)."""
    frames, oracles = panel(n, bars)
    base = config(name, sets)
    t0 = time.perf_counter()
    prep = prepare(base, frames, {})
    t_prep = time.perf_counter() - t0
    cfg = with_refits(base, prep, refits)
    prep.cfg = cfg
    return cfg, prep, oracles, t_prep


def universe_row(name: str, sets: list[str], n: int, bars: int, refits: int, tmp: Path) -> dict:
    """Prepare and backtest N tickers; the phases, peak memory and the fit's quality."""
    cfg, prep, oracles, t_prep = prepared_panel(name, sets, n, bars, refits)
    seconds, metrics = timed_backtest(cfg, prep, tmp / f"{name}-{n}")
    seconds["data preparation"] = t_prep
    pred = pd.read_parquet(tmp / f"{name}-{n}" / "predictions.parquet")
    fc = metrics["forecast"]
    return {
        "config": name,
        "N": n,
        "bars": bars,
        "folds": metrics["folds"],
        "test_span": cfg.backtest.test_span,
        "predictions": len(pred),
        "seconds": seconds,
        "peak_mib": peak_mib(),
        "r2": fc["prediction"]["r2_oos"],
        "r2_ridge": fc["ridge_ar"]["r2_oos"],
        "r2_oracle": synthetic.oracle_r2_of(pred, oracles),
    }


def whole_row(
    name: str, sets: list[str], n: int, bars: int, refits: int, workers: int, tmp: Path
) -> dict:
    """The whole backtest of N tickers on `workers` processes: wall time, timing.json's
    split, peak memory and the fit's quality."""
    from tsconv.engine.runtime import select_device
    from tsconv.recipes.backtest import run_backtest

    cfg, prep, oracles, t_prep = prepared_panel(name, sets, n, bars, refits)
    cfg = cfg.model_copy(update={"backtest": cfg.backtest.model_copy(update={"workers": workers})})
    prep.cfg = cfg
    out = tmp / f"whole-{name}-{n}-{workers}"
    t0 = time.perf_counter()
    metrics = run_backtest(cfg, out, prep=prep)
    wall = t_prep + time.perf_counter() - t0  # preparing and backtesting
    timing = metrics["timing"]
    pred = pd.read_parquet(out / "predictions.parquet")
    fc = metrics["forecast"]
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "config": name,
        "N": n,
        "bars": bars,
        "folds": metrics["folds"],
        "workers": timing["workers"],
        "device": select_device(cfg.train.device).type,
        "wall s": round(wall, 1),
        "prepare s": round(t_prep, 1),
        "folds s": round(timing["folds_seconds"], 1),
        "after folds s": round(wall - t_prep - timing["folds_seconds"], 1),
        "peak MiB": round(peak_mib()),
        "largest child MiB": round(children) if workers > 1 else "-",  # reaped children only
        "R^2": f"{fc['prediction']['r2_oos']:+.3f}",
        "ridge": f"{fc['ridge_ar']['r2_oos']:+.3f}",
        "oracle": f"{synthetic.oracle_r2_of(pred, oracles):+.3f}",
    }


def warm_up(name: str, sets: list[str], tmp: Path) -> None:
    """A small backtest first (3 tickers, 2 folds, a few steps), so that the measured runs
    do not pay this process's one-time costs (imports: matplotlib for the report,
    torch._dynamo at the first optimizer)."""
    span = config(name, sets).backtest.train_span
    few = [*sets, "train.min_steps=4", "train.epochs=1"]
    universe_row(name, few, 3, span + 400, 2, tmp / "warm-up")


# --------------------------------------------------------------------------- cost model

# What each phase's time grows with besides the number of folds: ticker-bars of the panel
# (preparation), ticker-bars trained on summed over the folds (the fits, and the ridge
# baseline, fitted per ticker on its training rows), or ticker-bars predicted (everything
# that reads the predictions).
DRIVER = {
    "data preparation": "panel",
    "linear part (ridge)": "trained",
    "training": "trained",
    "validation": "trained",
    "prediction": "predicted",
    "baselines": "trained",
    "tests and metrics": "predicted",
    "report": "predicted",
    "writing outputs": "predicted",
    "rest": "predicted",
}


def work(driver: str, n: int, bars: int, folds: int, train_span: int) -> float:
    """Ticker-bars of the panel, trained on over all folds of an expanding walk-forward
    (fold k trains on train_span + k x test_span bars of each ticker), or predicted."""
    if driver == "panel":
        return float(n * bars)
    if driver == "predicted":
        return float(n * (bars - train_span))
    span = (bars - train_span) / folds
    return n * sum(train_span + k * span for k in range(folds))


def fit_cost_model(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """Per phase, (seconds per fold, seconds per ticker-bar of its driver) by least squares
    over the runs (preparation: per ticker-bar only). A coefficient that comes out negative
    (noise in a phase too small to matter) is set to zero."""
    model = {}
    for phase in PHASES:
        y = np.array([r["seconds"][phase] for r in rows])
        w = np.array(
            [work(DRIVER[phase], r["N"], r["bars"], r["folds"], r["train_span"]) for r in rows]
        )
        if phase == "data preparation" or len(rows) < 2:
            model[phase] = (0.0, float(max(0.0, (w @ y) / (w @ w))))
            continue
        a = np.column_stack([[r["folds"] for r in rows], w])
        coef = np.linalg.lstsq(a, y, rcond=None)[0]
        if coef[0] < 0 or coef[1] < 0:  # refit with the other term alone
            only = a[:, 1] if coef[0] < 0 else a[:, 0]
            c = float(max(0.0, (only @ y) / (only @ only)))
            coef = (0.0, c) if coef[0] < 0 else (c, 0.0)
        model[phase] = (float(coef[0]), float(coef[1]))
    return model


def project(model: dict, n: int, bars: int, folds: int, train_span: int) -> dict[str, float]:
    return {
        phase: per_fold * folds + per_bar * work(DRIVER[phase], n, bars, folds, train_span)
        for phase, (per_fold, per_bar) in model.items()
    }


# --------------------------------------------------------------------------- after training


def after_training(
    name: str, sets: list[str], n: int, bars: int, refits: int, every: int
) -> list[list]:
    """Baselines, tests and metrics, and the report for N tickers, without training: the
    predictions are the AR(1) oracle's (phi = 0.5 times the last return, `persistence`) plus
    noise. The baselines of every `every`-th fold are timed and scaled to all folds; the other
    folds' ridge forecasts are stood in by zeros (the ridge fits are most of the time, and
    the same per fold within a factor of the training rows)."""
    from tsconv.evaluate import baselines
    from tsconv.evaluate.summary import summarize_backtest
    from tsconv.recipes.prepare import fit_scalers
    from tsconv.recipes.walkforward import _fold_rows, fold_spans, make_folds
    from tsconv.report import backtest_html

    frames, _ = panel(n, bars)
    base = config(name, sets)
    t0 = time.perf_counter()
    prep = prepare(base, frames, {})
    t_prep = time.perf_counter() - t0
    del frames
    prep.cfg = cfg = with_refits(base, prep, refits)
    folds = make_folds(prep)
    parts, timed, t_base = [], [], 0.0
    ridge = baselines.ridge_ar
    for fold in folds:
        train, test = fold_spans(prep, fold)
        scalers = fit_scalers(prep, train)
        if fold.index % every == every // 2:
            t0 = time.perf_counter()
            rows, _ = _fold_rows(prep, fold, train, test, scalers)
            t_base += time.perf_counter() - t0
            timed.append(fold.index)
        else:
            baselines.ridge_ar = lambda x, y, tr, rows, *a: (np.zeros(len(rows)), _NO_FIT)
            try:
                rows, _ = _fold_rows(prep, fold, train, test, scalers)
            finally:
                baselines.ridge_ar = ridge
        parts.append(rows)
    pred = pd.concat(parts, ignore_index=True).sort_values(["date", "ticker"], kind="stable")
    pred = pred.reset_index(drop=True)
    rng = np.random.default_rng(0)
    pred["prediction"] = 0.5 * pred["persistence"] + rng.normal(0, 0.01, len(pred))
    t0 = time.perf_counter()
    metrics, nets = summarize_backtest(pred, cfg)
    t_tests = time.perf_counter() - t0
    table_ = pd.DataFrame([{"fold": f.index} for f in folds])
    t0 = time.perf_counter()
    html = backtest_html.render(pred, metrics, table_, cfg, nets)
    t_report = time.perf_counter() - t0
    return [
        [
            name,
            n,
            bars,
            len(folds),
            f"{len(pred):,}",
            t_prep,
            f"{t_base:.3g} on {len(timed)} folds; {t_base * len(folds) / len(timed):,.0f} scaled",
            t_tests,
            t_report,
            f"{len(html) / 2**20:.2f}",
            f"{peak_mib():,.0f}",
        ]
    ]


class _NoFit:
    lags, penalty = 0, 0.0


_NO_FIT = _NoFit()


# --------------------------------------------------------------------------- memory


def prepare_memory(name: str, sets: list[str], n: int, bars: int) -> list[object]:
    """Peak resident memory of preparing N x bars, in a fresh process (this one's peak holds
    earlier work)."""
    code = (
        "import sys, resource, time; sys.path.insert(0, sys.argv[1]);"
        "import bench_universe as b;"
        "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "frames, _ = b.panel(int(sys.argv[3]), int(sys.argv[4]));"
        "r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "t0 = time.perf_counter(); prep = b.prepare(b.config(sys.argv[2], sys.argv[5:]), frames, {});"
        "t = time.perf_counter() - t0;"
        "r2 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "held = sum(td.x.nbytes + td.y.nbytes + td.ret1.nbytes + td.logp.nbytes"
        " for td in prep.data.values());"
        "print(r0 / 1024, r1 / 1024, r2 / 1024, t, held / 2**20, len(prep.cfg.features))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), name, str(n), str(bars), *sets],
        capture_output=True,
        text=True,
        check=True,
    )
    start, frames, peak, seconds, held, feats = map(float, res.stdout.split())
    return [
        name,
        n,
        bars,
        int(feats),
        f"{start:.0f}",
        f"{frames:.0f}",
        f"{peak:.0f}",
        f"{peak / 1024:.2f}",
        f"{held:.0f}",
        f"{(peak - frames) * 2**20 / (n * bars):.0f}",
        f"{seconds:.1f}",
    ]


def linear_memory(name: str, sets: list[str], n: int, bars: int) -> list[object]:
    """The linear part's selection on N tickers' pooled training rows: what its peak memory
    grows with (the rows) and its time."""
    import tracemalloc

    from tsconv.engine import linear

    cfg = config(name, sets)
    n_feat, lags, train = len(cfg.features), cfg.window, int(0.8 * bars)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n * bars, n_feat)).astype(np.float32)
    y = np.r_[0.0, 0.1 * x[:-1, 0] + 0.05 * np.abs(x[:-1, -1])] + rng.standard_normal(n * bars)
    rows = np.concatenate([np.arange(t * bars + lags, t * bars + train) for t in range(n)])
    since = np.repeat(np.arange(n) * bars, train - lags)
    dates = np.tile(np.arange(lags, train), n)
    tracemalloc.start()
    t0 = time.perf_counter()
    linear.select_ridge(x, y, rows, lags, since, dates, nonlinear=True)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return [
        name,
        n,
        len(rows),
        lags,
        f"{peak / 2**20:.0f}",
        f"{peak / len(rows):.0f}",
        f"{seconds:.1f}",
    ]


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", nargs="+", default=["quick"])
    ap.add_argument("--tickers", type=int, nargs="*", default=[8, 32])
    ap.add_argument("--bars", type=int, default=5040)
    ap.add_argument("--refits", type=int, default=40)
    ap.add_argument("--project", type=int, default=500)
    ap.add_argument(
        "--project-refits", type=int, default=None, help="refits of the projection (--refits)"
    )
    ap.add_argument("--after", type=int, nargs="*", default=[])
    ap.add_argument("--after-every", type=int, default=10, help="time every K-th fold's baselines")
    ap.add_argument("--prepare", type=int, nargs="*", default=[])
    ap.add_argument("--linear", type=int, nargs="*", default=[])
    ap.add_argument("--whole", type=int, nargs="*", default=[])
    ap.add_argument("--workers", type=int, default=1, help="processes of the --whole runs")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    print(
        f"{machine()}; a machine shared with other work: times move between runs, the shares "
        "and the cost model's fit within one run less.\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.config if args.tickers else []:
            warm_up(name, args.sets, Path(tmp))
            rows = []
            for n in args.tickers:
                row = universe_row(name, args.sets, n, args.bars, args.refits, Path(tmp))
                row["train_span"] = config(name, args.sets).backtest.train_span
                rows.append(row)
            print(universe_table(name, args, rows))
    for name in args.config if args.whole else []:
        with tempfile.TemporaryDirectory() as tmp:
            rows = [
                whole_row(name, args.sets, n, args.bars, args.refits, args.workers, Path(tmp))
                for n in args.whole
            ]
        print(
            table(
                f"The whole backtest, `{name}`: N tickers x {args.bars} bars, about "
                f"{args.refits} folds, measured (not projected)",
                list(rows[0]),
                [list(r.values()) for r in rows],
            )
        )
    for name in args.config if args.after else []:
        after_training(name, args.sets, 3, args.bars, 2, 2)  # warm-up: imports, caches
        rows = [
            r
            for n in args.after
            for r in after_training(name, args.sets, n, args.bars, args.refits, args.after_every)
        ]
        print(
            table(
                f"After training, `{name}`: N tickers x {args.bars} bars, about {args.refits} "
                "folds, predictions the oracle's plus noise (no training), seconds",
                [
                    "config",
                    "N",
                    "bars",
                    "folds",
                    "predictions",
                    "prepare",
                    "baselines",
                    "tests and metrics",
                    "report",
                    "report MiB",
                    "peak MiB",
                ],
                rows,
            )
        )
    for name in args.config if args.prepare else []:
        print(
            table(
                f"Preparing N tickers x {args.bars} bars with `{name}`'s features, fresh process",
                [
                    "config",
                    "N",
                    "bars",
                    "features",
                    "MiB at start (imports)",
                    "MiB with the frames",
                    "peak MiB",
                    "peak GiB",
                    "MiB held (arrays)",
                    "bytes per ticker-bar (peak - frames)",
                    "seconds",
                ],
                [prepare_memory(name, args.sets, n, args.bars) for n in args.prepare],
            )
        )
    for name in args.config if args.linear else []:
        print(
            table(
                f"The linear part's selection on N tickers' pooled training rows, `{name}`",
                ["config", "N", "rows", "lags", "peak MiB", "bytes per row", "seconds"],
                [linear_memory(name, args.sets, n, args.bars) for n in args.linear],
            )
        )


def universe_table(name: str, args, rows: list[dict]) -> str:
    model = fit_cost_model(rows)
    last = rows[-1]
    folds = args.project_refits or last["folds"]
    projected = project(model, args.project, args.bars, folds, last["train_span"])
    header = [
        "phase",
        *(f"N={r['N']} s" for r in rows),
        *(f"N={r['N']} share" for r in rows),
        "s per fold",
        "us per ticker-bar",
        "of",
        f"N={args.project} projected s",
        "projected share",
    ]
    total_p = sum(projected.values())
    body = []
    for phase in PHASES:
        totals = [sum(r["seconds"].values()) for r in rows]
        per_fold, per_bar = model[phase]
        body.append(
            [
                phase,
                *(round(r["seconds"][phase], 2) for r in rows),
                *(f"{r['seconds'][phase] / t:.0%}" for r, t in zip(rows, totals, strict=True)),
                f"{per_fold:.3g}",
                f"{per_bar * 1e6:.3g}",
                DRIVER[phase],
                f"{projected[phase]:,.0f}",
                f"{projected[phase] / total_p:.0%}",
            ]
        )
    body.append(
        [
            "total",
            *(round(sum(r["seconds"].values()), 1) for r in rows),
            *("" for _ in rows),
            "",
            "",
            "",
            f"{total_p:,.0f}",
            "",
        ]
    )
    dominant = max(projected, key=projected.get)
    quality = "; ".join(
        f"N={r['N']}: {r['folds']} folds (test_span {r['test_span']}), {r['predictions']:,} "
        f"predictions, R^2 {r['r2']:+.3f} (ridge {r['r2_ridge']:+.3f}, oracle "
        f"{r['r2_oracle']:+.3f}), peak {r['peak_mib']:,.0f} MiB"
        for r in rows
    )
    return (
        table(
            f"`{name}` walk-forward, N AR(1) tickers x {args.bars} bars, serial, seconds by "
            "phase, and the cost model",
            header,
            body,
        )
        + f"\n{quality}.\n\nCost model: each phase's seconds = a per fold + b per ticker-bar "
        "of what it grows with (panel: N x bars; trained: ticker-bars trained on, summed over "
        "the folds; predicted: N x test bars), least squares over the runs above. "
        f"At N={args.project} x {args.bars} bars "
        f"and {folds} folds it projects {total_p:,.0f} s ({total_p / 3600:.1f} h) "
        f"serially on this machine, {projected[dominant] / total_p:.0%} of it {dominant}.\n"
    )


if __name__ == "__main__":
    main()
