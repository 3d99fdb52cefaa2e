"""Loading abslab's own Lightning checkpoints into a freshly built defense."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from abslab.models.base import Defense
from abslab.models.pretrained import WeightsError, load_untrusted

# What `ckpt=` takes, for the messages of files it cannot use.
EXPECTED = (
    "a checkpoint of train.py (<run dir>/checkpoints/last.ckpt or epoch_*.ckpt) or its exported "
    "weights (<run dir>/weights.ckpt, checkpoints/<name>.ckpt)"
)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A train.py checkpoint or exported weights.ckpt: a dict with a 'state_dict', loaded with
    weights_only=True; anything else raises a WeightsError naming the file and what ckpt= takes."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"ckpt={path} does not exist. Give {EXPECTED}.")
    checkpoint = load_untrusted(path, f"ckpt={path}", EXPECTED)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise WeightsError(
            f"ckpt={path} holds no 'state_dict': expected {EXPECTED}. The authors' .net files "
            "load with model.pretrained=<their folder> instead."
        )
    return checkpoint


def load_checkpoint_weights(model: Defense, path: str | Path) -> None:
    """Copy the weights of a train.py checkpoint into `model` (weights_only=True, strict keys)."""
    checkpoint = read_checkpoint(path)
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
    checkpoint = read_checkpoint(source)
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
