"""`tsconv sweep`: the space file's errors, nested selection that never reads the holdout, luck
measures that match tsconv.selection on the trials' own returns, resume, parallel trials, and the
known answers (shipped `quick` config and `quick` space, unchanged but for data keys):

- a random walk (without costs, which every trading strategy there only loses): the best
  trial's in-selection Sharpe ratio is above 0, its deflated Sharpe ratio is not significant,
  PBO >= 0.5, and the holdout says "no edge";
- AR(1), phi 0.5: the chosen config beats the zero forecast on the holdout (DM p < 0.01).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import cache_keys
from tsconv import synthetic
from tsconv.cli import app
from tsconv.config import load_config
from tsconv.evaluate import selection
from tsconv.recipes import search_space
from tsconv.recipes.sweep import run_sweep
from tsconv.recipes.trials import holdout_start, selection_frames

runner = CliRunner()

# Small enough for seconds a trial, and with TPE past its random start so resume covers it.
SMALL = {
    "sweep": {"sampler": "tpe", "trials": 6, "startup": 2, "batch": 2, "holdout": 0.3, "seed": 3},
    # the last epoch's weights: on a random walk the linear part is the zero forecast and
    # no epoch beats it, and a forecast of exactly zero never trades (its Sharpe undefined)
    "fixed": {"train.min_steps": 40, "backtest.test_span": 500, "train.restore_best": False},
    "space": {
        "model.channels": [4, 8],
        "train.lr": {"low": 0.001, "high": 0.02, "log": True},
        "backtest.position": ["sign", "scaled"],  # both always trade: every Sharpe defined
    },
}


def write_space(folder: Path, body: dict | str) -> Path:
    path = folder / "space.yaml"
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    return path


# The serial result in less time (test_trials_in_two_processes_give_the_serial_result): the
# known-answer sweeps run their trials two at a time, 1.7x faster on 2 cores.
TWO_WORKERS = ["--workers", "2"]


def sweep_args(known_cache, series: str, space_file: str | Path, out: Path) -> list[str]:
    args = ["sweep", "--config", "quick", "--space", str(space_file), "--out", str(out)]
    for key in cache_keys(known_cache, series):
        args += ["--set", key]
    return args


def invoke(args: list[str]):
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return r


def comparable(folder: Path) -> tuple[dict, pd.DataFrame]:
    return json.loads((folder / "sweep.json").read_text()), pd.read_parquet(
        folder / "trials.parquet"
    )


# --------------------------------------------------------------------------- the space file


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "space: {model.chanels: [8]}",
            "space: model.chanels: unknown key; did you mean model.channels?",
        ),
        (
            "space: {model.channels: [8, 5000]}",
            "space: model.channels: Input should be less than or equal to 4096",
        ),
        (
            "space: {data.tickers: [[A]]}",
            "data.tickers cannot vary between trials: every trial reads the same data",
        ),
        ("space: {backtest.cost_bps: [1, 5]}", "a lower cost is not a better model"),
        ("space: {train.lr: 0.01}", "space: train.lr: give a list of choices, or low and high"),
        (
            "space: {train.lr: {low: 0.1, high: 0.2, lg: true}}",
            "train.lr: lg: unknown key; did you mean log?",
        ),
        ("space: {train.lr: {low: 0, high: 0.1, log: true}}", "a log range needs low > 0"),
        ("space: {train.lr: {low: 0.1, high: 0.01}}", "high 0.01 is below low 0.1"),
        (
            "sweep: {sampelr: tpe}\nspace: {train.lr: [0.1]}",
            "sweep.sampelr: unknown key; did you mean sweep.sampler?",
        ),
        (
            "sweep: {sampler: grid}\nspace: {train.lr: {low: 0.001, high: 0.1}}",
            "the grid sampler needs choices or a step",
        ),
        (
            "sweep: {holdout: 1.5}\nspace: {train.lr: [0.1]}",
            "sweep.holdout: a fraction must lie between 0 and 1",
        ),
        (
            "fixed: {train.epochs: 0}\nspace: {train.lr: [0.1]}",
            "fixed: train.epochs: Input should be greater than or equal to 1",
        ),
        ("spaces: {}", "spaces: unknown section; valid: sweep, fixed, space"),
    ],
)
def test_a_bad_space_file_is_one_line_naming_the_file_and_key(tmp_path, body, expected):
    path = write_space(tmp_path, body)
    out = tmp_path / "out"
    r = runner.invoke(app, ["sweep", "--config", "quick", "--space", str(path), "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"error: {path}: ") and expected in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()


def test_sweep_options_are_checked_before_anything_runs(tmp_path):
    path = write_space(tmp_path, "fixed: {data.tickers: [A]}\nspace: {train.lr: [0.1]}")
    r = runner.invoke(app, ["sweep", "--config", "quick", "--space", str(path)])
    assert r.exit_code == 2
    assert "fixed: data.tickers belongs in the base config (--config or --set)" in r.output
    r = runner.invoke(app, ["sweep", "--config", "quick", "--space", "quick", "--trials", "1"])
    assert r.exit_code == 2
    assert r.output == "error: --trials 1: must be at least 2 (a sweep selects among trials)\n"


def test_sweep_needs_a_space_and_resume_its_own_settings(tmp_path):
    r = runner.invoke(app, ["sweep", "--config", "quick"])
    assert r.exit_code == 2 and "--config and --space are required" in r.output
    r = runner.invoke(app, ["sweep", "--resume", str(tmp_path)])
    assert r.exit_code == 2 and "not an interrupted sweep" in r.output
    r = runner.invoke(app, ["sweep", "--resume", str(tmp_path), "--config", "quick"])
    assert r.exit_code == 2 and "drop --config, --space, --set and --out" in r.output


def test_space_values_grid_and_rounds():
    base = load_config(Path("quick"))
    spc = search_space.SpaceFile.model_validate(
        {
            "sweep": {"sampler": "grid"},
            "space": {
                "model.layers": search_space._as_param({"low": 2, "high": 6, "step": 2}),
                "model.dropout": search_space._as_param({"low": 0.0, "high": 0.3, "step": 0.1}),
                "model.kernels": search_space._as_param([[3, 5], [3, 5, 21]]),
            },
        }
    )
    search_space.check_against(spc, base, Path("s.yaml"))
    g = search_space.grid(spc)
    assert g["model.layers"] == [2, 4, 6]
    assert g["model.dropout"] == [0.0, 0.1, 0.2, 0.3]
    assert g["model.kernels"] == ["[3, 5]", "[3, 5, 21]"]  # Optuna stores scalars: JSON text
    assert search_space.grid_size(spc) == 24
    assert search_space.decode(spc, {"model.kernels": "[3, 5, 21]"}) == {
        "model.kernels": [3, 5, 21]
    }
    # the ends written as integers make an integer range, and stay integers when dumped
    assert yaml.safe_load(search_space.dump(spc))["space"]["model.layers"] == {
        "low": 2,
        "high": 6,
        "log": False,
        "step": 2,
    }
    # TPE: 8 random trials, then rounds of 4 proposed from the finished ones
    tpe = search_space.SpaceFile.model_validate(
        {"sweep": {"startup": 8, "batch": 4}, "space": {"train.lr": {"choices": [0.1]}}}
    )
    ends = [search_space.round_end(tpe, n, 22) for n in range(22)]
    assert ends == [8] * 8 + [12] * 4 + [16] * 4 + [20] * 4 + [22] * 2
    assert {search_space.round_end(spc, n, 24) for n in range(24)} == {24}


def _grid_space(trials: int, seed: int = 0) -> search_space.SpaceFile:
    return search_space.SpaceFile.model_validate(
        {
            "sweep": {"sampler": "grid", "trials": trials, "seed": seed},
            "space": {
                "model.channels": search_space._as_param([4, 8, 16]),
                "backtest.position": search_space._as_param(["sign", "scaled"]),
            },
        }
    )


def test_grid_trials_proposed_together_take_each_point_once():
    """All of a grid sweep's trials are proposed in one round. Optuna's GridSampler, seeded
    per trial, gave two trials the same point there (3 or 4 distinct of 6 for seeds 0-3); the
    grid's points are now given, trial n point n of an order shuffled by the seed."""
    import optuna

    from tsconv.recipes.trials import next_round

    def proposed(spc: search_space.SpaceFile) -> list[tuple]:
        study = optuna.create_study()
        next_round(study, spc, search_space.trials_to_run(spc))
        return [tuple(sorted(t.params.items())) for t in study.get_trials()]

    everything = {
        (("backtest.position", p), ("model.channels", c))
        for c in (4, 8, 16)
        for p in ("sign", "scaled")
    }
    for seed in range(4):
        points = proposed(_grid_space(6, seed))
        assert len(points) == 6 and set(points) == everything
    assert search_space.trials_to_run(_grid_space(20)) == 6
    subset = proposed(_grid_space(4, seed=1))
    assert len(set(subset)) == 4 and subset == proposed(_grid_space(4, seed=1))
    assert subset == proposed(_grid_space(6, seed=1))[:4]  # a prefix of the whole grid's order


