"""Shared fixtures: the offline MNIST copy, and composing/running configs without a Hydra app."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from abslab.attacks.base import Attack

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
MNIST_ROOT = REPO.parent / "shared" / "data" / "mnist"
REFERENCE_MODELS = REPO.parent / "shared" / "data" / "reference_models"

os.environ.setdefault("WANDB_SILENT", "true")
# numba (foolbox's Brendel-Bethge) compiles at LLVM's -O0: half the compile time (about 35 s
# instead of 65 s per norm here), same arithmetic; numba reads it when first imported, which
# happens after this file, in the test modules.
os.environ.setdefault("NUMBA_OPT", "0")
# Under pytest-xdist (`-n 2`, the default in pyproject.toml) the workers share the cores: each
# gets its share of threads, here and in the subprocesses it starts, instead of every worker's
# torch and oneDNN spinning one thread per core of the machine.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    THREADS = max(1, len(os.sched_getaffinity(0)) // WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)

# Paths a test run may leave in the checkout: the environment and Python's and tools' caches.
RUN_CACHES = (".venv/", "__pycache__/", ".pytest_cache/", ".ruff_cache/", ".egg-info/")


def _untracked_paths() -> set[str] | None:
    """Every untracked or ignored file of the checkout (one per file, caches left out), or
    None outside a git checkout."""
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "-uall", "--", ".", ":(exclude).venv"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if status.returncode != 0:
        return None
    paths = {line[3:] for line in status.stdout.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not any(cache in p for cache in RUN_CACHES)}


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean():
    """Fails the session if tests wrote into the checkout: tests write only into tmp_path."""
    before = _untracked_paths()
    yield
    after = _untracked_paths()
    if before is not None and after is not None and after - before:
        new = sorted(after - before)
        pytest.fail(
            f"the tests wrote {len(new)} file(s) into the checkout, e.g. {new[:5]}: write into "
            "tmp_path (pass hydra.run.dir / hydra.sweep.dir / output_dir, or run subprocesses "
            "with cwd=tmp_path).",
            pytrace=False,
        )


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


def plain_distance(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    """Distances (N,) of images a from b (N, 1, 28, 28), written out here rather than taken
    from abslab.attacks.distances, so that tests check what the harness recorded."""
    if norm == "l0":
        return (a != b).flatten(1).sum(dim=1).float()
    diff = (a - b).flatten(1)
    return diff.norm(dim=1) if norm == "l2" else diff.abs().amax(dim=1)


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


def configured_attack(name: str, **settings: Any) -> Attack:
    """conf/attack/<name>.yaml as evaluate.py composes it, top-level `settings` changed."""
    from omegaconf import open_dict

    from abslab.attacks.suite import instantiate_attack

    overrides = [f"attack={name}", f"published_root={REFERENCE_MODELS}"]
    spec = compose_config("evaluate", overrides, Path("unused")).attack[name]
    with open_dict(spec):
        spec.update(settings)
    return instantiate_attack(name, spec)


@pytest.fixture(scope="session")
def small_cnn_batch(mnist_arrays):
    """The authors' small transfer CNN (52k parameters: cheap to attack for many steps) and the
    first 8 test images it classifies correctly (8, 1, 28, 28), their labels (8,)."""
    from abslab.models.cnn import CNNDefense

    cnn = CNNDefense(architecture="transfer", pretrained=str(REFERENCE_MODELS / "cnn")).eval()
    x = torch.from_numpy(mnist_arrays["test_images"][:12]).float().div(255).unsqueeze(1)
    y = torch.from_numpy(mnist_arrays["test_labels"][:12].astype("int64"))
    with torch.no_grad():
        right = cnn(x).argmax(1) == y
    return cnn, x[right][:8], y[right][:8]


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
