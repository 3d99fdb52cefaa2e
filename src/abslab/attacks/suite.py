"""The attacks of a run from the `attack` and `norm` configs, checked against norm and model."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from abslab.attacks.base import Attack
from abslab.attacks.estimators import GradientEstimator
from abslab.models.base import Defense

log = logging.getLogger(__name__)
ATTACK_CONFIGS = Path(__file__).resolve().parents[3] / "conf" / "attack"


def catalog() -> dict[str, tuple[str, bool]]:
    """Every attack in conf/attack: name -> (norm, needs_gradient), for error messages."""
    found = {}
    for path in sorted(ATTACK_CONFIGS.glob("*.yaml")):
        for name, spec in OmegaConf.load(path).items():
            if isinstance(spec, DictConfig) and "_target_" in spec:
                needs_gradient = get_class(spec._target_).needs_gradient and "estimator" not in spec
                found[str(name)] = (spec.norm, needs_gradient)
    return found


def _alternatives(norm: str, gradient_free: bool) -> str:
    names = [
        name
        for name, (attack_norm, needs_gradient) in catalog().items()
        if attack_norm == norm and not (gradient_free and needs_gradient)
    ]
    return ", ".join(names) or "none yet"


def instantiate_attack(name: str, spec: DictConfig) -> Attack:
    """The attack of a config. The harness's keys, which any attack may have, are taken out:
    `max_queries` (per-sample budget) and `estimator`, `ge_step`, `ge_samples`,
    `skip_exact_gradients` (a _ge attack: gradients estimated from scores)."""
    settings = OmegaConf.to_container(spec)
    max_queries = settings.pop("max_queries", None)
    kind = settings.pop("estimator", None)
    skip_exact = settings.pop("skip_exact_gradients", True)
    ge = {key: settings.pop(f"ge_{key}") for key in ("step", "samples") if f"ge_{key}" in settings}
    attack = instantiate(settings, name=name)
    attack.max_queries = max_queries
    if kind is not None:
        if not attack.needs_gradient:
            raise ValueError(f"attack={name} takes no gradients: `estimator` does not apply.")
        attack.estimator = GradientEstimator(kind, **ge)
        attack.skip_exact_gradients = skip_exact
    return attack


def build_attacks(
    attack_cfg: DictConfig | None, norm: str, defense: Defense
) -> tuple[list[Attack], dict[str, str]]:
    """The attacks to run and the ones skipped (name -> reason).

    An attack of another norm is an error. One that cannot run on the model (`unsupported`:
    autograd gradients on a `gradient: none` model, Latent Descent on a non-ABS model) is
    skipped with a recorded reason; if that leaves nothing to run, it is an error that names
    the model, the attacks, why, and what to use instead.
    """
    names = [str(name) for name in (attack_cfg or {})]
    if not names:
        return [], {}
    if norm == "none":
        norms = sorted({str(attack_cfg[name].norm) for name in names})
        raise ValueError(
            f"attack={','.join(names)} needs a norm: add norm={norms[0]} (attacks minimise a "
            "distance; norm=l2|linf|l0 also selects that norm's whole suite)."
        )
    for name in names:
        if attack_cfg[name].norm != norm:
            raise ValueError(
                f"attack={name} minimises {attack_cfg[name].norm}, not norm={norm}: use "
                f"norm={attack_cfg[name].norm}, or an attack of norm={norm}: "
                f"{_alternatives(norm, gradient_free=False)}."
            )
    attacks = [instantiate_attack(name, attack_cfg[name]) for name in names]
    skipped = {a.name: a.unsupported(defense) for a in attacks if a.unsupported(defense)}
    usable = [a for a in attacks if a.name not in skipped]
    if not usable:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        raise ValueError(
            f"No attack of attack={','.join(names)} can run on model={defense.name} ({reasons}). "
            f"Attacks of norm={norm} that need no autograd gradient: "
            f"{_alternatives(norm, gradient_free=True)}."
        )
    for name, reason in skipped.items():
        log.warning("Skipping attack %s: %s.", name, reason)
    return usable, skipped
