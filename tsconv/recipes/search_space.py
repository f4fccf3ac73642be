"""A sweep's search space file: which config keys vary over which values, and how to search.

    sweep:   {sampler: tpe, trials: 20, holdout: 0.3, objective: sharpe, seed: 0}
    fixed:   {train.min_steps: 80}                    # set in every trial
    space:
      model.channels: [8, 16, 32]                     # choices
      model.layers: {low: 2, high: 4}                 # integers, both ends included
      train.lr: {low: 0.001, high: 0.02, log: true}   # floats, sampled on a log scale
      model.dropout: {low: 0.0, high: 0.5, step: 0.1}

Every key, choice and range end is checked against the config schema before a trial runs, with
the config's own errors ("did you mean"). Keys that would change the data, the test dates or
the costs are refused: trials must be comparable bar for bar, and a lower cost is not a better
model.
"""

from __future__ import annotations

import datetime as dt
import difflib
import itertools
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from tsconv.config import (
    EXECUTION_KEYS,
    Config,
    config_to_dict,
    execution_option,
    format_error,
    read_yaml,
    resolve_config_path,
    set_dotted,
    validate_config,
)
from tsconv.errors import ConfigError
from tsconv.evaluate.sweep_summary import OBJECTIVES

# What trials may not vary, and why.
FORBIDDEN = {
    "data": "every trial reads the same data",
    "covariates": "every trial reads the same data",
    "name": "it names the run, not the model",
    "target": "every trial is scored against the same realised values",
    "backtest.train_span": "it moves the test dates, and trials are compared bar for bar",
    "backtest.gap": "it moves the test dates, and trials are compared bar for bar",
    "backtest.start": "it moves the test dates, and trials are compared bar for bar",
    "backtest.end": "it moves the test dates, and trials are compared bar for bar",
    "backtest.cost_bps": "a lower cost is not a better model",
    "backtest.periods_per_year": "it rescales the Sharpe ratios being compared",
    **{key: f"it says how a run executes; use {execution_option(key)}" for key in EXECUTION_KEYS},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SweepSettings(_Strict):
    sampler: Literal["grid", "random", "tpe"] = "tpe"
    trials: int = Field(20, ge=2, le=100_000)
    holdout: float | dt.date = Field(
        0.25, description="the last fraction of dates, or the first holdout date"
    )
    objective: Literal["sharpe", "r2_oos", "qlike", "pinball"] = Field(
        "sharpe",
        description="a return target's is maximised: the net Sharpe ratio, or R^2 against the "
        "zero forecast; a risk target's minimised: QLIKE (volatility), the mean pinball loss "
        "over the levels (quantiles), each a risk target's default",
    )
    seed: int = 0
    startup: int = Field(10, ge=1, description="tpe: random trials before it models the rest")
    batch: int = Field(4, ge=1, description="tpe: trials proposed at once, from those finished")
    blocks: int = Field(16, ge=2, le=24, description="CSCV blocks of the PBO estimate (even)")

    @field_validator("holdout")
    @classmethod
    def _fraction(cls, value: float | dt.date) -> float | dt.date:
        if isinstance(value, float) and not 0 < value < 1:
            raise ValueError(f"a fraction must lie between 0 and 1, got {value}")
        return value

    @field_validator("blocks")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError(f"must be even, got {value}")
        return value


class Range(_Strict):
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)
    integer: bool = False  # set from the YAML: both ends (and the step) written as integers

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.high < self.low:
            raise ValueError(f"high {self.high:g} is below low {self.low:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low:g}")
        if self.log and self.step is not None and not self.integer:
            raise ValueError("a float range takes log or step, not both")
        return self


class Choices(_Strict):
    choices: list[Any] = Field(min_length=1)


def _kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "choices" if "choices" in value else "range" if "low" in value else None
    return (
        "choices" if isinstance(value, Choices) else "range" if isinstance(value, Range) else None
    )


Param = Annotated[
    Annotated[Range, Tag("range")] | Annotated[Choices, Tag("choices")],
    Discriminator(_kind),
]


class SpaceFile(_Strict):
    sweep: SweepSettings = Field(default_factory=SweepSettings)
    fixed: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Param] = Field(min_length=1)


def _as_param(value: Any) -> Any:
    """The YAML forms of a parameter, as the model's: a list is its choices, a mapping with
    integer ends an integer range."""
    if isinstance(value, list):
        return {"choices": value}
    if isinstance(value, dict) and "low" in value:
        ends = [value.get("low"), value.get("high"), value.get("step", 1)]
        integer = all(isinstance(v, int) and not isinstance(v, bool) for v in ends)
        return {**value, "integer": integer}
    return value


