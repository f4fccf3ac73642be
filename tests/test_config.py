"""Config schema: typos and bad values are one-line errors naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tsconv.config import Config, load_config, validate_config
from tsconv.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["quick", "tcn", "multiscale", "wf_msft", "vol", "quantiles"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert isinstance(cfg, Config)


def test_tcn_config_is_the_seeds_model_with_a_receptive_field_that_fits_its_window():
    """The seed's TCN in spirit (8 features, 64 channels, kernel 3, dilations 1, 2, 4, ...,
    window 256), with 6 blocks instead of 8: the seed's 8 reach 1021 bars, four times the
    window, so the earliest taps would read zero padding (and tsconv would warn)."""
    from tsconv.models.registry import receptive_field
    from tsconv.recipes.prepare import window_warning

    cfg = load_config(ROOT / "configs" / "tcn.yaml")
    assert (
        len(cfg.features),
        cfg.model.channels,
        cfg.model.kernel_size,
        cfg.model.dilation_base,
        cfg.model.layers,
        cfg.window,
    ) == (8, 64, 3, 2, 6, 256)
    assert receptive_field(cfg.model) == 253 <= cfg.window
    assert window_warning(cfg, receptive_field(cfg.model)) is None
    seed = cfg.model.model_copy(update={"layers": 8})
    assert receptive_field(seed) == 1021 and window_warning(cfg, 1021) is not None


CASES = [
    ({"train": {"learning_rate": 0.1}}, "train.learning_rate: unknown key; did you mean train.lr?"),
    ({"modle": {}}, "modle: unknown key; did you mean model?"),
    (
        {"model": {"kernal_size": 3}},
        "model.kernal_size: unknown key; did you mean model.kernel_size?",
    ),
    ({"data": {"zzz": 1}}, "data.zzz: unknown key; valid keys: source, tickers"),
    ({"window": -5}, "window: Input should be greater than or equal to 2"),
    ({"window": 1}, "window: Input should be greater than or equal to 2"),
    ({"window": "long"}, "window: Input should be a valid integer"),
    (
        {"model": {"kernel_size": 0}},
        "model.kernel_size: Input should be greater than or equal to 1",
    ),
    (
        {"backtest": {"test_span": 0}},
        "backtest.test_span: Input should be greater than or equal to 1",
    ),
    (
        {"target": {"horizon": 5}, "backtest": {"gap": 2}},
        "backtest.gap=2 is smaller than target.horizon-1=4",
    ),
    ({"features": ["log_return", "rsi"]}, "features: unknown feature 'rsi'"),
    (
        {"train": {"schedule": "step"}},
        "train.schedule: Input should be 'none', 'cosine' or 'onecycle'",
    ),
    ({"data": {"source": "csv"}}, "source 'csv' needs data.path"),
    (
        {"model": {"kind": "multiscale", "causal": False, "kernels": [3, 4]}},
        "model: symmetric padding needs odd kernels",
    ),
]


@pytest.mark.parametrize("raw,message", CASES, ids=[m[:40] for _, m in CASES])
def test_config_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError) as exc:
        validate_config(raw, "x.yaml")
    assert str(exc.value).startswith("x.yaml: ")
    assert message in str(exc.value), str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "text,message",
    [
        ("a: [1, 2", "not valid YAML"),
        ("- 1\n- 2\n", "the top level must be a mapping of keys, got list"),
        ("seed: !!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
    ],
)
def test_bad_yaml(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_overrides_are_typed_by_the_schema(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {channels: 64}\n")
    overrides = [
        "model.channels=32",
        "train.epochs=3",
        "model.kernels=[3, 7]",
        "data.tickers=[IBM]",
    ]
    cfg = load_config(path, ["model.kind=multiscale", *overrides])
    assert cfg.model.channels == 32 and cfg.train.epochs == 3 and cfg.model.kernels == [3, 7]
    assert cfg.data.tickers == ["IBM"]
    with pytest.raises(ConfigError, match="train.epochs: Input should be a valid integer"):
        load_config(path, ["train.epochs=many"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["train.epochs"])
    with pytest.raises(
        ConfigError, match="model.chanels: unknown key; did you mean model.channels"
    ):
        load_config(path, ["model.chanels=3"])


def test_override_errors_name_the_set_item_not_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: 0.01\n")
    with pytest.raises(ConfigError) as bad:
        load_config(path, ["train.lr=0.1", "train.epoch=3"])
    assert str(bad.value).startswith("--set train.epoch=3: train.epoch: unknown key; did you mean")
    with pytest.raises(ConfigError) as bad:
        load_config(path, ["model.kernels=[3, -1]"])
    assert str(bad.value).startswith("--set model.kernels=[3, -1]: model.kernels")
    path.write_text("train:\n  epoch: 3\n")  # the file's own mistake still names the file
    with pytest.raises(ConfigError) as bad:
        load_config(path, ["train.lr=0.1"])
    assert str(bad.value).startswith(f"{path}: train.epoch: unknown key")


def test_data_path_outside_project_is_allowed_and_resolved(tmp_path):
    cfg = validate_config({"data": {"source": "csv", "path": str(tmp_path / ".." / "x.csv")}})
    assert cfg.data.path is not None and str(cfg.data.path).endswith("x.csv")


KEYS = st.sampled_from(
    ["seed", "window", "train", "model", "epochs", "lr", "x", "data", "features"]
)
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 300)
    | st.floats(allow_nan=True)
    | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(raw=st.dictionaries(KEYS, VALUES, max_size=4))
def test_random_dicts_give_a_config_or_a_config_error(raw):
    try:
        cfg = validate_config(raw)
    except ConfigError as exc:
        msg = str(exc)
        assert msg.startswith("config: ") and "\n" not in msg
        return
    assert isinstance(cfg, Config)


def test_shipped_configs_by_name_from_any_folder(tmp_path, monkeypatch):
    """After `pip install` there is no configs/ folder: `--config quick` finds the shipped
    file, and `tsconv config show quick > my.yaml` gives a user a file to start from."""
    from typer.testing import CliRunner

    from tsconv.cli import app

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    for name in ["quick", "tcn", "multiscale", "wf_msft"]:
        by_name = load_config(Path(name), ["train.epochs=2"])
        by_path = load_config(root / "configs" / f"{name}.yaml", ["train.epochs=2"])
        assert by_name == by_path and load_config(Path(f"{name}.yaml")) == load_config(
            root / "configs" / f"{name}.yaml"
        )
    runner = CliRunner()
    shown = runner.invoke(app, ["config", "show", "quick"])
    assert shown.exit_code == 0
    assert shown.output == (root / "configs" / "quick.yaml").read_text()  # comments and all
    (tmp_path / "my.yaml").write_text(shown.output)
    assert load_config(tmp_path / "my.yaml") == load_config(Path("quick"))
    listed = runner.invoke(app, ["config", "list"])
    assert listed.exit_code == 0
    assert [ln.split()[0] for ln in listed.output.splitlines()] == sorted(
        ["quick", "tcn", "multiscale", "wf_msft", "vol", "quantiles"]
    )
    missing = runner.invoke(app, ["backtest", "--config", "quik"])
    assert (
        missing.exit_code == 2
        and "shipped: multiscale, quantiles, quick, tcn, vol, wf_msft" in missing.output
    )
    (tmp_path / "quick.yaml").write_text("name: mine\n")  # a file here wins over the shipped one
    assert load_config(Path("quick.yaml")).name == "mine"


def test_the_top_level_configs_folder_is_the_shipped_one():
    root = Path(__file__).resolve().parents[1]
    assert (root / "configs").resolve() == (root / "tsconv" / "configs").resolve()
