"""Loading abslab's own Lightning checkpoints into a freshly built defense."""

from __future__ import annotations

from pathlib import Path

import torch

from abslab.models.base import Defense
from abslab.models.pretrained import WeightsError


def load_checkpoint_weights(model: Defense, path: str | Path) -> None:
    """Copy the weights of a train.py checkpoint into `model` (weights_only=True, strict keys)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"ckpt={path} does not exist. Give a checkpoint written by train.py "
            "(<run dir>/checkpoints/last.ckpt or epoch_*.ckpt)."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"ckpt={path} is not a loadable checkpoint: {err}") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise WeightsError(f"ckpt={path} is not a Lightning checkpoint (no 'state_dict').")
    saved_name = checkpoint.get("hyper_parameters", {}).get("name")
    if saved_name is not None and not model.accepts_weights_of(saved_name):
        raise WeightsError(
            f"ckpt={path} was trained as model={saved_name}, but model={model.name} was asked "
            f"for. Pass model={saved_name}, or a checkpoint of {model.name}."
        )
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise WeightsError(f"ckpt={path} does not fit model={model.name}: {err}") from err