def _error(path: Path, exc: ValidationError) -> ConfigError:
    errors = exc.errors()  # a misspelt section first: it explains the missing one
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(p for p in err["loc"] if p not in ("range", "choices"))
    if loc == ("space",) and err["type"] == "missing":
        return ConfigError(
            f"{path}: space: missing: the config keys to vary, e.g. model.channels: [8, 16]"
        )
    if err["type"] == "extra_forbidden" and len(loc) == 1:
        return ConfigError(f"{path}: {loc[0]}: unknown section; valid: sweep, fixed, space")
    if err["type"] == "extra_forbidden" and loc[0] == "sweep":
        close = difflib.get_close_matches(str(loc[-1]), list(SweepSettings.model_fields), n=1)
        hint = f"did you mean sweep.{close[0]}?" if close else ", ".join(SweepSettings.model_fields)
        return ConfigError(f"{path}: sweep.{loc[-1]}: unknown key; {hint}")
    if loc[0] == "space" and len(loc) == 2 and err["type"] == "union_tag_not_found":
        return ConfigError(
            f"{path}: space: {loc[1]}: give a list of choices, or low and high (and log or "
            f"step), got {err.get('input')!r}"
        )
    if loc[0] == "space" and len(loc) == 3 and err["type"] == "extra_forbidden":
        fields = ["low", "high", "log", "step", "choices"]
        close = difflib.get_close_matches(str(loc[2]), fields, n=1)
        hint = f"did you mean {close[0]}?" if close else f"valid: {', '.join(fields)}"
        if loc[2] in fields:
            hint = "give choices or a range (low, high, log, step), not both"
        text = f"space: {loc[1]}: {loc[2]}: unknown key; {hint}"
    elif loc[0] == "space" and len(loc) == 3:  # space: key: field
        text = f"space: {loc[1]}: {format_error({**err, 'loc': (loc[2],)})}"
    else:
        text = format_error({**err, "loc": loc}).replace("space.", "space: ", 1)
    return ConfigError(f"{path}: {text}")


def read_space(path: Path, base: Config, trials: int | None = None) -> SpaceFile:
    """The validated space file; `trials` (the --trials option) replaces sweep.trials."""
    path = resolve_space_path(path)
    raw = read_yaml(path, "space")
    _default_objective(raw, base)
    if trials is not None:
        raw.setdefault("sweep", {})
        if isinstance(raw["sweep"], dict):
            raw["sweep"]["trials"] = trials
    if isinstance(raw.get("space"), dict):
        raw["space"] = {k: _as_param(v) for k, v in raw["space"].items()}
    try:
        space = SpaceFile.model_validate(raw)
    except ValidationError as exc:
        raise _error(path, exc) from None
    check_against(space, base, path)
    check_objective(space, base, path)
    return space


def _default_objective(raw: dict[str, Any], base: Config) -> None:
    """A risk target's sweep selects on its loss unless the file names an objective."""
    sweep = raw.get("sweep", {})
    if base.target.kind != "return" and isinstance(sweep, dict) and "objective" not in sweep:
        raw["sweep"] = {**sweep, "objective": OBJECTIVES[base.target.kind][0]}


def check_objective(space: SpaceFile, base: Config, path: Path) -> None:
    kind, objective = base.target.kind, space.sweep.objective
    if objective not in OBJECTIVES[kind]:
        raise ConfigError(
            f"{path}: sweep.objective: {objective} does not score a {kind} forecast; "
            f"use {' or '.join(OBJECTIVES[kind])} (target.kind: {kind})"
        )


def check_against(space: SpaceFile, base: Config, path: Path) -> None:
    """Every fixed value, every choice and both ends of every range, each set alone on the base
    config, must make a valid config; no key may be one that trials cannot vary."""
    for section, keys in [("fixed", space.fixed), ("space", space.space)]:
        for key in keys:
            top = key.split(".")[0]
            reason = FORBIDDEN.get(key) or FORBIDDEN.get(top)
            if reason and section == "fixed":
                raise ConfigError(
                    f"{path}: fixed: {key} belongs in the base config (--config or --set), "
                    f"not the space file: {reason}"
                )
            if reason:
                raise ConfigError(f"{path}: space: {key} cannot vary between trials: {reason}")
    fixed = with_values(base, space.fixed, f"{path}: fixed")
    for key, param in space.space.items():
        for value in candidates(param):
            with_values(fixed, {key: value}, f"{path}: space")
    if space.sweep.sampler == "grid":
        grid(space, path)


