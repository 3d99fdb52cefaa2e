"""A greedy L0 attack on the 1-nearest-neighbour classifier, read from its reference set
(docs/attacks.md §11.1): an upper bound on the smallest L0 adversarial, proven the smallest
where a lower bound meets it.

Per sample, the squared distances s (N,) from the current image x' to every reference image are
kept. Setting pixel i from x'_i to v changes every s_r by (v - r_i)^2 - (x'_i - r_i)^2, a
number in [-1, 1]; so after one change a group's nearest reference is among those within 2 of
its nearest now, and every single-pixel change's effect on the 1-NN margin

    min_{r of the label} |x' - r| - min_{r of another class} |x' - r|

is one vectorised update over those few references. Each step makes the change (pixel, value)
that raises the margin most, each pixel at most once, until the margin reaches the aim; then
changed pixels are reverted, the one that costs the least margin first, while the image stays
adversarial. A targeted run replaces the other classes' nearest by one other-class reference t.

A lower bound then often proves the result smallest (`smallest_proven`): |z - t|^2 - |z - r|^2
is linear in the image z, so each changed pixel lowers it by a known most. Samples are noted
"exact" (proven) or "upper bound".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from abslab.attacks.nearest_neighbor import EXACT, UPPER_BOUND, References, ReferenceSetAttack
from abslab.attacks.queries import QueryModel

CHUNK_ELEMENTS = 2**23  # float64 entries of one block of references x options: 64 MiB
REACH = 2.0  # a group's nearest after one change lies within this squared distance of it now


class Sample:
    """One sample's search state: x (D,) float64, its label's rows `same` and the other rows
    `other` of the reference set (index tensors), and the margin the search aims at (distance
    units)."""

    def __init__(self, references: References, x: torch.Tensor, label: int, goal: float) -> None:
        self.references = references
        self.x = x
        self.same = (references.labels == label).nonzero().flatten()
        self.other = (references.labels != label).nonzero().flatten()
        self.goal = goal
        self.sq_dist = (references.sq_norms + x @ x - 2 * references.images @ x).clamp_min(0)

    def margin(self, sq_dist: torch.Tensor) -> float:
        """The 1-NN margin of squared distances sq_dist (N,): >= goal means adversarial."""
        nearest_same, nearest_other = sq_dist[self.same].min(), sq_dist[self.other].min()
        return float(nearest_same.sqrt() - nearest_other.sqrt())

    def change(self, image: torch.Tensor, sq_dist: torch.Tensor, pixel: int, value: float) -> None:
        """Set image[pixel] (D,) to value in place, updating sq_dist (N,) to match."""
        column = self.references.images[:, pixel]
        sq_dist += (value - column) ** 2 - (float(image[pixel]) - column) ** 2
        image[pixel] = value


@dataclass(eq=False)
class NearestNeighborGreedyL0(ReferenceSetAttack):
    """Greedy pixel changes against a `nearest_neighbor` model's reference set, then pruning;
    the model is queried once per sample, to verify the float32 image.

    - `steps`: changes per run at most; a sample no run makes adversarial keeps x (a failure).
    - `targets`: besides the untargeted run (margin against the other classes' nearest), one
      run against each of the `targets` other-class references nearest to x (margin against
      that reference, its pixel values also tried); the smallest result is kept. 0: untargeted.
    - `aim_factor`: the margin aimed at, in multiples of the harness's aim
      (abslab.attacks.queries.AIM, calibrated units: divided by the model's logit_scale), so
      that float32 rounding cannot undo the win.
    """

    norms = ("l0",)
    accepts_start = False

    steps: int = 50
    targets: int = 0
    aim_factor: float = 1.5

    def run(
        self,
        model: QueryModel,
        x: torch.Tensor,
        y: torch.Tensor,
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, 1, 28, 28) correctly classified, y (B,) -> adversarials (B, 1, 28, 28), x
        itself where no run found one or the model does not confirm it."""
        references = References(*model.defense.reference_set())
        flat = x.detach().to("cpu", torch.float64).flatten(1)
        goals = self.aim_factor * model.aim.cpu() / model.defense.logit_scale
        adversarial = x.detach().clone()
        found = torch.zeros(len(x), dtype=torch.bool)
        exact = torch.zeros(len(x), dtype=torch.bool)
        for i in range(len(x)):
            sample = Sample(references, flat[i], int(y[i]), float(goals[i]))
            image = self.attack(sample)
            if image is not None:
                found[i] = True
                exact[i] = smallest_proven(sample, int((image != sample.x).sum()))
                adversarial[i] = image.reshape(x.shape[1:]).to(x)
        lost = self.not_adversarial(model, adversarial, y, found)
        adversarial[lost] = x[lost]
        rows = torch.arange(len(x))
        for where, note in [
            (found & ~lost & exact, EXACT),
            (found & ~lost & ~exact, UPPER_BOUND),
            (~found, f"no adversarial within attack.{self.name}.steps changes"),
            (lost, f"not adversarial by the harness's margin: raise attack.{self.name}.aim_factor"),
        ]:
            model.set_note(rows[where].to(x.device), note)
        return adversarial

    def attack(self, sample: Sample) -> torch.Tensor | None:
        """The smallest pruned adversarial (D,) float64 of the untargeted and the targeted
        runs, or None where none reaches the goal."""
        nearest_other = sample.other[sample.sq_dist[sample.other].argsort()]
        best: torch.Tensor | None = None
        for target in [None, *nearest_other[: self.targets].tolist()]:
            image = self.greedy(sample, target)
            if image is not None:
                image = self.prune(sample, image)
                if best is None or (image != sample.x).sum() < (best != sample.x).sum():
                    best = image
        return best

    def greedy(self, sample: Sample, target: int | None) -> torch.Tensor | None:
        """Up to `steps` greedy changes of x (against `target`, or untargeted: None); the
        image (D,) once its margin reaches the goal, else None."""
        image, sq_dist = sample.x.clone(), sample.sq_dist.clone()
        for _ in range(self.steps):
            if sample.margin(sq_dist) >= sample.goal:
                return image
            pixel, value = self.best_change(sample, image, sq_dist, target)
            sample.change(image, sq_dist, pixel, value)
        return image if sample.margin(sq_dist) >= sample.goal else None

    def best_change(
        self,
        sample: Sample,
        image: torch.Tensor,
        sq_dist: torch.Tensor,
        target: int | None,
    ) -> tuple[int, float]:
        """The (pixel, value) that raises the (targeted) margin most, among unchanged pixels
        and values in {0, 1} (and the target's pixel value), image and sq_dist as now."""
        images = sample.references.images
        values = torch.tensor([0.0, 1.0], dtype=image.dtype).expand(len(image), 2)
        if target is not None:
            values = torch.cat([values, images[target][:, None]], 1)  # (D, V)
        same = within_reach(sample.same, sq_dist)
        other = within_reach(sample.other, sq_dist) if target is None else torch.tensor([target])
        nearest_same = smallest_after(images[same], sq_dist[same], image, values)
        nearest_other = smallest_after(images[other], sq_dist[other], image, values)
        objective = nearest_same.sqrt() - nearest_other.sqrt()  # (D, V)
        changed = (image != sample.x)[:, None]  # every change sets a value other than x's
        objective[(values == image[:, None]) | changed] = float("-inf")
        best = int(objective.argmax())
        pixel, column = divmod(best, values.shape[1])
        return pixel, float(values[pixel, column])

    @staticmethod
    def prune(sample: Sample, adversarial: torch.Tensor) -> torch.Tensor:
        """adversarial (D,) with changed pixels reverted to x, each time the one whose revert keeps
        the largest margin, while that margin still reaches the goal."""
        images, x = sample.references.images, sample.x
        image, sq_dist = x.clone(), sample.sq_dist.clone()
        for pixel in (adversarial != x).nonzero().flatten().tolist():
            sample.change(image, sq_dist, pixel, float(adversarial[pixel]))
        while True:
            pixels = (image != x).nonzero().flatten()
            if len(pixels) == 0:
                return image
            columns = images[:, pixels]  # (N, k)
            reverted = (
                sq_dist[:, None] + (x[pixels] - columns) ** 2 - (image[pixels] - columns) ** 2
            )
            margins = [sample.margin(reverted[:, k]) for k in range(len(pixels))]
            k = max(range(len(pixels)), key=margins.__getitem__)
            if margins[k] < sample.goal:
                return image
            sample.change(image, sq_dist, int(pixels[k]), float(x[pixels[k]]))


def smallest_proven(sample: Sample, changed: int) -> bool:
    """Whether no image with fewer than `changed` pixels of x changed (to any values in [0, 1])
    is adversarial: none beats even r, the label's reference nearest to x.

    For another class's reference t, |z - t|^2 - |z - r|^2 = 2 z.(r - t) + |t|^2 - |r|^2 is
    linear in z, so setting pixel i lowers it by 2 |r_i - t_i| (1 - x_i where t_i > r_i, else
    x_i) at most: t can win with k pixels only if the k largest of these exceed it at x. Each
    is at most 2, so only the t with a gap under 2 k need the top-k.
    """
    if changed <= 1:
        return True
    images, x = sample.references.images, sample.x
    nearest = sample.same[sample.sq_dist[sample.same].argmin()]
    r = images[nearest]
    gap = sample.sq_dist[sample.other] - sample.sq_dist[nearest]  # (C,) at x
    close = (gap < 2 * (changed - 1)).nonzero().flatten()
    block = max(1, CHUNK_ELEMENTS // len(x))
    for start in range(0, len(close), block):
        rows = close[start : start + block]
        refs = images[sample.other[rows]]  # (c, D)
        most = 2 * (r - refs).abs() * torch.where(refs > r, 1 - x, x)
        if (most.topk(changed - 1, dim=1).values.sum(1) > gap[rows]).any():
            return False
    return True


def within_reach(rows: torch.Tensor, sq_dist: torch.Tensor) -> torch.Tensor:
    """The rows (R,) whose squared distance is within REACH of their nearest: one change
    (each squared distance moves by at most 1) cannot make any other row the nearest."""
    near = sq_dist[rows]
    return rows[near <= near.min() + REACH]


def smallest_after(
    images: torch.Tensor, sq_dist: torch.Tensor, image: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """min over references (C, D) of their squared distance (C,) after setting pixel i of
    image (D,) to values[i, v] (D, V), for every (i, v): (D, V), in blocks of references."""
    pixels, options = values.shape
    block = max(1, CHUNK_ELEMENTS // (pixels * options))
    smallest = torch.full_like(values, float("inf"))
    for start in range(0, len(images), block):
        refs = images[start : start + block].T  # (D, c)
        now = (image[:, None] - refs) ** 2  # (D, c)
        after = (values[:, :, None] - refs[:, None, :]) ** 2 - now[:, None, :]
        after += sq_dist[start : start + block]
        smallest = torch.minimum(smallest, after.amin(2))
    return smallest
