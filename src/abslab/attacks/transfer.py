"""Transfer attacks (docs/attacks.md): adversarials made on a substitute, rescaled on the target,
which only ever answers with its decision."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from abslab.attacks.base import SEARCH_DEFAULTS, Attack, SearchAttack, along
from abslab.attacks.distances import distance
from abslab.attacks.harness import run_attack
from abslab.attacks.queries import QueryModel
from abslab.attacks.suite import instantiate_attack
from abslab.models.base import Defense
from abslab.models.registry import load_model

log = logging.getLogger(__name__)


class TransferAttack(SearchAttack):
    """Runs `substitute_attacks` (name -> attack config: the norm's gradient attacks, nested
    in conf/attack/transfer_*.yaml, so budgets and overrides reach them) on the substitute,
    verified there by the harness; each adversarial perturbation delta then gives a direction,
    along which the shared epsilon search, starting at delta's own size, finds the smallest
    scale the target misclassifies. The target is only asked for labels
    (`QueryModel.predict`). The smallest adversarial over all substitute attacks is kept.
    How the paper ran its transfer rows is unknown (docs/attacks.md); this is abslab's reading.

    `substitute`: a conf/model config (with its card), loaded by
    abslab.models.registry.load_model from `substitute_ckpt` (a train.py checkpoint) if given,
    else by `weights` (own | published; None: published). It is loaded when the attack is
    built, so missing weights stop a run before any attack runs. A substitute attack set to
    None is left out.
    """

    norms = ("l2", "linf")

    def __init__(
        self,
        name: str,
        norm: str,
        substitute: Mapping[str, Any],
        substitute_attacks: Mapping[str, Mapping[str, Any] | None],
        weights: str | None,
        substitute_ckpt: str | None,
        registry: str,
        published_root: str,
        growth: float = SEARCH_DEFAULTS["growth"],
        bracket_steps: int = SEARCH_DEFAULTS["bracket_steps"],
        bisect_steps: int = SEARCH_DEFAULTS["bisect_steps"],
    ) -> None:
        super().__init__(
            name, norm, growth=growth, bracket_steps=bracket_steps, bisect_steps=bisect_steps
        )
        self._attacks = [
            self._substitute_attack(attack, spec)
            for attack, spec in substitute_attacks.items()
            if spec is not None
        ]
        if not self._attacks:
            raise ValueError(
                f"attack.{name}.substitute_attacks has none left: keep at least one of "
                f"{', '.join(substitute_attacks)}."
            )
        spec = substitute if isinstance(substitute, DictConfig) else OmegaConf.create(substitute)
        choice = None if substitute_ckpt is not None else weights or "published"
        model, ckpt = load_model(spec, choice, substitute_ckpt, registry, published_root)
        if model.gradient == "none":
            raise ValueError(
                f"attack.{name}.substitute: model={model.name} has no input gradient: it cannot "
                "be a substitute."
            )
        self._substitute: Defense = model.eval()
        # where its weights came from, for results (report.py leaves this machine path out)
        self.substitute_weights = ckpt or model.pretrained
        self.substitute_model = model.name

    def _substitute_attack(self, attack: str, spec: Mapping[str, Any]) -> Attack:
        path = f"attack.{self.name}.substitute_attacks.{attack}"
        built = instantiate_attack(attack, spec, path)
        if built.norm != self.norm or not built.needs_gradient or built.estimator is not None:
            raise ValueError(
                f"{path}: must be a {self.norm} attack using the substitute's own gradients."
            )
        return built

    def settings(self) -> dict[str, Any]:
        """The transfer's settings, its substitute attacks' under `substitute_attacks`."""
        nested = {attack.name: attack.settings() for attack in self._attacks}
        return {**super().settings(), "substitute_attacks": nested}

    def run(
        self, model: QueryModel, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        substitute = self._substitute.to(x.device)
        with torch.no_grad():
            substitute_pred = substitute(x).argmax(1)
        for attack in self._attacks:
            made = run_attack(attack, substitute, x, y, substitute_pred, model.seed, model.index)
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
