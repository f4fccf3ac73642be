"""The names a `features:` list may hold: fixed ones, parametric ones with a window of N bars,
and `col:NAME` for a ticker's own column. tsconv.data.features computes them."""

from __future__ import annotations

import re

FIXED_FEATURES = ("log_return", "oc_return", "hl_range", "close_loc", "log_volume_chg")
PARAMETRIC_FEATURES = ("vol", "ewvol", "volume_z", "mom")  # written NAME_N, N in 2..1000
_PARAMETRIC = re.compile(rf"^({'|'.join(PARAMETRIC_FEATURES)})_(\d+)$")
# Features measured in units of return (a log return, a range, a volatility, a momentum):
# a risk target reads them relative to its trailing volatility (tsconv.data.features.build)
RETURN_UNITS = ("log_return", "oc_return", "hl_range", "vol", "ewvol", "mom")
# Signed changes (a log return, a momentum, a change in log volume): zero means no move, and
# the scaler does not centre them (tsconv.engine.windows.Scaler)
SIGNED_CHANGES = ("log_return", "oc_return", "log_volume_chg", "mom")


def parse_feature_name(name: str) -> tuple[str, int | None]:
    """("log_return", None) for a fixed feature, ("vol", 20) for vol_20; KeyError for a name
    that is neither (`col:` names included)."""
    if name in FIXED_FEATURES:
        return name, None
    m = _PARAMETRIC.match(name)
    if m and 2 <= int(m.group(2)) <= 1000:
        return m.group(1), int(m.group(2))
    raise KeyError(name)


def check_feature_names(names: list[str]) -> None:
    for name in names:
        if name.startswith("col:") and len(name) > 4:
            continue  # a column of the ticker's own file, checked when the data is read
        try:
            parse_feature_name(name)
        except KeyError:
            valid = ", ".join(
                [
                    *FIXED_FEATURES,
                    "vol_N",
                    "ewvol_N",
                    "volume_z_N",
                    "mom_N (N in 2..1000)",
                    "col:NAME",
                ]
            )
            raise ValueError(f"unknown feature {name!r}; valid: {valid}") from None
    if len(set(names)) != len(names):
        raise ValueError("a feature is listed twice")


def in_return_units(name: str) -> bool:
    """Whether the (fixed or parametric) feature `name` is measured in units of return
    (`RETURN_UNITS`); KeyError for any other name."""
    return parse_feature_name(name)[0] in RETURN_UNITS


def is_signed_change(name: str) -> bool:
    """Whether `name` is a fixed or parametric feature in `SIGNED_CHANGES`; False for any
    other name (a `col:` column, a covariate)."""
    try:
        return parse_feature_name(name)[0] in SIGNED_CHANGES
    except KeyError:
        return False
