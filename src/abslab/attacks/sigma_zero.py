"""σ-zero (Cinà et al., ICLR 2025): a gradient attack minimising L0, written here from the paper
and its authors' code (adv-lib's `sigma_zero` pulls torchvision and visdom; docs/attacks.md).

The perturbation δ descends the clamped difference of logits plus a smooth L0,
mean_i δ_i² / (δ_i² + σ), with L-inf-normalised gradients fed to Adam under a cosine-annealed
step size. After each step δ stays inside [0, 1] - x, and components with |δ_i| below a per-sample
threshold τ are zeroed; τ rises while the current point is adversarial (sparser) and falls while
it is not (denser).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from abslab.attacks.base import Attack
from abslab.attacks.distances import distance
from abslab.attacks.queries import QueryModel, margin

ADAM_BETAS = (0.9, 0.999)  # the authors' torch.optim.Adam defaults
ADAM_EPS = 1e-8


@dataclass(eq=False)
class SigmaZeroAttack(Attack):
    """σ-zero, batched: `steps` gradient steps per sample, keeping each sample's sparsest
    adversarial (the QueryModel also keeps every one it meets).

    `lr` is the first step size η0, annealed to η0/10; `sigma` the smoothness of the L0
    approximation (smaller: sharper); `threshold` τ's start and `threshold_factor` its change
    per step (times the current step size). A sample stops once its best adversarial changes a
    single pixel (nothing sparser exists) or has used its `max_queries`. `start` is unused
    (accepts_start False): σ-zero starts from x itself.
    """

    norms = ("l0",)
    needs_gradient = True

    steps: int = 1000
    lr: float = 1.0
    sigma: float = 1e-3
    threshold: float = 0.3
    threshold_factor: float = 0.01

    def step_size(self, i: int) -> float:
        """The cosine-annealed step size after step i (0-based): from lr down to lr/10."""
        return self.lr * (0.1 + 0.9 * (1 + math.cos(math.pi * (i + 1) / self.steps)) / 2)

    def run(
        self,
        model: QueryModel,
        x: torch.Tensor,
        y: torch.Tensor,
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, 1, 28, 28) in [0, 1], labels y (B,) -> the sparsest adversarial met per
        sample (x itself where none was found)."""
        n, pixels = len(x), x[0].numel()
        delta = torch.zeros_like(x)
        mean, second = torch.zeros_like(x), torch.zeros_like(x)  # Adam's moments
        tau = torch.full((n, 1, 1, 1), self.threshold, device=x.device)
        best, best_l0 = x.clone(), torch.full((n,), float(pixels) + 1, device=x.device)
        beta1, beta2 = ADAM_BETAS
        lr = self.lr
        for i in range(self.steps):
            rows = ((best_l0 > 1) & ~model.frozen).nonzero().flatten()
            if len(rows) == 0:
                break
            d = delta[rows].requires_grad_(True)
            logits = model(x[rows] + d, rows)
            squared = d.square()
            smooth_l0 = (squared / (squared + self.sigma)).flatten(1).sum(1) / pixels
            # how far the label leads the best other class, once it leads
            lead = (-margin(logits, y[rows], 1.0)).clamp(min=0)
            loss = lead + smooth_l0
            (grad,) = torch.autograd.grad(loss.sum(), d)
            with torch.no_grad():
                adversarial = logits.argmax(1) != y[rows]
                l0 = distance(x[rows] + d, x[rows], "l0")
                better = adversarial & (l0 < best_l0[rows])
                best[rows[better]] = (x[rows] + d)[better]
                best_l0[rows[better]] = l0[better]
                grad = grad / grad.flatten(1).abs().amax(1).clamp(min=1e-12).reshape(-1, 1, 1, 1)
                mean[rows] = beta1 * mean[rows] + (1 - beta1) * grad
                second[rows] = beta2 * second[rows] + (1 - beta2) * grad.square()
                m_hat = mean[rows] / (1 - beta1 ** (i + 1))
                v_hat = second[rows] / (1 - beta2 ** (i + 1))
                moved = d - lr * m_hat / (v_hat.sqrt() + ADAM_EPS)
                moved = (x[rows] + moved).clamp(0, 1) - x[rows]
                lr = self.step_size(i)
                change = self.threshold_factor * lr
                sign = adversarial.float() * 2 - 1  # adversarial: sparser; not: denser
                tau[rows] = (tau[rows] + change * sign.reshape(-1, 1, 1, 1)).clamp(0, 1)
                delta[rows] = torch.where(moved.abs() < tau[rows], 0.0, moved)
        return best