def candidates(param: Range | Choices) -> list[Any]:
    if isinstance(param, Choices):
        return param.choices
    ends = [param.low, param.high]
    return [int(v) for v in ends] if param.integer else ends


def with_values(cfg: Config, values: dict[str, Any], source: str) -> Config:
    """`cfg` with dotted keys set to values, validated; an error names `source`."""
    raw = config_to_dict(cfg)
    for key, value in values.items():
        set_dotted(raw, key, value, source)
    return validate_config(raw, source)


# --------------------------------------------------------------------------- Optuna


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _encoded(choices: list[Any]) -> bool:
    """Whether choices are stored as JSON text: Optuna takes scalars only, and a parquet column
    one type only."""
    kinds = {type(c) for c in choices if c is not None}
    return not all(_scalar(c) for c in choices) or len(kinds) > 1


def distributions(space: SpaceFile) -> dict[str, Any]:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out = {}
    for key, p in space.space.items():
        if isinstance(p, Choices):
            values = [json.dumps(c) for c in p.choices] if _encoded(p.choices) else p.choices
            out[key] = CategoricalDistribution(values)
        elif p.integer:
            out[key] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[key] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def grid(space: SpaceFile, path: Path | str = "space") -> dict[str, list[Any]]:
    """Every parameter's values on the grid sampler's grid."""
    out = {}
    for key, p in space.space.items():
        if isinstance(p, Choices):
            out[key] = [json.dumps(c) for c in p.choices] if _encoded(p.choices) else p.choices
        elif p.integer:
            out[key] = list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
        elif p.step is None:
            raise ConfigError(f"{path}: space: {key}: the grid sampler needs choices or a step")
        else:
            n = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
            out[key] = [round(float(v), 12) for v in p.low + p.step * np.arange(n)]
    return out


def grid_size(space: SpaceFile) -> int:
    return math.prod(len(v) for v in grid(space).values())


def grid_points(space: SpaceFile) -> list[dict[str, Any]]:
    """Every point of the grid, each once, in an order shuffled by the sweep's seed: trial n
    evaluates point n, so fewer trials than points take a random subset, the same one in any
    number of processes (Optuna's GridSampler, proposing trials together, could give two of
    them the same point)."""
    values = grid(space)
    points = [
        dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())
    ]
    order = np.random.default_rng(space.sweep.seed).permutation(len(points))
    return [points[i] for i in order]


def trials_to_run(space: SpaceFile) -> int:
    """`sweep.trials`, for the grid sampler at most the grid's size (each point once)."""
    if space.sweep.sampler == "grid":
        return min(space.sweep.trials, grid_size(space))
    return space.sweep.trials


def decode(space: SpaceFile, params: dict[str, Any]) -> dict[str, Any]:
    """Optuna's stored params as config values (JSON text back to lists)."""
    out = {}
    for key, value in params.items():
        p = space.space[key]
        out[key] = json.loads(value) if isinstance(p, Choices) and _encoded(p.choices) else value
    return out


def sampler(space: SpaceFile, number: int):
    """The sampler that proposes trial `number`: seeded by the sweep's seed and the trial's
    number, so an interrupted sweep proposes the same trials when it resumes. A grid trial's
    parameters are given (`grid_points`), so its sampler draws nothing."""
    import optuna

    s = space.sweep
    seed = s.seed * 100_003 + number
    if s.sampler in ("grid", "random"):
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup)


def round_end(space: SpaceFile, number: int, trials: int) -> int:
    """One past the last trial of the round holding trial `number`. Grid and random trials do
    not depend on each other: one round. TPE's first `startup` trials are random (one round),
    then it proposes `batch` at a time from the trials finished before them, whatever the
    number of workers, so the same seed gives the same sweep on any machine."""
    s = space.sweep
    if s.sampler != "tpe" or number < s.startup:
        return min(trials, s.startup if s.sampler == "tpe" else trials)
    return min(trials, s.startup + ((number - s.startup) // s.batch + 1) * s.batch)


# --------------------------------------------------------------------------- files


def resolve_space_path(path: Path) -> Path:
    """`path`, or for a bare name that is no file here (`quick`), the shipped space."""
    return resolve_config_path(path, "spaces", "space")


def dump(space: SpaceFile) -> str:
    raw = space.model_dump(mode="json")
    for p in raw["space"].values():
        if "choices" not in p:
            integer = p.pop("integer")
            if p["step"] is None:
                p.pop("step")
            for end in ("low", "high", "step"):
                if integer and end in p:
                    p[end] = int(p[end])
    return yaml.safe_dump(raw, sort_keys=False, default_flow_style=None)
