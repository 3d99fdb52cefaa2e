"""Attack configs for the benches, composed by Hydra exactly as evaluate.py composes them."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]


def attack_config(name: str, overrides: list[str] = ()) -> DictConfig:
    """conf/attack/<name>.yaml with `overrides` such as `steps=10` or `estimator.samples=50`
    (keys of that attack), resolved: a bench builds the attack outside a run."""
    keys = [f"attack.{name}.{item}" for item in overrides]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"attack={name}", *keys])
    return OmegaConf.create(OmegaConf.to_container(cfg.attack[name], resolve=True))
