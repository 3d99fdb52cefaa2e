"""Latent Descent on published ABS weights (small bank, few inference steps, for speed): verified
adversarials, each on its line and no farther than its coarse point, per-sample bookkeeping
(the authors' indexing bug), binary ABS, and the skip on models that are not ABS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from abslab.attacks.distances import distance
from abslab.attacks.harness import run_attack
from abslab.attacks.latent_descent import LatentDescentAttack, binary_projection
from abslab.attacks.queries import QueryModel
from abslab.attacks.suite import build_attacks, instantiate_attack
from abslab.models.abs import PUBLISHED_CLASS_SCALARS, ABSDefense
from abslab.models.base import Inference
from abslab.models.cnn import CNNDefense
from conftest import REFERENCE_MODELS, compose_config, plain_distance

ABS_DIR = REFERENCE_MODELS / "abs"
COARSE = 11  # fractions 0, 0.1, ..., 1


def small_abs(**kwargs) -> ABSDefense:
    return ABSDefense(pretrained=str(ABS_DIR), bank_size=500, n_iter=3, **kwargs).eval()


@pytest.fixture(scope="module")
def abs_model():
    return small_abs()


@pytest.fixture(scope="module")
def digits(mnist_arrays, abs_model):
    """The first 6 test images (6, 1, 28, 28) that the small ABS classifies correctly, labels."""
    x = torch.from_numpy(mnist_arrays["test_images"][:8].astype(np.float32) / 255)[:, None]
    y = torch.from_numpy(mnist_arrays["test_labels"][:8].astype(np.int64))
    with torch.no_grad():
        right = abs_model(x).argmax(1) == y
    return x[right][:6], y[right][:6]


def attacked(model: ABSDefense, x: torch.Tensor, y: torch.Tensor, fine: int):
    """Latent Descent's own output (B, 1, 28, 28) and the queries (B,) it used."""
    queries = QueryModel(model, x, y, "l2")
    with torch.no_grad():
        adversarial = LatentDescentAttack("ld", "l2", COARSE, fine).run(queries, x, y)
    return adversarial, queries.queries


def test_latent_descent_breaks_abs_with_verified_adversarials(abs_model, digits):
    x, y = digits
    attack = LatentDescentAttack("latent_descent", "l2", COARSE, 2)
    outcome = run_attack(attack, abs_model, x, y, y.clone(), seed=0)
    assert outcome.error == [""] * len(x)
    assert outcome.success.all()
    assert (outcome.distance > 0).all() and torch.isfinite(outcome.distance).all()
    adv = outcome.adversarial
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        repredicted = abs_model(adv).argmax(1)
    assert (repredicted != y).all() and torch.equal(repredicted, outcome.adv_pred)
    torch.testing.assert_close(plain_distance(adv, x, "l2"), outcome.distance)
    assert (outcome.queries >= 2).all() and (outcome.queries <= COARSE + 2).all()


def test_the_fine_phase_only_shrinks_along_the_line_of_the_coarse_adversarial(abs_model, digits):
    x, y = digits
    coarse, coarse_queries = attacked(abs_model, x, y, fine=0)
    fine, _ = attacked(abs_model, x, y, fine=4)
    fewer, _ = attacked(abs_model, x, y, fine=1)
    # one query per coarse step s_0 = 0 .. s_k: found at s_k = k / (COARSE - 1), k >= 1
    k = coarse_queries - 1
    assert (k >= 1).all()
    with torch.no_grad():
        assert (abs_model(coarse).argmax(1) != y).all()
        assert (abs_model(fine).argmax(1) != y).all()
    to_coarse, to_fine = (coarse - x).flatten(1), (fine - x).flatten(1)
    # x + t (coarse - x), t in [s_{k-1} / s_k, 1]: on the segment, within the last interval
    t = (to_fine * to_coarse).sum(1) / (to_coarse * to_coarse).sum(1)
    torch.testing.assert_close(to_fine, t[:, None] * to_coarse, rtol=0, atol=1e-5)
    assert (t >= (k - 1) / k - 1e-6).all() and (t <= 1 + 1e-6).all()
    d_coarse, d_fewer, d_fine = (distance(a, x, "l2") for a in (coarse, fewer, fine))
    assert (d_fine <= d_fewer + 1e-5).all() and (d_fewer <= d_coarse + 1e-5).all()
    assert (d_fine < d_coarse).any(), "four bisections never improved on the coarse point"


def test_each_sample_is_attacked_independently_of_the_batch(abs_model, digits):
    """The authors store the coarse fraction at the step's index, not the sample's, so their
    fine search depends on the other samples of the batch; here permuting the batch permutes
    the adversarials."""
    x, y = digits
    order = torch.arange(len(x)).flip(0)
    adversarial, queries = attacked(abs_model, x, y, fine=3)
    permuted, permuted_queries = attacked(abs_model, x[order], y[order], fine=3)
    torch.testing.assert_close(permuted, adversarial[order], rtol=0, atol=1e-6)
    assert torch.equal(permuted_queries, queries[order])


