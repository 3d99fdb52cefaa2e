"""Distal adversarials (docs/paper.md §6.3): images optimised from uniform noise until
the model calls them a given digit with calibrated confidence >= a level. A model that keeps
noise far from every class needs a digit-like image; one that does not accepts noise."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from abslab.attacks.estimators import GradientEstimator
from abslab.attacks.queries import QueryModel
from abslab.models.base import Defense


@dataclass(frozen=True)
class DistalResult:
    """images (T, 1, 28, 28), confidence (T,) calibrated for the target, steps (T,) taken,
    reached (T,) whether the confidence level was reached."""

    images: torch.Tensor
    confidence: torch.Tensor
    steps: torch.Tensor
    reached: torch.Tensor


def distal_adversarials(
    model: Defense,
    targets: torch.Tensor,
    steps: int,
    lr: float = 1.0,
    momentum: float = 0.95,
    confidence: float = 0.9,
    seed: int = 0,
    estimator: GradientEstimator | None = None,
    progress: bool = True,
) -> DistalResult:
    """The authors' procedure (scripts/attacks.py), batched over `targets` (T,): uniform noise,
    then SGD with momentum on the cross-entropy to the target, clipped to [0, 1], each image
    frozen once model.calibrated_softmax gives its target >= `confidence`, for at most `steps`.
    Gradients: the model's own (exact, straight-through or envelope), or estimated from scores
    (`estimator`; needed for models without one, e.g. nearest_neighbor; the authors'
    coordinate-wise estimator with step 1 is GradientEstimator("coordinate", step=1.0))."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(len(targets), 1, 28, 28, generator=generator)
    queried = QueryModel(model, x, targets, "l2", estimator=estimator)
    rows = torch.arange(len(targets))
    velocity = torch.zeros_like(x)
    p = torch.zeros(len(targets))
    taken = torch.zeros(len(targets), dtype=torch.long)
    active = torch.ones(len(targets), dtype=torch.bool)
    for _ in tqdm(range(steps + 1), desc="distal", disable=not progress):
        idx = rows[active]
        xa = x[idx].clone().requires_grad_(True)
        logits = queried(xa, idx)  # one forward a step: confidence and gradient alike
        with torch.no_grad():
            p[idx] = model.calibrated_softmax(logits)[torch.arange(len(idx)), targets[idx]]
        going = p[idx] < confidence
        active[idx] = going
        if not going.any() or int(taken.max()) >= steps:
            break
        loss = F.cross_entropy(logits[going], targets[idx[going]], reduction="sum")
        (grad,) = torch.autograd.grad(loss, xa)
        idx, grad = idx[going], grad[going]
        with torch.no_grad():
            velocity[idx] = momentum * velocity[idx] + grad
            x[idx] = (x[idx] - lr * velocity[idx]).clamp(0, 1)
        taken[idx] += 1
    return DistalResult(x, p, taken, p >= confidence)
