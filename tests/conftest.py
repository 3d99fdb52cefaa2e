"""Shared fixtures: the offline MNIST copy, and composing/running configs without a Hydra app."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from abslab.attacks.base import Attack

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
MNIST_ROOT = REPO.parent / "shared" / "data" / "mnist"
REFERENCE_MODELS = REPO.parent / "shared" / "data" / "reference_models"

os.environ.setdefault("WANDB_SILENT", "true")


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose conf/<config_name>.yaml as the entry script would, writing under output_dir."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name, overrides=[f"output_dir={output_dir}", *overrides])


def tiny_overrides(*extra: str) -> list[str]:
    """The offline tiny MNIST subset and no W&B, for fast tests."""
    return [
        "data=mnist_tiny",
        f"data.root={MNIST_ROOT}",
        "data.download=false",
        "logger=none",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


def run_train(overrides: list[str], output_dir: Path) -> dict[str, Any]:
    from abslab.tasks import train

    return train.run(compose_config("train", overrides, output_dir))


def run_evaluate(overrides: list[str], output_dir: Path) -> dict[str, Any]:
    from abslab.tasks import evaluate

    return evaluate.run(compose_config("evaluate", overrides, output_dir))


@pytest.fixture(scope="session")
def mnist_arrays():
    from abslab.data.mnist import load_mnist

    return load_mnist(MNIST_ROOT)


class CrashAtStep(pl.Callback):
    """Raises once training reaches `step`: a crash in the middle of an epoch."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated crash at step {trainer.global_step}")


class RaisingAttack(Attack):
    """An attack that always fails, as a third-party attack might: for fault-tolerance tests."""

    source = "test"

    def run(self, model, x, y):
        raise RuntimeError("this attack always fails")