def test_the_target_is_the_highest_logit_other_class_where_the_softmax_saturates(abs_model):
    """Test image 1 (label 2) under the published ABS: the calibrated probabilities of all
    other classes are one float32 number, so an argmax over them picks by index (class 0)."""
    logits = torch.tensor(
        [[-0.08571, -0.07988, -0.01400, -0.06240, -0.08362, -0.07918, -0.06208, -0.08092, -0.06373,
          -0.11334]]
    )  # fmt: skip
    y = torch.tensor([2])
    others = abs_model.calibrated_softmax(logits)[0, torch.arange(10) != 2]
    assert (others == others[0]).all()
    reconstructions = torch.arange(10.0).reshape(1, 10, 1, 1).expand(1, 10, 28, 28) / 10
    out = Inference(logits, torch.zeros(1, 10, 8), reconstructions)
    target = LatentDescentAttack._next_target(abs_model, out, y, torch.zeros(1, 1, 28, 28))
    assert torch.equal(target, torch.full((1, 1, 28, 28), 0.6))  # class 6's reconstruction


def authors_binary_projection(rec: torch.Tensor, orig: torch.Tensor) -> torch.Tensor:
    """The authors' abs_models/utils.py::binary_projection, in place and in order, as written."""
    rec = rec.clone()
    mask = (rec >= 0.5) & (orig >= 0.5)
    rec[mask] = orig[mask]
    mask = (rec < 0.5) & (orig < 0.5)
    rec[mask] = orig[mask]
    rec[(rec >= 0.5) & (orig < 0.5)] = 0.5
    rec[(rec < 0.5) & (orig >= 0.5)] = 0.49999
    return rec


def test_binary_projection_is_the_authors():
    torch.manual_seed(0)
    rec, orig = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    rec[0, 0, 0, :4] = torch.tensor([0.5, 0.5, 0.2, 0.7])
    orig[0, 0, 0, :4] = torch.tensor([0.5, 0.1, 0.5, 0.5])
    projected = binary_projection(rec, orig)
    assert torch.equal(projected, authors_binary_projection(rec, orig))
    assert torch.equal(projected >= 0.5, rec >= 0.5)


def test_latent_descent_breaks_binary_abs(digits):
    x, y = digits
    binary = small_abs(binarize_input=True, class_scalars=PUBLISHED_CLASS_SCALARS)
    with torch.no_grad():
        clean = binary(x).argmax(1)
    attack = LatentDescentAttack("latent_descent", "l2", COARSE, 2)
    outcome = run_attack(attack, binary, x, y, clean, seed=0)
    attacked_rows = clean == y
    assert attacked_rows.sum() >= 4 and outcome.error == [""] * len(x)
    assert outcome.success[attacked_rows].all() and (outcome.distance[attacked_rows] > 0).all()
    with torch.no_grad():
        assert (binary(outcome.adversarial).argmax(1) != y).all()
    # Projected targets move each pixel only up to the threshold's near side, so every point
    # before s = 1 binarizes as x: the coarse adversarial is the last point, whose pixels that
    # binarize unlike x's sit exactly at the threshold.
    x, y = x[attacked_rows], y[attacked_rows]
    coarse, queries = attacked(binary, x, y, fine=0)
    assert (queries == COARSE).all()
    flipped = (coarse >= 0.5) != (x >= 0.5)
    assert flipped.flatten(1).any(1).all()
    assert ((coarse[flipped] == 0.5) | (coarse[flipped] == 0.49999)).all()


def test_the_config_builds_it_and_the_suite_skips_it_on_a_cnn_with_a_reason(abs_model):
    overrides = ["norm=l2", "attack=[latent_descent,gaussian_noise]"]
    attacks = compose_config("evaluate", overrides, Path("unused")).attack
    attack = instantiate_attack("latent_descent", attacks.latent_descent)
    assert isinstance(attack, LatentDescentAttack) and attack.max_queries is None
    assert (attack.n_coarse_steps, attack.n_fine_steps, attack.norm) == (51, 2, "l2")
    assert attack.unsupported(abs_model) is None
    cnn = CNNDefense()
    assert "does not reconstruct" in attack.unsupported(cnn)
    usable, skipped = build_attacks(attacks, "l2", cnn)
    assert [a.name for a in usable] == ["gaussian_noise"]
    assert "does not reconstruct" in skipped["latent_descent"]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="n_coarse_steps"):
        LatentDescentAttack("ld", "l2", n_coarse_steps=1)
    with pytest.raises(ValueError, match="does not minimise norm=linf"):
        LatentDescentAttack("ld", "linf")
