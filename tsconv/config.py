"""Typed configuration: the schema, YAML loading and dotted `--set key=value` overrides.

Every key is declared here with its type, range and default. Unknown keys are errors that name the
key path and suggest the closest valid key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from tsconv.errors import ConfigError
from tsconv.feature_names import check_feature_names
from tsconv.models.registry import FILE_KEYS, MODEL_KINDS, ModelConfig, TCNConfig


class _Section(BaseModel):
    # inf and NaN are refused everywhere: `cost_bps=inf` or `weight_decay=inf` are typos, and
    # they would run to a NaN loss or a meaningless report instead of stopping here
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataConfig(_Section):
    source: Literal["sample", "cache", "csv"] = "sample"
    tickers: list[str] = Field(default_factory=lambda: ["MSFT", "AAPL"], min_length=1)
    dir: Path = Path("data")
    path: Path | None = None
    start: dt.date | None = None
    end: dt.date | None = None
    price: Literal["adj_close", "close"] = "adj_close"
    nan_policy: Literal["drop", "ffill", "error"] = "ffill"
    fill_limit: int = Field(5, ge=0)
    columns_known_at: Literal["close", "next_open"] = Field(
        "next_open",
        description="when a user column (`col:NAME` feature) dated t is known: at t's close, "
        "or only from the next bar on",
    )

    @model_validator(mode="after")
    def _csv_is_one_named_file(self) -> DataConfig:
        if self.source != "csv":
            return self
        if self.path is None:
            raise ValueError("source 'csv' needs data.path")
        if "tickers" not in self.model_fields_set:
            self.tickers = [self.path.stem]  # written out, so a saved config reloads as it was
        if len(self.tickers) != 1:
            raise ValueError(
                f"source 'csv' reads one ticker from data.path; name it with one ticker, e.g. "
                f"data.tickers=[{self.path.stem.upper()}] (got {self.tickers}); for several "
                "files, import each with `tsconv fetch --from-csv FILE --ticker NAME` and set "
                "data.source=cache"
            )
        return self


class CovariateConfig(_Section):
    """A series shared by every ticker (an index, a rate, a column of one's own), turned into
    features on its own dates and aligned to each ticker's by `known_at` (tsconv.covariates)."""

    ticker: str | None = Field(None, description="a ticker from data.source (sample or cache)")
    file: Path | None = Field(None, description="a CSV/parquet file: a date and numeric columns")
    # None for a file, so that a saved config (every key written out) reloads as it was
    features: list[str] | None = Field(
        None, min_length=1, description="ticker: its features (default [log_return])"
    )
    columns: list[str] | None = Field(None, description="file: the numeric columns to use")
    name: str | None = Field(None, description="prefix of its features (default: ticker/file)")
    lag: int = Field(0, ge=0, le=252, description="bars of its own calendar to delay it by")
    known_at: Literal["close", "next_open"] = Field(
        "next_open",
        description="a value dated d is usable on a ticker's bar t if d < t, or also if d == t "
        "with close",
    )
    fill_limit: int = Field(
        5, ge=0, description="bars a ticker may reuse one value across holidays and gaps"
    )

    @model_validator(mode="after")
    def _one_source(self) -> CovariateConfig:
        if (self.ticker is None) == (self.file is None):
            raise ValueError("give exactly one of ticker or file")
        if self.file is not None and self.features is not None:
            raise ValueError("features are for a ticker; a file's values are used as they are")
        if self.ticker is not None and self.columns is not None:
            raise ValueError("columns are for a file; a ticker takes features")
        if self.file is not None and not self.columns:
            raise ValueError("a file covariate names its columns, e.g. columns: [vix]")
        if self.ticker is not None:
            if self.features is None:
                self.features = ["log_return"]
            if any(f.startswith("col:") for f in self.features):
                raise ValueError("a ticker covariate takes OHLCV features, not col:")
            check_feature_names(self.features)
        return self

    @property
    def label(self) -> str:
        return self.name or (self.ticker.upper() if self.ticker else Path(self.file).stem)


class TargetConfig(_Section):
    """What is forecast (tsconv.data.targets): the next `horizon` bars' log return (`return`),
    their variance measured by `proxy` (`volatility`), or the return's quantiles at `levels`
    (`quantiles`). The risk keys are left out of a saved `return` config, so configs written
    before they existed keep their bytes."""

    horizon: int = Field(1, ge=1, le=252)
    kind: Literal["return", "volatility", "quantiles"] = "return"
    proxy: Literal["squared_return", "parkinson", "garman_klass"] = Field(
        "garman_klass",
        description="the realised variance a volatility forecast is scored against: squared "
        "return, or a range estimator from the bar's OHLC (far less noisy)",
    )
    levels: list[float] = Field(
        default_factory=lambda: [0.01, 0.05, 0.5, 0.95, 0.99],
        min_length=1,
        description="quantiles: the probability levels forecast",
    )

    @field_validator("levels")
    @classmethod
    def _levels_in_unit_interval(cls, levels: list[float]) -> list[float]:
        if any(not 0 < q < 1 for q in levels):
            raise ValueError(f"every level must be between 0 and 1 (exclusive), got {levels}")
        if sorted(set(levels)) != list(levels):
            raise ValueError(f"levels must be increasing and distinct, got {levels}")
        return levels

    @model_serializer(mode="wrap")
    def _return_keys_only(self, handler: Callable) -> dict[str, Any]:
        out = handler(self)
        if self.kind == "return":
            for key in ("kind", "proxy", "levels"):
                out.pop(key, None)
        elif self.kind == "volatility":
            out.pop("levels", None)
        return out


class TrainConfig(_Section):
    epochs: int = Field(30, ge=1)
    min_steps: int = Field(
        400, ge=0, description="optimizer steps a fit takes at least, whatever the data's length"
    )
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["none", "cosine", "onecycle"] = "cosine"
    clip_grad: float = Field(1.0, ge=0, description="0 turns clipping off")
    patience: int = Field(5, ge=0, description="0 turns early stopping off")
    restore_best: bool = Field(
        True, description="end with the best weights on validation, the starting ones included"
    )
    val_fraction: float = Field(0.2, gt=0, lt=1)
    val_gap: int | None = Field(None, ge=0, description="bars between train and validation")
    targets: Literal["all", "last"] = "all"
    burn_in: int | None = Field(None, ge=0)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    amp: bool = False
    compile: bool = False
    cuda_graphs: bool = Field(True, description="replay each full batch's step as a CUDA graph")
    threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads of every training process; unset: the cores other "
        "processes leave free (1-minute load average), shared out among the workers",
    )
    ensemble: int = Field(
        1,
        ge=1,
        le=64,
        description="models trained from different seeds on the same data, predictions averaged",
    )
    grouped_members: bool = Field(
        False,
        description="train the ensemble's members together as one grouped model (on a GPU, "
        "every member's step in one launch); equal to separate members up to float rounding, "
        "dropout masks drawn from one stream",
    )