@pytest.mark.slow
def test_a_grid_sweep_of_more_trials_than_points_runs_each_once_in_any_process(tmp_path):
    """--trials 20 on a grid of 4: one line says 4 trials run, each point once; no
    `RuntimeError: Study.stop` when the last point finishes; 2 processes give the same bytes."""
    from tests.conftest import tiny_config
    from tsconv.config import dump_yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(dump_yaml(tiny_config(backtest={"train_span": 1000, "test_span": 500})))
    space = write_space(
        tmp_path,
        {
            "sweep": {"sampler": "grid", "holdout": 0.3, "seed": 1},
            "space": {"model.channels": [4, 8], "backtest.position": ["sign", "scaled"]},
        },
    )
    results = []
    for name, extra in (("serial", []), ("par", ["--workers", "2"])):
        args = ["sweep", "--config", str(config), "--space", str(space), "--trials", "20"]
        r = invoke([*args, "--out", str(tmp_path / name), *extra])
        assert "Traceback" not in r.output
        assert r.output.count("sweep: the grid has 4 points; running 4 trials, not 20\n") == 1
        results.append(comparable(tmp_path / name))
    table = results[0][1]
    assert table["state"].eq("complete").all() and len(table) == 4
    assert len(set(zip(table["model.channels"], table["backtest.position"], strict=True))) == 4
    assert results[0][0] == results[1][0] and results[0][0]["settings"]["trials_run"] == 4
    pd.testing.assert_frame_equal(results[0][1], results[1][1])


