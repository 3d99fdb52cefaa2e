"""A sweep's budget (conf/budget): sample counts and attack settings lowered for the hardware
at hand, applied to the composed config before anything runs, and recorded in the results."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict


def apply_budget(cfg: DictConfig) -> None:
    """Set data.test_samples (where not given) and data.eval_batch_size from `cfg.budget`, and
    merge its attack settings into the attacks this run has: `attacks` for every model, then
    `expensive_attacks` for models whose card says `expensive` (ABS: a full inference per query)."""
    budget = cfg.get("budget")
    if budget is None or budget.name == "none":
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
                if name not in (cfg.get("attack") or {}):
                    continue
                unknown = set(settings) - set(cfg.attack[name])
                if unknown:
                    raise ValueError(
                        f"budget={budget.name} sets {sorted(unknown)} of attack {name}, which "
                        f"conf/attack/{name}.yaml does not have: fix "
                        f"conf/budget/{budget.name}.yaml."
                    )
                cfg.attack[name] = OmegaConf.merge(cfg.attack[name], settings)
