"""A sweep's budget (conf/budget): sample counts and attack settings lowered for the hardware
at hand, applied to the composed config before anything runs, and recorded in the results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from abslab.attacks.ranges import BUDGET_RANGES, check_settings


def apply_budget(cfg: DictConfig) -> None:
    """Check the budget's counts; then set data.test_samples (where not given) and
    data.eval_batch_size from `cfg.budget`, and merge its attack settings into the attacks this
    run has: `attacks` for every model, then `expensive_attacks` for models whose card says
    `expensive` (ABS: a full inference per query). `<name>: settings` reaches every config
    node of attack <name>, a transfer's nested substitute attacks included."""
    budget = cfg.get("budget")
    if budget is None:
        return
    check_settings(budget, "budget", BUDGET_RANGES)
    if budget.name == "none":
        return
    expensive = bool(cfg.model.card.expensive)
    with open_dict(cfg):
        if cfg.data.test_samples is None:
            cfg.data.test_samples = budget.expensive_samples if expensive else budget.samples
        if expensive and budget.expensive_batch_size is not None:
            cfg.data.eval_batch_size = budget.expensive_batch_size
        sources = [budget.attacks, *([budget.expensive_attacks] if expensive else [])]
        for source in sources:
            for name, settings in source.items():
                _merge_into(cfg.get("attack"), str(name), settings, budget.name, "attack")


def _merge_into(node: Any, name: str, settings: DictConfig, budget: str, path: str) -> None:
    """Merge `settings` into every attack config (a node with `_target_`) named `name` at or
    below `node` (config path `path`)."""
    if not isinstance(node, DictConfig):
        return
    for key in list(node.keys()):
        child, child_path = node[key], f"{path}.{key}"
        if key == name and isinstance(child, DictConfig) and "_target_" in child:
            _refuse_unknown(settings, child, budget, child_path)
            with open_dict(child):
                node[key] = OmegaConf.merge(child, settings)
        _merge_into(node[key], name, settings, budget, child_path)


def _refuse_unknown(settings: Mapping[str, Any], node: DictConfig, budget: str, path: str) -> None:
    """A budget key the attack config lacks is an error naming its path (nested keys too)."""
    for key, value in settings.items():
        if key not in node:
            raise ValueError(
                f"budget={budget} sets {path}.{key}, which that attack's config does not have: "
                f"fix conf/budget/{budget}.yaml (its keys: {', '.join(map(str, node))})."
            )
        if isinstance(value, Mapping) and isinstance(node[key], DictConfig):
            _refuse_unknown(value, node[key], budget, f"{path}.{key}")
