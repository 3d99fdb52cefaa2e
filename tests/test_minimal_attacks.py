"""The modern minimal-norm attacks (abslab.attacks.minimal) and the refining overlays on the
authors' vanilla CNN: each breaks it with verified rows; Brendel-Bethge and HopSkipJump started
from given adversarials end closer to the originals than their starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from abslab.attacks.harness import Outcome, run_attack
from abslab.attacks.suite import instantiate_attack
from abslab.models.cnn import CNNDefense
from conftest import REFERENCE_MODELS, compose_config, plain_distance

# Each attack at a tiny budget (seconds on CPU); Brendel-Bethge's numba compile alone takes
# about 50 s, so only one test runs it.
TINY = {
    "fmn_l0": {"steps": 30},
    "fmn_l2": {"steps": 30},
    "fmn_linf": {"steps": 30},
    "ddn": {"steps": 30},
    "hsj_l2": {
        "steps": 3,
        "initial_gradient_eval_steps": 20,
        "init_directions": 50,
        "max_queries": 1000,
    },
    "hsj_linf": {
        "steps": 3,
        "initial_gradient_eval_steps": 20,
        "init_directions": 50,
        "max_queries": 1000,
    },
    "bb_l0": {"steps": 20, "init_steps": 100},
    "bb_l2": {"steps": 20, "init_steps": 20},
    "bb_linf": {"steps": 20, "init_steps": 20},
    "boundary_refine": {"steps": 20, "init_directions": 50, "init_steps": 50},
    "pointwise_refine": {"init_epsilons": 20, "init_repetitions": 1, "repetitions": 1},
    "pointwise_l2_refine": {"init_epsilons": 20, "init_repetitions": 1, "repetitions": 1},
}
SLOW = {"bb_l0", "bb_l2", "bb_linf"}  # numba's compile


def attack_config(name: str, settings: dict) -> DictConfig:
    """conf/attack/<name>.yaml as evaluate.py composes it, with `settings` set."""
    spec = compose_config("evaluate", [f"attack={name}"], Path("unused")).attack[name]
    with open_dict(spec):
        for key, value in settings.items():
            OmegaConf.update(spec, key, value, merge=False)
    return spec


def tiny_attack(name: str):
    return instantiate_attack(name, attack_config(name, TINY[name]))


@pytest.fixture(scope="module")
def cnn():
    return CNNDefense(pretrained=str(REFERENCE_MODELS / "cnn")).eval()


@pytest.fixture(scope="module")
def test_batch(mnist_arrays):
    x = torch.from_numpy(mnist_arrays["test_images"][:6]).float().div(255).unsqueeze(1)
    y = torch.from_numpy(mnist_arrays["test_labels"][:6].astype(np.int64))
    return x, y


def assert_verified(outcome: Outcome, cnn, x, y, norm: str) -> None:
    """Successful rows are misclassified images in [0, 1] at the recorded distance
    (recomputed here in plain torch); failed rows have infinite distance."""
    hit = outcome.success
    adv = outcome.adversarial[hit]
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (cnn(adv).argmax(1) != y[hit]).all()
    measured = plain_distance(adv, x[hit], norm)
    assert torch.allclose(measured, outcome.distance[hit])
    assert torch.isinf(outcome.distance[~hit]).all()


def given_starts(cnn, x, y, norm: str, pool: torch.Tensor):
    """Far adversarials to start from, built by hand: per sample, the test image of another
    class nearest to it in `pool` (N, 1, 28, 28) is a misclassified image, then mixed 70/30
    with the original where that stays adversarial, so the start is clearly not minimal."""
    with torch.no_grad():
        pool_pred = cnn(pool).argmax(1)
    starts = []
    for image, label in zip(x, y, strict=True):
        others = pool[pool_pred != label]
        nearest = others[plain_distance(others, image[None].expand_as(others), "l2").argmin()]
        mixed = 0.3 * image + 0.7 * nearest
        with torch.no_grad():
            mixed_adversarial = cnn(mixed[None]).argmax(1).item() != label
        starts.append(mixed if mixed_adversarial else nearest)
    starts = torch.stack(starts)
    with torch.no_grad():
        assert (cnn(starts).argmax(1) != y).all()
    return starts, plain_distance(starts, x, norm)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(TINY)]
)
def test_attack_breaks_the_cnn_with_verified_rows(name, cnn, test_batch):
    x, y = test_batch
    attack = tiny_attack(name)
    with torch.no_grad():
        clean = cnn(x).argmax(1)
    assert (clean == y).all()
    outcome = run_attack(attack, cnn, x, y, clean, seed=3)
    assert outcome.error == [""] * len(x)
    assert outcome.success.sum() >= len(x) - 1, f"{name} broke only {int(outcome.success.sum())}"
    assert_verified(outcome, cnn, x, y, attack.norm)
    assert (outcome.queries > 0).all()


@pytest.mark.parametrize(
    "name", ["hsj_l2", "hsj_linf", *(pytest.param(n, marks=pytest.mark.slow) for n in sorted(SLOW))]
)
def test_attack_from_given_starts_ends_closer_than_they_are(name, cnn, test_batch, mnist_arrays):
    x, y = test_batch
    attack = tiny_attack(name)
    assert attack.start == "best"
    pool = torch.from_numpy(mnist_arrays["test_images"][6:106]).float().div(255).unsqueeze(1)
    starts, start_distance = given_starts(cnn, x, y, attack.norm, pool)
    has_start = torch.ones(len(x), dtype=torch.bool)
    has_start[-1] = False  # this sample makes its own start
    with torch.no_grad():
        clean = cnn(x).argmax(1)
    outcome = run_attack(attack, cnn, x, y, clean, seed=3, start=starts, has_start=has_start)
    assert outcome.error == [""] * len(x)
    assert outcome.success.all()
    assert_verified(outcome, cnn, x, y, attack.norm)
    closer = outcome.distance[:-1] < start_distance[:-1]
    assert closer.sum() >= len(x) - 2, (outcome.distance, start_distance)


def test_refining_overlays_start_from_the_best_and_keep_their_base():
    for base in ("boundary", "pointwise", "pointwise_l2"):
        refine = attack_config(f"{base}_refine", {})
        plain = attack_config(base, {})
        assert refine.start == "best" and refine.paper is False
        differing = {k for k in refine if refine[k] != plain.get(k)}
        assert differing <= {"start", "paper"}