# Marks a key that says how a run is executed, not what it computes: two runs that differ only
# in such keys give byte-identical results, so a resume may change them, the report leaves them
# out and a sweep's trials cannot vary them (EXECUTION_KEYS lists them).
EXECUTION = {"execution": True}


class BacktestConfig(_Section):
    scheme: Literal["expanding", "sliding"] = "expanding"
    train_span: int = Field(1000, ge=2)
    test_span: int = Field(63, ge=1)
    gap: int = Field(0, ge=0)
    retrain: Literal["full", "warm"] = "full"
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1,
        description="processes running `retrain: full` folds at once; auto: the cores",
        json_schema_extra=EXECUTION,
    )
    executor: Literal["local", "ray"] = Field(
        "local",
        description="where full-retrain folds run: this machine, or Ray tasks",
        json_schema_extra=EXECUTION,
    )
    ray_address: str | None = Field(
        None,
        description="an existing Ray cluster (`auto`, `ray://host:10001`); unset: local",
        json_schema_extra=EXECUTION,
    )
    warm_epochs: int | None = Field(None, ge=1)
    start: dt.date | None = None
    end: dt.date | None = None
    # threshold by default: trading a forecast smaller than the cost by its sign churns and
    # loses the cost on every flip (on a random walk, 12% a year at 5 bps)
    position: Literal["sign", "scaled", "threshold"] = "threshold"
    target_vol: float | None = Field(
        None, gt=0, le=10, description="annualised volatility each instrument is scaled to"
    )
    cost_bps: float = Field(5.0, ge=0)
    portfolio: Literal["per_ticker", "long_short", "long_only"] = Field(
        "per_ticker", description="trade each ticker on its own, or rank them every bar"
    )
    top_k: int | None = Field(None, ge=1, description="tickers in each leg; unset: `quantile`")
    quantile: float = Field(0.2, gt=0, le=0.5, description="fraction of tickers in each leg")
    weighting: Literal["equal", "rank"] = "equal"
    buckets: int = Field(5, ge=2, le=20, description="forecast buckets of the quantile table")
    periods_per_year: int | None = Field(
        None, ge=1, description="bars per year for annualising; unset: inferred from the dates"
    )
    ar_lags: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="ridge baseline: at most this many bars; unset: the model's reach",
    )
    ridge_alpha: float | None = Field(
        None,
        gt=0,
        description="ridge baseline's penalty; unset: chosen per fold (cross-validation over time)",
    )
    ridge_baseline: Literal["per_ticker", "pooled"] = Field(
        "per_ticker",
        description="the ridge baseline fitted on each ticker's training rows, or once a fold "
        "on every ticker's (a universe's linear benchmark: one fit a fold, not one a ticker)",
    )
    trailing_window: int = Field(252, ge=1)