def test_holdout_split_by_fraction_and_by_date():
    idx = pd.bdate_range("2020-01-01", periods=100)
    frames = {
        "A": pd.DataFrame({"close": 1.0}, index=idx),
        "B": pd.DataFrame({"close": 1.0}, index=idx[10:]),
    }
    assert holdout_start(frames, 0.25) == idx[75]
    assert holdout_start(frames, pd.Timestamp(idx[40]).date()) == idx[40]
    cut = selection_frames(frames, idx[75])
    assert cut["A"].index.max() == idx[74] and len(cut["B"]) == 65


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory, known_cache):
    """The SMALL sweep on a random walk through the CLI, uninterrupted, serial."""
    root = tmp_path_factory.mktemp("small")
    spc = write_space(root, SMALL)
    out = root / "sweep"
    r = invoke(sweep_args(known_cache, "random_walk", spc, out))
    return out, spc, r.output


@pytest.mark.slow
def test_sweep_writes_every_output(small_sweep):
    out, _, output = small_sweep
    for name in [
        "trials.parquet",
        "leaderboard.csv",
        "sweep.json",
        "report.html",
        "manifest.json",
        "study.db",
        "config.yaml",
        "space.yaml",
        "holdout/report.html",
    ]:
        assert (out / name).exists(), name
    assert json.loads((out / "manifest.json").read_text())["complete"]
    r, trials = comparable(out)
    assert len(trials) == 6 and set(trials["state"]) == {"complete"}
    assert {"model.channels", "train.lr", "backtest.position", "sharpe", "r2_oos"} <= set(trials)
    board = pd.read_csv(out / "leaderboard.csv")
    assert list(board["rank"]) == list(range(1, 7))
    assert board["value"].is_monotonic_decreasing
    assert r["chosen"]["trial"] == int(board["trial"].iloc[0])
    assert r["chosen"]["params"] == {k: v for k, v in board.iloc[0].items() if k in SMALL["space"]}
    assert (
        r["holdout"]["first_date"] >= r["selection"]["holdout_start"] > r["selection"]["last_date"]
    )
    html = (out / "report.html").read_text()
    for anchor in ["verdict", "holdout", "luck", "leaderboard", "settings"]:
        assert f"id='{anchor}'" in html, anchor
    assert "data:image/png;base64," in html and "holdout/report.html" in html
    assert "best 5 of 6 trials" in output and r["verdict"][:40] in " ".join(output.split())
    best = r["chosen"]["trial"]
    assert f"Chose trial #{best} of 6 (trials/{best:03d}: " in r["verdict"]
    # each test says which way it went, not only its p-value
    assert r["verdict"].count(", p = ") == 3 and (
        "lower, p" in r["verdict"] or "higher, p" in r["verdict"]
    )


