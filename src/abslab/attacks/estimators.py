"""Gradients estimated from a model's scores: the paper's "w/ GE" attacks (docs/attacks.md §5).

The estimators approximate the Jacobian of the logits by finite differences along directions,
from forward queries only. One estimate at a point then serves every loss an attack
differentiates (BIM's cross-entropy, DeepFool's logit differences to each class), through
autograd's backward pass of `EstimatedLogits`. foolbox 1.3 estimated the cross-entropy's
gradient directly, once per label; the linearisation here agrees with it to first order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from abslab.attacks.ranges import FRACTION, Range, check_value

# query(images (R, 1, 28, 28), rows (R,)) -> logits (R, 10): counted forward queries of the
# batch's samples `rows` (abslab.attacks.queries.QueryModel, whose per-sample generators the
# antithetic directions also draw from).
Query = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Sampled(Protocol):
    """A Query that also draws random numbers per sample (QueryModel): `randn(rows, shape)`
    -> (R, *shape), row r from sample rows[r]'s own generator."""

    x: torch.Tensor

    def __call__(self, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor: ...

    def randn(self, rows: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor: ...


ESTIMATORS = ("coordinate", "antithetic")
PIXELS = 28 * 28


@dataclass(frozen=True)
class GradientEstimator:
    """How a _ge attack's gradients are estimated (conf/estimator: kind, step, samples).

    - coordinate (the paper's, foolbox 1.3's CoordinateWiseGradientEstimator): central
      differences along every pixel with step `step`, both points clipped to [0, 1]; 2 x 784 =
      1,568 queries per gradient, so `samples` must be None. Each difference is divided by the
      step actually taken, so a pixel at a bound gets a one-sided difference (foolbox divided
      by 2 * step regardless).
    - antithetic (foolbox 1.3.1's EvolutionaryStrategiesGradientEstimator): `samples` queries,
      pairs x +- step * u with u ~ N(0, I); cheaper and noisier.
    `chunk`: images per forward call, to bound memory. Errors name the key as `key=value`.
    """

    kind: str = "coordinate"
    step: float = 0.1
    samples: int | None = None
    chunk: int = 4096

    def __post_init__(self) -> None:
        if self.kind not in ESTIMATORS:
            raise ValueError(f"kind={self.kind!r}: must be one of {', '.join(ESTIMATORS)}.")
        check_value("step", self.step, FRACTION)  # pixels lie in [0, 1]
        if self.kind == "antithetic":
            check_value("samples", self.samples, Range(2, integer=True, even=True))  # pairs +-u
        elif self.samples is not None:
            raise ValueError(
                f"samples={self.samples}: must be null for kind=coordinate (2 x 784 queries a "
                "gradient); samples counts the queries of kind=antithetic."
            )

    def queries_per_gradient(self) -> int:
        return 2 * PIXELS if self.kind == "coordinate" else self.samples

    def directions(self, model: Sampled, rows: torch.Tensor) -> torch.Tensor:
        """Unit-free directions (R, D, 784) along which to difference, for samples rows (R,);
        antithetic: drawn from each sample's own generator (QueryModel.randn), so a sample's
        estimate does not depend on its batch."""
        if self.kind == "coordinate":
            return torch.eye(PIXELS, device=model.x.device).expand(len(rows), PIXELS, PIXELS)
        return model.randn(rows, (self.samples // 2, PIXELS))

    def jacobian(self, model: Sampled, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Estimated Jacobian (R, 10, 784) of the logits at x (R, 1, 28, 28) for samples rows
        (R,), from `queries_per_gradient()` queries per sample through `model`; forward calls
        of at most `chunk` images."""
        per_call = max(1, self.chunk // self.queries_per_gradient())
        parts = [
            self._jacobian(model, x[start : start + per_call], rows[start : start + per_call])
            for start in range(0, len(x), per_call)
        ]
        return torch.cat(parts)

    def _jacobian(self, model: Sampled, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        n = len(x)
        flat = x.reshape(n, 1, PIXELS)
        directions = self.directions(model, rows)  # (R, D, 784)
        d = directions.shape[1]
        points = torch.cat([flat + self.step * directions, flat - self.step * directions], 1)
        with torch.no_grad():
            images = points.clamp(0, 1).reshape(-1, 1, 28, 28)
            logits = model(images, rows.repeat_interleave(2 * d)).reshape(n, 2 * d, -1)
        difference = logits[:, :d] - logits[:, d:]  # (R, D, 10)
        if self.kind == "antithetic":
            return torch.einsum("rdk,rdp->rkp", difference, directions) / (2 * self.step * d)
        taken = (flat + self.step).clamp(0, 1) - (flat - self.step).clamp(0, 1)  # (R, 1, 784)
        return (difference / taken.transpose(1, 2)).transpose(1, 2)


class EstimatedLogits(torch.autograd.Function):
    """logits = scores(x, rows) with the backward pass answered by `jacobian(x, rows)` (R, 10,
    784), an estimate: autograd never reaches the defense, whose forward runs on detached
    inputs."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, scores: Query, jacobian: Query, rows: torch.Tensor
    ) -> torch.Tensor:
        ctx.jacobian, ctx.rows = jacobian, rows
        ctx.save_for_backward(x.detach())
        return scores(x.detach(), rows)

    @staticmethod
    def backward(ctx: Any, grad_logits: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (x,) = ctx.saved_tensors
        jacobian = ctx.jacobian(x, ctx.rows)  # (R, 10, 784)
        grad = torch.einsum("rk,rkp->rp", grad_logits, jacobian)
        return grad.reshape(x.shape), None, None, None