class Config(_Section):
    seed: int = 0
    name: str | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    features: list[str] = Field(
        default_factory=lambda: [
            "log_return",
            "oc_return",
            "hl_range",
            "close_loc",
            "log_volume_chg",
            "vol_20",
            "volume_z_20",
            "mom_5",
        ],
        min_length=1,
    )
    covariates: list[CovariateConfig] = Field(default_factory=list)
    target: TargetConfig = Field(default_factory=TargetConfig)
    window: int = Field(256, ge=2)
    model: ModelConfig = Field(default_factory=TCNConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    backtest: BacktestConfig = Field(default_factory=BacktestConfig)

    @field_validator("features")
    @classmethod
    def _known_features(cls, names: list[str]) -> list[str]:
        check_feature_names(names)
        return names

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        h = self.target.horizon
        if self.backtest.gap < h - 1:
            raise ValueError(
                f"backtest.gap={self.backtest.gap} is smaller than target.horizon-1={h - 1}: "
                "training targets would overlap the test period"
            )
        if self.train.val_gap is not None and self.train.val_gap < h - 1:
            raise ValueError(
                f"train.val_gap={self.train.val_gap} must be >= target.horizon-1={h - 1}"
            )
        if self.train.burn_in is not None and self.train.burn_in >= self.window:
            raise ValueError(f"train.burn_in={self.train.burn_in} must be < window={self.window}")
        labels = [c.label for c in self.covariates]
        if len(set(labels)) < len(labels):
            raise ValueError(f"covariates: two share the name {labels}; give each a name")
        return self


# --------------------------------------------------------------------------- loading


# Names other tools use for our keys: a typo check by spelling alone would miss these.
_SYNONYMS = {
    "learning_rate": "lr",
    "n_epochs": "epochs",
    "num_epochs": "epochs",
    "max_epochs": "epochs",
    "batch": "batch_size",
    "lr_schedule": "schedule",
    "scheduler": "schedule",
    "grad_clip": "clip_grad",
    "gradient_clip_val": "clip_grad",
    "early_stopping": "patience",
    "hidden": "channels",
    "hidden_channels": "channels",
    "num_channels": "channel_list",
    "num_layers": "layers",
    "n_layers": "layers",
    "blocks": "layers",
    "kernel": "kernel_size",
    "seq_len": "window",
    "lookback": "window",
    "input_chunk_length": "window",
    "symbols": "tickers",
    "ticker": "tickers",
    "cost": "cost_bps",
    "fee_bps": "cost_bps",
}


def _key_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """An error's location as config keys: without pydantic's validator names, and without the
    model kind it puts after `model` (("model", "tcn", "layers") -> ("model", "layers"))."""
    loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
    if len(loc) > 1 and loc[0] == "model" and loc[1] in MODEL_KINDS:
        loc = loc[:1] + loc[2:]
    return loc


def _valid_keys(section: tuple[Any, ...]) -> list[str] | None:
    """The keys the section at key path `section` takes."""
    if section == ("model",):
        return list(FILE_KEYS)  # every kind's keys (tsconv.models.registry)
    model: Any = Config
    for part in section:
        if isinstance(part, int):  # an item of a list: the list's item type
            model = next(iter(typing.get_args(model)), None)
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = field.annotation
    return (
        list(model.model_fields)
        if isinstance(model, type) and issubclass(model, BaseModel)
        else None
    )


def format_error(err: dict[str, Any]) -> str:
    loc = _key_path(err["loc"])
    key = ".".join(str(p) for p in loc) or "config"
    if err["type"] == "union_tag_invalid" and loc == ("model",):
        kinds = ", ".join(MODEL_KINDS)
        return f"model.kind: unknown kind {err['ctx']['tag']!r}; valid kinds: {kinds}"
    if err["type"] == "extra_forbidden":
        fields = _valid_keys(loc[:-1])
        hint = ""
        if fields is not None:
            synonym = _SYNONYMS.get(str(loc[-1]).lower())
            close = (
                [synonym]
                if synonym in fields
                else difflib.get_close_matches(str(loc[-1]), fields, n=1)
            )
            if close:
                hint = f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?"
            else:
                hint = f"; valid keys: {', '.join(fields)}"
        return f"{key}: unknown key{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] not in ("value_error", "missing"):
        msg = f"{msg} (got {err.get('input')!r})"
    return f"{key}: {msg}"


def validate_config(
    raw: dict[str, Any], source: str = "config", overrides: list[str] | None = None
) -> Config:
    """The typed config; an error names the file, or the `--set` item, the bad key came from."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of keys, got {type(raw).__name__}"
        )
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        first = format_error(errors[0])
        bad_key = first.split(":", 1)[0]
        for item in reversed(overrides or []):
            key = item.partition("=")[0].strip()
            if bad_key == key or bad_key.startswith(key + "."):
                source = f"--set {item}"
                break
        raise ConfigError(f"{source}: {first}{more}") from None


MAX_YAML_BYTES = 1 << 20  # a config is a few kB; this bounds a wrong path's read


def read_yaml(path: Path, what: str = "config") -> dict[str, Any]:
    path = Path(path)
    try:
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path}: not a regular file; give a {what} file")
        if path.exists() and path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; a {what} file is small YAML")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except ValueError as exc:  # not a YAMLError: a date like 2018-31-01
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: not valid YAML: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}"
        )
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings; values are parsed as YAML scalars/lists and typed by the schema."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=3")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except (yaml.YAMLError, ValueError):  # ValueError: a date like 2018-31-01
            parsed = value  # the schema then says what is wrong with it
        set_dotted(out, key, parsed, f"--set {key}")
    return out


def set_dotted(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    """raw[a][b][c] = value for key "a.b.c", creating sections as needed (in place)."""
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def shipped_configs(folder: str = "") -> dict[str, Path]:
    """The configs that ship with tsconv, by name (`quick`, `tcn`, ...); `folder="spaces"`:
    the sweep spaces."""
    from importlib import resources

    root = Path(str(resources.files("tsconv") / "configs")) / folder
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}


def resolve_config_path(path: Path, folder: str = "", what: str = "config") -> Path:
    """`path` itself, or, for a bare name that is no file here (`quick`, `quick.yaml`), the
    shipped config of that name: after `pip install` there is no configs/ folder to point at."""
    path = Path(path)
    if path.exists() or len(path.parts) > 1 or path.suffix not in ("", ".yaml"):
        return path
    shipped = shipped_configs(folder)
    if path.stem in shipped:
        return shipped[path.stem]
    if path.suffix == "":
        raise ConfigError(
            f"{path}: no such {what} file or shipped {what} (shipped: {', '.join(shipped)})"
        )
    return path


def load_config(path: Path | None, overrides: list[str] | None = None) -> Config:
    path = resolve_config_path(path) if path is not None else None
    raw = read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return validate_config(raw, str(path) if path is not None else "config", overrides)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


EXECUTION_KEYS = tuple(
    f"backtest.{name}"
    for name, field in BacktestConfig.model_fields.items()
    if field.json_schema_extra == EXECUTION
)


def execution_option(key: str) -> str:
    """The command-line option that sets the execution key `key`: backtest.ray_address is
    --ray-address."""
    return "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def execution_settings(cfg: Config) -> dict[str, Any]:
    """`cfg`'s execution keys and their values."""
    raw = config_to_dict(cfg)
    return {key: raw[key.split(".")[0]][key.split(".")[1]] for key in EXECUTION_KEYS}


def results_config(cfg: Config) -> dict[str, Any]:
    """The resolved config without EXECUTION_KEYS."""
    out = config_to_dict(cfg)
    for key in EXECUTION_KEYS:
        section, name = key.split(".")
        out[section].pop(name, None)
    return out


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