@pytest.mark.slow
def test_a_trial_folder_resumes_only_through_its_sweep(small_sweep):
    """Resumed on its own a trial would read the whole data, and test on the holdout."""
    out, _, _ = small_sweep
    trial = out / "trials" / "000"
    r = runner.invoke(app, ["backtest", "--resume", str(trial)])
    assert r.exit_code == 2
    assert f"is a trial of the sweep in {out.resolve()}" in r.output
    assert f"tsconv sweep --resume {out.resolve()}" in " ".join(r.output.split())


@pytest.mark.slow
def test_a_finished_sweep_is_not_resumed(small_sweep):
    """It would run no trial, and write every output again under a new manifest."""
    out, _, _ = small_sweep
    before = (out / "manifest.json").read_bytes()
    r = runner.invoke(app, ["sweep", "--resume", str(out)])
    assert r.exit_code == 2 and "this sweep already finished; nothing to resume" in r.output
    assert (out / "manifest.json").read_bytes() == before


@pytest.mark.slow
def test_luck_measures_are_those_of_the_trials_own_returns(small_sweep):
    out, _, _ = small_sweep
    r, trials = comparable(out)
    nets = pd.DataFrame(
        {
            n: pd.read_parquet(out / "trials" / f"{n:03d}" / "returns.parquet").set_index("date")[
                "prediction"
            ]
            for n in trials["trial"]
        }
    ).dropna()
    per_bar = selection.sharpe_columns(nets.to_numpy())
    np.testing.assert_allclose(
        per_bar * np.sqrt(252), trials["sharpe"].fillna(0), rtol=1e-9, atol=1e-12
    )
    # trials with identical returns count once among the chances the best had to be lucky
    distinct = nets.T.drop_duplicates().T
    dsr = selection.deflated_sharpe(
        nets[r["chosen"]["trial"]].to_numpy(), selection.sharpe_columns(distinct.to_numpy())
    )
    assert r["deflated_sharpe"]["dsr"] == pytest.approx(dsr["dsr"])
    assert r["deflated_sharpe"]["trials"] == distinct.shape[1] == r["trials"]["distinct"]
    folds = [pd.read_csv(out / "trials" / f"{n:03d}" / "folds.csv") for n in trials["trial"]]
    assert r["trials"]["folds"] == sum(map(len, folds))
    assert r["trials"]["folds_kept_start"] == sum(int((f["best_epoch"] == 0).sum()) for f in folds)
    pbo = selection.pbo_cscv(nets.to_numpy(), 16)
    assert r["pbo"]["pbo"] == pytest.approx(pbo["pbo"]) and r["pbo"]["splits"] == 12870


@pytest.mark.slow
def test_the_holdout_is_never_read_before_selection_ends(tmp_path):
    """Perturb every bar from the first holdout date on: every trial's result is unchanged,
    and the holdout's (which reads those bars) is not."""
    frames, _ = synthetic.case_frames("ar1")
    cut = holdout_start(frames, 0.3)
    rng = np.random.default_rng(7)
    perturbed = {}
    for t, f in frames.items():
        g = f.copy()
        later = g.index >= cut
        g.loc[later, ["open", "high", "low", "close", "adj_close"]] *= np.exp(
            rng.normal(0, 0.05, later.sum())
        )[:, None]
        g.loc[later, "high"] = g.loc[later, ["open", "high", "low", "close", "adj_close"]].max(
            axis=1
        )
        g.loc[later, "low"] = g.loc[later, ["open", "high", "low", "close", "adj_close"]].min(
            axis=1
        )
        perturbed[t] = g
    base = load_config(Path("quick"), ["data.tickers=[AR10]"])
    spc = search_space.SpaceFile.model_validate(
        {
            **SMALL,
            "sweep": {**SMALL["sweep"], "trials": 3},
            "space": {k: search_space._as_param(v) for k, v in SMALL["space"].items()},
        }
    )
    a = run_sweep(base, spc, tmp_path / "a", frames=frames)
    b = run_sweep(base, spc, tmp_path / "b", frames=perturbed)
    ta, tb = (
        pd.read_parquet(tmp_path / "a" / "trials.parquet"),
        pd.read_parquet(tmp_path / "b" / "trials.parquet"),
    )
    pd.testing.assert_frame_equal(ta, tb)
    for n in ta["trial"]:
        for name in ["predictions.parquet", "returns.parquet"]:
            pa = tmp_path / "a" / "trials" / f"{n:03d}" / name
            assert pa.read_bytes() == (tmp_path / "b" / "trials" / f"{n:03d}" / name).read_bytes()
    assert a["deflated_sharpe"] == b["deflated_sharpe"] and a["pbo"] == b["pbo"]
    assert a["holdout"]["r2_oos"] != b["holdout"]["r2_oos"]


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_to_the_same_result(tmp_path, small_sweep, known_cache):
    reference, spc_path, _ = small_sweep
    base = load_config(Path("quick"), cache_keys(known_cache, "random_walk"))
    spc = search_space.read_space(spc_path, base)

    def stop(done, total, row):
        if done == 3:  # mid-round: trial 3 was proposed with trial 2 and is still to run
            raise KeyboardInterrupt

    out = tmp_path / "sweep"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(base, spc, out, on_trial=stop)
    assert not (out / "sweep.json").exists()
    assert len(list((out / "trials").glob("*/metrics.json"))) == 3  # finished trials are kept
    r = runner.invoke(
        app, ["sweep", "--config", "quick", "--space", str(spc_path), "--out", str(out)]
    )
    assert r.exit_code == 2 and "already holds an unfinished sweep" in r.output
    invoke(["sweep", "--resume", str(out)])
    got, want = comparable(out), comparable(reference)
    assert got[0] == want[0]
    pd.testing.assert_frame_equal(got[1], want[1])


