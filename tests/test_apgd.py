"""APGD-min: its loss and checkpoints by hand, the exact smallest eps of a linear model, and on
the authors' small transfer CNN verified adversarials no farther than BIM's."""

from __future__ import annotations

import math

import pytest
import torch

from abslab.attacks.apgd import checkpoints, dlr_loss
from abslab.attacks.harness import run_attack
from conftest import configured_attack, plain_distance


class TenPixels(torch.nn.Module):
    """Around the grey image (0.5 everywhere): class 1 once the first 10 pixels of row 0 add up
    to more than 0.5 above grey, else class 0. Smallest adversarial: L-inf 0.05, L2 0.5/√10."""

    gradient = "exact"
    name = "ten_pixels"
    logit_scale = 1.0
    binarize_input = False
    reconstructs = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((len(x), 10), -10.0)
        logits[:, 0] = 0.5 - (x[:, 0, 0, :10] - 0.5).sum(1)
        logits[:, 1] = 0.0
        return logits


def test_dlr_loss_and_checkpoints_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
    # -(label - best other) / (top1 - top3): -(3 - 2) / (3 - 1) and -(2 - 3) / (3 - 1)
    assert torch.allclose(dlr_loss(logits, torch.tensor([0, 2])), torch.tensor([-0.5, 0.5]))
    # 100 steps: first after 22, then periods 19, 16, 13, 10, 7 and 6 (6% of the steps) twice
    assert checkpoints(100) == {22: 22, 41: 19, 57: 16, 70: 13, 80: 10, 87: 7, 93: 6, 99: 6}
    assert checkpoints(3) == {1: 1, 2: 1, 3: 1}


@pytest.mark.parametrize(
    "name, norm, smallest", [("apgd_linf", "linf", 0.05), ("apgd_l2", "l2", 0.5 / math.sqrt(10))]
)
def test_the_smallest_eps_of_a_linear_model(name, norm, smallest):
    x, y = torch.full((2, 1, 28, 28), 0.5), torch.zeros(2, dtype=torch.long)
    attack = configured_attack(name, steps=20)
    outcome = run_attack(attack, TenPixels(), x, y, y.clone(), seed=0)
    assert outcome.success.all()
    measured = plain_distance(outcome.adversarial, x, norm)
    assert torch.equal(measured, outcome.distance)
    assert (measured >= smallest).all() and (measured <= 1.02 * smallest).all(), measured


def test_apgd_min_breaks_the_small_cnn_no_farther_than_bim(small_cnn_batch):
    small_cnn, x, y = small_cnn_batch
    clean = small_cnn(x).argmax(1)
    apgd = run_attack(configured_attack("apgd_linf", steps=10), small_cnn, x, y, clean, seed=2)
    assert apgd.error == [""] * len(x) and apgd.success.all()
    adv = apgd.adversarial
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (small_cnn(adv).argmax(1) != y).all()
    measured = plain_distance(adv, x, "linf")
    assert torch.equal(measured, apgd.distance)
    bim = run_attack(configured_attack("bim"), small_cnn, x, y, clean, seed=2)
    assert bim.success.all()
    assert (measured <= bim.distance + 0.01).all(), (measured, bim.distance)
    assert measured.mean() <= bim.distance.mean()
