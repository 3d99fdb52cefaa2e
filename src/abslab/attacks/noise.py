"""Noise attacks, written here: additive Gaussian noise (L2) and the paper's salt and pepper (L0).

foolbox 3's salt-and-pepper minimises L2, not the L0 of the paper's rows, and its Gaussian noise
has no per-sample epsilon; both are a few lines of batched tensor code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from abslab.attacks.base import Attack, Candidate, EpsilonSearchAttack, along
from abslab.attacks.distances import distance
from abslab.attacks.queries import QueryModel


@dataclass(eq=False)
class GaussianNoiseAttack(EpsilonSearchAttack):
    """x + eps * n/|n|_2 with n ~ N(0, I), clipped to [0, 1], inside the shared epsilon search;
    `repetitions` independent noise directions, the smallest adversarial kept.

    foolbox 1.3 scaled noise of std eps/sqrt(3) by eps (a quirk) over a linear grid; here eps is
    the L2 norm of the noise before clipping, as foolbox 3's L2AdditiveGaussianNoiseAttack.
    """

    norms = ("l2",)

    repetitions: int = 1

    def run(
        self, model: QueryModel, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        for _ in range(self.repetitions):
            super().run(model, x, y)
        return model.best.clone()

    def make_candidate(self, model: QueryModel, x: torch.Tensor, y: torch.Tensor) -> Candidate:
        noise = model.randn(torch.arange(len(x), device=x.device))  # each sample's own numbers
        return along(x, noise / noise.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1))


def salt_and_pepper(x: torch.Tensor, p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Each pixel of x (R, 1, 28, 28) set to 1 with probability p/2 and to 0 with p/2, p (R,),
    from uniform numbers u (R, 1, 28, 28)."""
    p = p.reshape(-1, 1, 1, 1)
    return torch.where(u >= 1 - p / 2, torch.ones_like(x), torch.where(u < p / 2, 0.0, x))


@dataclass(eq=False)
class SaltAndPepperAttack(Attack):
    """The paper's salt-and-pepper noise attack (foolbox 1.3), batched, minimising L0.

    Per repetition: probabilities p = max_p * k/epsilons, k = 1..epsilons, until the sample is
    misclassified; then max_p <- 1.2 p for the next repetition. Candidates not closer (L0) than
    the best so far are not queried. Queries: at most epsilons * repetitions per sample.
    """

    norms = ("l0", "l2")

    epsilons: int = 100
    repetitions: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epsilons < 1 or self.repetitions < 1:
            raise ValueError(f"attack {self.name}: epsilons and repetitions must be >= 1.")

    def run(
        self, model: QueryModel, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        best, best_distance = x.clone(), torch.full((len(x),), float("inf"), device=x.device)
        max_p = torch.ones(len(x), device=x.device)
        for _ in range(self.repetitions):
            searching = torch.ones(len(x), dtype=torch.bool, device=x.device)
            for k in range(1, self.epsilons + 1):
                rows = searching.nonzero().flatten()
                if len(rows) == 0:
                    break
                p = max_p[rows] * k / self.epsilons
                noisy = salt_and_pepper(x[rows], p, model.rand(rows))  # per-sample numbers
                found = distance(noisy, x[rows], self.norm)
                closer = found < best_distance[rows]
                rows, p, noisy, found = rows[closer], p[closer], noisy[closer], found[closer]
                if len(rows) == 0:
                    continue
                success = model.predict(noisy, rows) != y[rows]
                max_p[rows[success]] = (1.2 * p[success]).clamp(max=1)
                searching[rows[success]] = False
                best[rows[success]] = noisy[success]
                best_distance[rows[success]] = found[success]
        return best
