"""The attacks of a run from the `attack` and `norm` configs, checked against norm and model."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from abslab.attacks.base import Attack
from abslab.attacks.estimators import GradientEstimator
from abslab.attacks.ranges import ATTACK_RANGES, check_settings
from abslab.models.base import Defense

log = logging.getLogger(__name__)

# own: the attack makes its own starting points; best: the suite's smallest adversarial so far.
START_MODES = ("own", "best")


def estimator_of(settings: Mapping[str, Any], path: str) -> GradientEstimator:
    """The GradientEstimator of a conf/estimator node (kind, step, samples) at config `path`;
    a bad value is a ValueError naming `path.key`."""
    try:
        return GradientEstimator(**settings)
    except ValueError as error:  # "key=value: must be ..."
        raise ValueError(f"{path}.{error}") from error
    except TypeError as error:  # a key GradientEstimator does not take
        raise ValueError(f"{path}: {error}; its keys: kind, step, samples.") from error


def instantiate_attack(name: str, spec: DictConfig | Mapping[str, Any], path: str = "") -> Attack:
    """The attack of a config at config `path` (default `attack.<name>`), its values checked
    first (abslab.attacks.ranges). The harness's keys are taken out: `max_queries` (per-sample
    query budget), `paper` (one of the paper's Table 1 attacks), `start` (own | best: best
    only for attacks that accept starting points) and, for a _ge attack, `estimator`
    (conf/estimator: gradients estimated from scores) and `skip_exact_gradients`. Any other
    key the attack does not take is an error."""
    path = path or f"attack.{name}"
    if isinstance(spec, DictConfig):
        settings = OmegaConf.to_container(spec, resolve=True)
    else:
        settings = copy.deepcopy(dict(spec))
    check_settings(settings, path, ATTACK_RANGES)
    max_queries = settings.pop("max_queries", None)
    paper = settings.pop("paper", False)
    start = settings.pop("start", "own")
    if not isinstance(paper, bool):
        raise ValueError(f"{path}.paper={paper}: must be true or false.")
    if start not in START_MODES:
        raise ValueError(f"{path}.start={start}: choose one of {', '.join(START_MODES)}.")
    estimator = settings.pop("estimator", None)
    skip_exact = settings.pop("skip_exact_gradients", None)
    if estimator is None and skip_exact is not None:
        raise ValueError(
            f"{path}.skip_exact_gradients applies to attacks with an `estimator` (the _ge "
            "attacks) only: remove it."
        )
    try:
        attack = instantiate(settings, name=name)
    except InstantiationException as error:  # the attack's own error, not Hydra's wrapper
        cause = error.__cause__
        if isinstance(cause, TypeError):  # a key the attack does not take
            raise ValueError(f"{path}: {cause}: remove that key.") from error
        raise (cause or error) from None
    if start == "best" and not attack.accepts_start:
        raise ValueError(
            f"{path}.start=best: {type(attack).__name__} cannot start from given adversarials "
            "(accepts_start is False): use start: own."
        )
    attack.max_queries, attack.paper, attack.start = max_queries, paper, start
    if estimator is not None:
        if not attack.needs_gradient:
            raise ValueError(f"{path} takes no gradients: `estimator` does not apply.")
        attack.estimator = estimator_of(estimator, f"{path}.estimator")
        attack.skip_exact_gradients = skip_exact if skip_exact is not None else True
    return attack


def build_attacks(
    attack_cfg: DictConfig | None, norm: str, defense: Defense
) -> tuple[list[Attack], dict[str, str]]:
    """The attacks to run and the ones skipped (name -> reason), every config checked and
    built before any of them runs.

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
                f"norm={attack_cfg[name].norm}, or attacks of norm={norm} (conf/attack/{norm}.yaml "
                "lists its suite)."
            )
    attacks = [instantiate_attack(name, attack_cfg[name]) for name in names]
    skipped = {a.name: a.unsupported(defense) for a in attacks if a.unsupported(defense)}
    usable = [a for a in attacks if a.name not in skipped]
    if not usable:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        raise ValueError(
            f"No attack of attack={','.join(names)} can run on model={defense.name} ({reasons}). "
            f"Run norm={norm}'s whole suite (leave out attack=; conf/attack/{norm}.yaml): it "
            "skips what cannot run on the model and runs the rest."
        )
    for name, reason in skipped.items():
        log.warning("Skipping attack %s: %s.", name, reason)
    return usable, skipped
