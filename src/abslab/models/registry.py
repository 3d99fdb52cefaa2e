"""Where a model's weights are found by name, so a sweep needs no checkpoint paths.

`weights=own`: what abslab trained. `python train.py experiment=<name>` writes
`<registry>/<name>/weights.ckpt` (default registry: outputs/models); the weights a results table
rests on are committed as `checkpoints/<name>.ckpt`. The fresh run on this machine wins over the
committed copy. Binary ABS is the ABS VAEs with class scalars fitted on the validation split
(`<weights>.scalars.json` beside the ABS weights).

`weights=published`: the authors' files under `published_root` (../shared/data/reference_models).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from abslab.models.pretrained import WeightsError

COMMITTED = Path("checkpoints")
# model name -> the trained model whose weights it uses (binary ABS: the ABS VAEs)
WEIGHTS_OF = {"binary_abs": "abs"}
# model name -> folder of its published weights under published_root; absent: none published
PUBLISHED = {
    "cnn": "cnn",
    "binary_cnn": "cnn",
    "transfer_cnn": "cnn",
    "abs": "abs",
    "binary_abs": "abs",
}
NO_WEIGHTS = {"nearest_neighbor"}  # models without trainable weights
CHOICES = ("own", "published")


def own_checkpoint(name: str, registry: str | Path) -> Path:
    """The trained weights of model `name`: <registry>/<name>/weights.ckpt, else the committed
    checkpoints/<name>.ckpt."""
    trained = WEIGHTS_OF.get(name, name)
    candidates = [Path(registry) / trained / "weights.ckpt", COMMITTED / f"{trained}.ckpt"]
    for path in candidates:
        if path.is_file():
            return path
    raise WeightsError(
        f"weights=own: model={name} has no trained weights ({' or '.join(map(str, candidates))}"
        f" missing). Train it with `python train.py experiment={trained}`, or use "
        "weights=published, or give ckpt=PATH."
    )


def scalars_path(checkpoint: Path) -> Path:
    """Where binary ABS's fitted class scalars sit beside ABS weights."""
    return checkpoint.with_suffix(".scalars.json")


def resolve(
    name: str, weights: str | None, registry: str | Path, published_root: str | Path
) -> tuple[Path | None, dict[str, Any]]:
    """(checkpoint to load or None, overrides of the model config) for `weights` of `name`."""
    if weights is None or name in NO_WEIGHTS:
        return None, {}
    if weights not in CHOICES:
        raise ValueError(f"weights={weights!r}: choose one of {', '.join(CHOICES)}, or null.")
    if weights == "published":
        if name not in PUBLISHED:
            raise WeightsError(
                f"weights=published: model={name} has no published weights (published: "
                f"{', '.join(sorted(PUBLISHED))}). Use weights=own."
            )
        return None, {"pretrained": str(Path(published_root) / PUBLISHED[name])}
    checkpoint = own_checkpoint(name, registry)
    if name not in WEIGHTS_OF:
        return checkpoint, {}
    path = scalars_path(checkpoint)
    if not path.is_file():
        raise WeightsError(
            f"weights=own: model={name} needs class scalars fitted for {checkpoint}, but {path} "
            f"is missing. Fit them: python -m abslab.tasks.fit_scalars --ckpt {checkpoint}"
        )
    return checkpoint, {"class_scalars": json.loads(path.read_text())["class_scalars"]}


def substitute_weights(choice: str | None, registry: str | Path, published_root: str | Path) -> str:
    """The transfer substitute's weights for `own` / `published` (None: published); any other
    value is a path."""
    if choice == "own":
        return str(own_checkpoint("transfer_cnn", registry))
    if choice in (None, "published"):
        return str(Path(published_root) / PUBLISHED["transfer_cnn"] / "transfer_cnn.net")
    return choice
