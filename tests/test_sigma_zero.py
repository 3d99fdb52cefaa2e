"""σ-zero: its step sizes by hand, the exact answer on a one-pixel model, and on the authors'
small transfer CNN verified adversarials far sparser than salt-and-pepper's."""

from __future__ import annotations

import pytest
import torch

from abslab.attacks.harness import run_attack
from abslab.attacks.sigma_zero import SigmaZeroAttack
from conftest import configured_attack, plain_distance


class OnePixel(torch.nn.Module):
    """Class 0 unless pixel (14, 14) exceeds 0.25 (then class 1); no other pixel matters."""

    gradient = "exact"
    name = "one_pixel"
    logit_scale = 1.0
    binarize_input = False
    reconstructs = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 10)
        logits[:, 0] = 1 - 4 * x[:, 0, 14, 14]
        return logits


def test_the_annealed_step_size_by_hand():
    attack = SigmaZeroAttack("sigma_zero", "l0", steps=4, lr=2.0)
    # lr * (0.1 + 0.9 * (1 + cos(pi * (i + 1) / 4)) / 2): cos = 0 at i = 1, -1 at i = 3
    assert attack.step_size(1) == pytest.approx(2 * 0.55)
    assert attack.step_size(3) == pytest.approx(0.2)


def test_one_decisive_pixel_is_found_and_the_sample_stops_there():
    x, y = torch.zeros(3, 1, 28, 28), torch.zeros(3, dtype=torch.long)
    attack = configured_attack("sigma_zero", steps=50)
    outcome = run_attack(attack, OnePixel(), x, y, torch.zeros(3, dtype=torch.long), seed=0)
    assert outcome.success.all() and (outcome.distance == 1).all()
    assert (outcome.adversarial.flatten(1).ne(0).sum(1) == 1).all()
    assert (outcome.adversarial[:, 0, 14, 14] > 0.25).all()
    assert (outcome.queries < 10).all()  # one pixel is the sparsest: no further steps


def test_sigma_zero_breaks_the_small_cnn_sparser_than_salt_and_pepper(small_cnn_batch):
    cnn, x, y = small_cnn_batch
    clean = cnn(x).argmax(1)
    sigma = run_attack(configured_attack("sigma_zero", steps=60), cnn, x, y, clean, seed=1)
    assert sigma.error == [""] * len(x) and sigma.success.all()
    adv = sigma.adversarial
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (cnn(adv).argmax(1) != y).all()
    measured = plain_distance(adv, x, "l0")
    assert torch.equal(measured, sigma.distance)
    assert (sigma.queries <= 60).all()
    noise = run_attack(configured_attack("salt_pepper", repetitions=3), cnn, x, y, clean, seed=1)
    assert noise.success.all()
    assert measured.median() < noise.distance.median() / 2, (measured, noise.distance)
    assert (measured <= noise.distance).float().mean() >= 0.8
