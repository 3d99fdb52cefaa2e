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


def slim_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Keep only the weights and the model name of a train.py checkpoint: a file small enough
    to commit (no optimizer state), which `ckpt=` loads like the original."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    name = checkpoint.get("hyper_parameters", {}).get("name")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": checkpoint["state_dict"], "hyper_parameters": {"name": name}}, target)
    return target


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m abslab.models.checkpoints SOURCE.ckpt TARGET.ckpt")
    print(slim_checkpoint(sys.argv[1], sys.argv[2]))