@pytest.mark.slow
def test_trials_in_two_processes_give_the_serial_result(tmp_path, small_sweep, known_cache):
    reference, spc_path, _ = small_sweep
    out = tmp_path / "par"
    invoke([*sweep_args(known_cache, "random_walk", spc_path, out), "--workers", "2"])
    assert json.loads((out / "timing.json").read_text())["workers"] == 2
    got, want = comparable(out), comparable(reference)
    assert got[0] == want[0]
    pd.testing.assert_frame_equal(got[1], want[1])


@pytest.mark.slow
def test_trials_as_ray_tasks_give_the_serial_result(
    tmp_path, small_sweep, known_cache, monkeypatch
):
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    pytest.importorskip("ray")
    reference, spc_path, _ = small_sweep
    out = tmp_path / "ray"
    invoke([*sweep_args(known_cache, "random_walk", spc_path, out), "--executor", "ray"])
    got, want = comparable(out), comparable(reference)
    assert got[0] == want[0]
    pd.testing.assert_frame_equal(got[1], want[1])


# --------------------------------------------------------------------------- known answers


@pytest.mark.slow
def test_on_a_random_walk_the_best_trial_is_luck(tmp_path, known_cache):
    """At zero cost: on a random walk every strategy's costs are a sure loss, so at the
    config's 5 bps each trading trial's Sharpe ratio is negative and the sweep rightly picks
    one that stays flat (Sharpe 0). Without costs the trials scatter around zero, and the
    luckiest looks good until it meets the holdout. The trials share the linear part's
    forecast (chosen from the data, not the trial's parameters; every fold here keeps it), so
    they are only a few distinct strategies, and the deflated Sharpe ratio of the best is close
    to one strategy's own test: at 5% it calls a lucky one significant on one draw in twenty.
    Overfitting shows in the PBO and the holdout: with no edge the
    PBO is about one half on average and varies from draw to draw (0.37 on this one since the
    linear part's term groups got their own penalty), where a real edge keeps it near 0."""
    out = tmp_path / "rw"
    rw = [*sweep_args(known_cache, "random_walk", "quick", out), "--set", "backtest.cost_bps=0"]
    invoke([*rw, *TWO_WORKERS])
    r, trials = comparable(out)
    assert r["trials"]["complete"] >= 20
    assert trials["sharpe"].max() > 0 and r["chosen"]["sharpe"] > 0
    assert r["deflated_sharpe"]["trials"] == r["trials"]["distinct"] < r["trials"]["complete"]
    assert r["pbo"]["pbo"] > 0.25
    assert r["holdout"]["verdict"] == "no edge"
    assert "NO EDGE" in r["verdict"]


@pytest.mark.slow
def test_on_ar1_the_chosen_config_beats_zero_on_the_holdout(tmp_path, known_cache):
    out = tmp_path / "ar1"
    invoke([*sweep_args(known_cache, "ar1", "quick", out), *TWO_WORKERS])
    r, _ = comparable(out)
    dm = r["holdout"]["dm_vs_zero"]
    assert dm["stat"] < 0 and dm["p_value"] < 0.01, dm
    assert r["holdout"]["forecast_edge"]
