"""model.pt: weights plus everything needed to use them, loadable with `weights_only=True`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tsconv import runfolder
from tsconv.config import Config, validate_config
from tsconv.data.covariates import input_names
from tsconv.errors import CheckpointError

FORMAT = "tsconv-model/1"


def save(
    path: Path,
    *,
    cfg: Config,
    model: torch.nn.Module,
    scalers: dict[str, Any],
    receptive_field: int,
    burn_in: int,
    extra: dict[str, Any] | None = None,
) -> None:
    payload = {
        "format": FORMAT,
        "config": cfg.model_dump(mode="json"),
        "feature_names": input_names(cfg),
        "in_features": len(input_names(cfg)),
        "window": cfg.window,
        "receptive_field": receptive_field,
        "burn_in": burn_in,
        "scalers": {t: s.to_dict() for t, s in scalers.items()},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "versions": runfolder.versions(),
        **(extra or {}),
    }
    runfolder.save_torch(path, payload)


def load(path: Path) -> dict[str, Any]:
    """Load on the CPU whatever device trained it; never unpickle arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable tsconv checkpoint (corrupt or truncated: {first})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a tsconv checkpoint (format {FORMAT} expected)")
    return payload


def config_of(payload: dict[str, Any], path: Path) -> Config:
    return validate_config(payload["config"], source=f"{path} (stored config)")
