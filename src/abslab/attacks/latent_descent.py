"""The paper's ABS-specific Latent Descent attack (docs/attacks.md §7), batched, written here.

The authors' `LineSearchAttack` walks from x towards ABS's own reconstruction of the most
likely wrong class; it needs the model's reconstructions (`Defense.infer`), so it serves only
models that declare `reconstructs` (ABS).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from abslab.attacks.base import Attack
from abslab.attacks.queries import QueryModel
from abslab.models.base import Defense, Inference


def binary_projection(reconstruction: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The authors' `binary_projection` (abs_models/utils.py), elementwise, not in place.

    Binary ABS sees only which side of 0.5 a pixel lies on: the point nearest x that binarizes
    as the reconstruction does. Where both lie on the same side the pixel stays x's; where they
    differ it becomes 0.5 (reconstruction >= 0.5) or 0.49999 (reconstruction < 0.5). Shapes:
    any, the same for both.
    """
    rec_high, x_high = reconstruction >= 0.5, x >= 0.5
    crossing = torch.where(rec_high, torch.full_like(x, 0.5), torch.full_like(x, 0.49999))
    return torch.where(rec_high == x_high, x, crossing)


@dataclass(eq=False)
class LatentDescentAttack(Attack):
    """Latent Descent: the authors' LineSearchAttack, batched, with their indexing bug fixed.

    Coarse phase: for s in linspace(0, 1, n_coarse_steps), query x_s = (1 - s) x + s R, where
    R is the reconstruction G_c(z*_c) of the most probable class c other than the label
    (highest logit: see `_next_target`), found by inference at the previous point (R = 0
    before the first step, as theirs; binary ABS: R <- binary_projection(R, previous point)).
    A sample stops at its first misclassified point, at coarse step k. Their code records that
    fraction at index i of the step (`coarse_steps[i]`) instead of index j of the sample, so
    with a batch their fine search starts from another sample's fraction (and from 0 for
    most); here it is kept per sample.

    Fine phase: `n_fine_steps` bisections of s in (s_{k-1}, s_k] on the line x -> R_k that the
    coarse adversarial lies on (R_k: the R it was made with), i.e. on the segment from x to the
    coarse adversarial over the last coarse interval. A misclassified midpoint becomes the
    upper end and the sample's adversarial, a correct one the lower end, so the adversarial
    only moves towards x (L2 = s |R_k - x|). The lower end s_{k-1} is presumed, not checked:
    the previous coarse point lay on the line to another R. Samples found at s = 0 (already
    misclassified) are not refined.

    Theirs (`n_ft_steps`) instead queries (1 - c) x + c x_adv at c = c_0 - 0.5, then
    c_0 +- 0.25, c_0 +- 0.125, ... (each step from c_0, not from the last c; + after a correct
    point, - after a misclassified one), where c_0 is the coarse fraction s_k although x_adv
    sits at c = 1, not at c = s_k (with the bug, c_0 is another sample's fraction, or 0; x_adv
    is a black image where the coarse phase found nothing). So c can fall below 0 (points
    beyond x, outside [0, 1]) or above 1, and every misclassified point replaces the returned
    adversarial, nearer or farther.

    Queries per sample: at most n_coarse_steps + n_fine_steps, all through `model.infer` and
    `model.predict`.
    """

    norms = ("l2",)
    needs_gradient = False
    source = "abslab (the authors' LineSearchAttack, batched, bug fixed)"

    n_coarse_steps: int = 51
    n_fine_steps: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_coarse_steps < 2 or self.n_fine_steps < 0:
            raise ValueError(
                f"attack {self.name}: n_coarse_steps={self.n_coarse_steps} must be >= 2 (s = 0 "
                f"and 1) and n_fine_steps={self.n_fine_steps} >= 0."
            )

    def unsupported(self, defense: Defense) -> str | None:
        """Latent Descent reads class reconstructions: only models that declare `reconstructs`."""
        if not defense.reconstructs:
            return (
                f"model={defense.name} does not reconstruct its input (reconstructs = False): "
                "Latent Descent walks towards a model's class reconstructions (ABS's `infer`)"
            )
        return super().unsupported(defense)

    def run(
        self, model: QueryModel, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, 1, 28, 28) in [0, 1], correctly classified; y (B,) -> adversarials (B, 1, 28, 28),
        x itself where the coarse line search found none."""
        fractions = torch.linspace(0, 1, self.n_coarse_steps, device=x.device)
        target = torch.zeros_like(x)  # R: the wrong class's reconstruction at the previous point
        line = torch.zeros_like(x)  # per sample, the R its coarse adversarial was made with
        step = torch.full((len(x),), -1, dtype=torch.long, device=x.device)  # k, -1: none yet
        adversarial = x.clone()
        for k, s in enumerate(fractions):
            rows = (step < 0).nonzero().flatten()
            if len(rows) == 0:
                break
            points = (1 - s) * x[rows] + s * target[rows]
            out = model.infer(points, rows)
            hit = out.logits.argmax(1) != y[rows]
            step[rows[hit]] = k
            line[rows[hit]] = target[rows[hit]]
            adversarial[rows[hit]] = points[hit]
            target[rows] = self._next_target(model.defense, out, y[rows], points)
        self._bisect(model, x, y, fractions, step, line, adversarial)
        return adversarial

    @staticmethod
    def _next_target(
        defense: Defense, out: Inference, y: torch.Tensor, points: torch.Tensor
    ) -> torch.Tensor:
        """The reconstruction (R, 1, 28, 28) of each point's most probable class other than y
        (R,), from inference `out` at points (R, 1, 28, 28); binary ABS: projected.

        The authors rank classes by the calibrated softmax, which orders them as the logits do;
        but in float32 it saturates (every other class at eta / Z once one class dominates, as
        on most clean digits), and their argmax breaks those exact ties by index. The logits
        give the same order without ties.
        """
        logits = out.logits.clone()
        logits[torch.arange(len(y)), y] = float("-inf")
        target = out.reconstructions[torch.arange(len(y)), logits.argmax(1)].unsqueeze(1)
        if defense.binarize_input:
            target = binary_projection(target, points)
        return target.to(points.dtype)

    def _bisect(
        self,
        model: QueryModel,
        x: torch.Tensor,
        y: torch.Tensor,
        fractions: torch.Tensor,
        step: torch.Tensor,
        line: torch.Tensor,
        adversarial: torch.Tensor,
    ) -> None:
        """Shrink each coarse adversarial (found at fractions[step], step (B,)) along its line
        x -> line (B, 1, 28, 28) within the last coarse interval; updates `adversarial`."""
        rows = (step > 0).nonzero().flatten()
        low, high = fractions[step[rows] - 1], fractions[step[rows]]
        for _ in range(self.n_fine_steps):
            if len(rows) == 0:
                break
            mid = ((low + high) / 2).reshape(-1, 1, 1, 1)
            points = (1 - mid) * x[rows] + mid * line[rows]
            hit = model.predict(points, rows) != y[rows]
            adversarial[rows[hit]] = points[hit]
            high = torch.where(hit, mid.flatten(), high)
            low = torch.where(hit, low, mid.flatten())
