"""Where a model's weights are found by name, so a sweep needs no checkpoint paths; every fact
about a model comes from its config's `card:` (conf/model/<name>.yaml).

`weights=own`: what abslab trained. `python train.py experiment=<name>` writes
`<registry>/<name>/weights.ckpt` (default registry: outputs/models); the weights a results table
rests on are committed as `checkpoints/<name>.ckpt`. The fresh run on this machine wins over the
committed copy. A card's `weights_of` names the trained model whose weights a model loads
(binary ABS: the ABS VAEs, with class scalars fitted on the validation split in
`<weights>.scalars.json` beside them).

`weights=published`: the authors' files in the card's `published` folder under
`published_root` (../shared/data/reference_models); `has_weights: false`: nothing to load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from abslab.models.base import Defense, build_defense
from abslab.models.checkpoints import load_checkpoint_weights
from abslab.models.pretrained import WeightsError

COMMITTED = Path("checkpoints")
CHOICES = ("own", "published")


def own_checkpoint(spec: DictConfig, registry: str | Path) -> Path:
    """The trained weights of the model of `spec`: <registry>/<trained>/weights.ckpt, else the
    committed checkpoints/<trained>.ckpt (trained: the card's weights_of, else the model)."""
    return _trained(spec.card.weights_of or spec.name, spec.name, registry)


def _trained(trained: str, name: str, registry: str | Path) -> Path:
    candidates = [Path(registry) / trained / "weights.ckpt", COMMITTED / f"{trained}.ckpt"]
    for path in candidates:
        if path.is_file():
            return path
    raise WeightsError(
        f"weights=own: model={name} has no trained weights "
        f"({' or '.join(map(str, candidates))} missing). Train it with `python train.py "
        f"experiment={trained}`, or use weights=published, or give ckpt=PATH."
    )


def scalars_path(checkpoint: Path) -> Path:
    """Where binary ABS's fitted class scalars sit beside ABS weights."""
    return checkpoint.with_suffix(".scalars.json")


def resolve(
    spec: DictConfig, weights: str | None, registry: str | Path, published_root: str | Path
) -> tuple[Path | None, dict[str, Any]]:
    """(checkpoint to load or None, overrides of the model config) for `weights` of the model
    of `spec` (a conf/model config with its card)."""
    card = spec.card
    if weights is None or not card.has_weights:
        return None, {}
    if weights not in CHOICES:
        raise ValueError(f"weights={weights!r}: choose one of {', '.join(CHOICES)}, or null.")
    if weights == "published":
        if card.published is None:
            raise WeightsError(
                f"weights=published: model={spec.name} has no published weights (its card's "
                "`published` is null). Use weights=own."
            )
        return None, {"pretrained": str(Path(published_root) / card.published)}
    checkpoint = own_checkpoint(spec, registry)
    if card.weights_of is None:
        return checkpoint, {}
    path = scalars_path(checkpoint)
    if not path.is_file():
        raise WeightsError(
            f"weights=own: model={spec.name} needs class scalars fitted for {checkpoint}, but "
            f"{path} is missing. Fit them: python -m abslab.tasks.fit_scalars --ckpt {checkpoint}"
        )
    return checkpoint, {"class_scalars": json.loads(path.read_text())["class_scalars"]}


def load_model(
    spec: DictConfig,
    weights: str | None,
    ckpt: str | None,
    registry: str | Path,
    published_root: str | Path,
) -> tuple[Defense, str | None]:
    """The model of `spec` (a conf/model config with its card) and the checkpoint it loaded:
    weights from `ckpt`, else `spec.pretrained`, else by name from `weights` (own, published or
    None: none). The overrides applied (`pretrained`, fitted `class_scalars`) are written into
    `spec`, so the run's config says what ran."""
    if ckpt is None and spec.get("pretrained") is None:
        found, overrides = resolve(spec, weights, registry, published_root)
        ckpt = str(found) if found is not None else None
        with open_dict(spec):
            spec.update(overrides)
    model = build_defense(spec)
    if ckpt is not None:
        load_checkpoint_weights(model, ckpt)
    elif model.needs_training and model.pretrained is None:
        raise WeightsError(
            f"model={model.name} has no weights: give ckpt=PATH (a checkpoint from train.py),"
            " weights=own (trained with experiment=<name>) or, where published weights exist,"
            " model.pretrained=PATH or weights=published."
        )
    return model, ckpt
