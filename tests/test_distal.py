"""Distal adversarials: uniform noise optimised until the model calls it each digit with
calibrated confidence >= 0.9 (the authors' procedure, batched)."""

from __future__ import annotations

import torch

from abslab.attacks.distal import distal_adversarials
from abslab.attacks.estimators import GradientEstimator
from abslab.models.cnn import CNNDefense
from abslab.models.nearest_neighbor import NearestNeighborDefense
from conftest import REFERENCE_MODELS


def test_the_published_cnn_calls_noise_every_digit_with_high_confidence():
    model = CNNDefense(name="cnn", pretrained=str(REFERENCE_MODELS / "cnn")).eval()
    targets = torch.arange(10)
    result = distal_adversarials(model, targets, steps=100, progress=False)
    assert result.reached.all(), result.confidence
    assert (result.images >= 0).all() and (result.images <= 1).all()
    with torch.no_grad():
        p = model.calibrated_softmax(model(result.images))[targets, targets]
    torch.testing.assert_close(p, result.confidence)
    assert (result.steps > 0).all() and (result.steps < 100).all()  # it stops once reached


def test_models_without_gradients_take_estimated_ones_and_stop_at_the_step_budget():
    model = NearestNeighborDefense().eval()
    model.fit_reference(torch.rand(20, 1, 28, 28), torch.arange(20) % 10)
    estimator = GradientEstimator("antithetic", step=0.1, samples=10)
    start = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    result = distal_adversarials(
        model, torch.tensor([3, 7]), steps=2, estimator=estimator, progress=False
    )
    assert result.steps.tolist() == [2, 2] or result.reached.any()
    assert not torch.equal(result.images, start)  # the noise moved
