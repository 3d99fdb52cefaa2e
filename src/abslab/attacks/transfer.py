"""Transfer attacks (abs_spec 1.2, 3.5, 4.5): adversarials made on a substitute, rescaled on the
target, which only ever answers with its decision."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from abslab.attacks.base import EpsilonSearchAttack, along
from abslab.attacks.distances import distance
from abslab.attacks.harness import run_attack
from abslab.attacks.queries import QueryModel
from abslab.attacks.suite import ATTACK_CONFIGS, instantiate_attack
from abslab.models.base import Defense, build_defense
from abslab.models.checkpoints import load_checkpoint_weights
from abslab.models.pretrained import WeightsError

log = logging.getLogger(__name__)
MODEL_CONFIGS = ATTACK_CONFIGS.parent / "model"


def load_substitute(model: str, weights: str) -> Defense:
    """The substitute: conf/model/<model>.yaml with `weights`, either the authors' published
    file (e.g. transfer_cnn.net, converted with key and shape checks) or a train.py
    checkpoint (.ckpt). It must have input gradients."""
    spec = _model_config(model)
    weights_path = Path(weights)
    if not weights_path.exists():
        raise WeightsError(
            f"substitute_weights={weights} does not exist: give the authors' transfer_cnn.net "
            "(../shared/data/reference_models/cnn/transfer_cnn.net) or a train.py checkpoint of "
            f"model={model}."
        )
    if weights_path.suffix == ".ckpt":
        substitute = build_defense(spec)
        load_checkpoint_weights(substitute, weights_path)
    elif "pretrained" in spec:
        substitute = build_defense(spec, pretrained=str(weights_path))
    else:
        raise WeightsError(
            f"substitute_model={model} loads no published weights: give substitute_weights=<a "
            "train.py checkpoint (.ckpt) of it>."
        )
    if substitute.gradient == "none":
        raise ValueError(f"substitute_model={model} has no input gradient: it cannot be one.")
    return substitute.eval()


def _model_config(name: str) -> DictConfig:
    """conf/model/<name>.yaml with the configs its defaults list names merged in first (a
    model config is read here outside Hydra's composition)."""
    path = MODEL_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in MODEL_CONFIGS.glob("*.yaml")))
        raise ValueError(f"substitute_model={name!r} is not in conf/model: choose one of {names}.")
    spec = OmegaConf.load(path)
    spec = spec.model if "model" in spec else spec  # configs in the global package (abs)
    bases = [_model_config(base) for base in spec.pop("defaults", []) if base != "_self_"]
    return OmegaConf.merge(*bases, spec)


class TransferAttack(EpsilonSearchAttack):
    """Runs `substitute_attacks` (the norm's gradient attacks, as configured in conf/attack)
    on the substitute, verified there by the harness; each adversarial perturbation delta then
    gives a direction, along which the shared epsilon search, starting at delta's own size,
    finds the smallest scale the target misclassifies. The target is only asked for labels
    (`QueryModel.predict`). The smallest adversarial over all substitute attacks is kept.
    How the paper ran its transfer rows is unknown (abs_spec 4.5); this is abslab's reading.
    """

    norms = ("l2", "linf")

    def __init__(
        self,
        name: str,
        norm: str,
        substitute_model: str = "transfer_cnn",
        substitute_weights: str = "../shared/data/reference_models/cnn/transfer_cnn.net",
        substitute_attacks: Sequence[str] = (),
        growth: float = 1.5,
        bracket_steps: int = 20,
        bisect_steps: int = 20,
    ) -> None:
        super().__init__(name, norm, 1.0, growth, bracket_steps, bisect_steps)
        if not substitute_attacks:
            raise ValueError(f"attack {name}: substitute_attacks is empty: name gradient attacks.")
        self.substitute_model = substitute_model
        self.substitute_weights = substitute_weights
        self.substitute_attacks = list(substitute_attacks)
        self._attacks = [self._attack(attack) for attack in self.substitute_attacks]
        self._substitute: Defense | None = None

    def run(self, model: QueryModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._substitute is None:
            self._substitute = load_substitute(self.substitute_model, self.substitute_weights)
        substitute = self._substitute.to(x.device)
        with torch.no_grad():
            substitute_pred = substitute(x).argmax(1)
        for attack in self._attacks:
            seed = int(torch.randint(2**31 - 1, ()))
            made = run_attack(attack, substitute, x, y, substitute_pred, seed)
            delta = made.adversarial - x
            size = distance(made.adversarial, x, self.norm)
            rows = ((size > 0) & torch.isfinite(made.distance)).nonzero().flatten()
            if len(rows) == 0:
                log.info("transfer: %s found nothing on the substitute", attack.name)
                continue
            direction = delta[rows] / size[rows].reshape(-1, 1, 1, 1)
            candidate = along(x[rows], direction)
            self.epsilon_search(_LocalRows(model, rows), candidate, y[rows], size[rows])
        return model.best.clone()

    def _attack(self, name: str):
        path = ATTACK_CONFIGS / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(f"substitute_attacks: {name!r} is not in conf/attack.")
        attack = instantiate_attack(name, OmegaConf.load(path)[name])
        if attack.norm != self.norm or not attack.needs_gradient or attack.estimator is not None:
            raise ValueError(
                f"substitute_attacks: {name} must be a {self.norm} attack using the substitute's "
                "own gradients."
            )
        return attack


class _LocalRows:
    """A QueryModel seen through a subset of its samples: index i here is rows[i] there, so
    the shared epsilon search (which indexes from 0) can run on that subset."""

    def __init__(self, model: QueryModel, rows: torch.Tensor) -> None:
        self.model, self.rows = model, rows

    @property
    def best(self) -> torch.Tensor:
        return self.model.best[self.rows]

    def predict(self, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.model.predict(inputs, self.rows[rows])
