"""The paper's attacks that foolbox 3.3.4 (the authors' library) has: DeepFool, Boundary,
Pointwise and binarization refinement, run on the QueryModel so queries are counted and every
adversarial met is kept. Where foolbox 3 differs from the paper's foolbox 1.3, the docstring
says how (docs/attacks.md §4.2, §4.3)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import foolbox as fb
import torch

from abslab.attacks.base import Attack
from abslab.attacks.noise import SaltAndPepperAttack
from abslab.attacks.queries import QueryModel

SOURCE = f"foolbox {fb.__version__}"


def foolbox_model(model: QueryModel) -> fb.PyTorchModel:
    return fb.PyTorchModel(model, bounds=(0, 1), device=model.x.device)


def run_from_starts(
    attack: fb.attacks.base.MinimizationAttack,
    model: QueryModel,
    x: torch.Tensor,
    y: torch.Tensor,
    starts: torch.Tensor,
) -> torch.Tensor:
    """Run a foolbox attack that needs adversarial starting points on the samples whose start
    is adversarial now (foolbox aborts the whole batch on one that is not); the others keep
    x, which the harness records as a failure."""
    everyone = torch.arange(len(x), device=x.device)
    rows = everyone[model.start_from(starts, everyone)]
    out = x.clone()
    if len(rows) == 0:
        return out
    with model.only(rows):
        out[rows] = attack.run(
            foolbox_model(model),
            x[rows],
            fb.criteria.Misclassification(y[rows]),
            starting_points=starts[rows],
        )
    return out


def with_starts(
    model: QueryModel,
    x: torch.Tensor,
    start: torch.Tensor | None,
    make_starts: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Starting points (B, 1, 28, 28) for attacks that improve on an adversarial: the suite's
    `start` for the samples with one (`model.has_start`), make_starts(rows) (R, 1, 28, 28),
    run under `model.only(rows)`, for the others (all samples when `start` is None)."""
    if start is None:
        starts, need = x.clone(), torch.ones(len(x), dtype=torch.bool, device=x.device)
    else:
        starts, need = start.clone(), ~model.has_start
    rows = need.nonzero().flatten()
    if len(rows):
        with model.only(rows):
            starts[rows] = make_starts(rows)
    return starts


def blended_noise_starts(
    model: QueryModel, x: torch.Tensor, y: torch.Tensor, directions: int, steps: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """make_starts for `with_starts`: foolbox's LinearSearchBlendedUniformNoiseAttack (uniform
    noise, `directions` tries, then a `steps`-step line search towards x), decisions only."""
    init = fb.attacks.LinearSearchBlendedUniformNoiseAttack(directions=directions, steps=steps)

    def make_starts(rows: torch.Tensor) -> torch.Tensor:
        return init.run(foolbox_model(model), x[rows], fb.criteria.Misclassification(y[rows]))

    return make_starts


@dataclass(eq=False)
class DeepFoolAttack(Attack):
    """foolbox's L2DeepFoolAttack / LinfDeepFoolAttack. foolbox 1.3 (the paper) used 100 steps,
    the top-10 classes, cross-entropy, and an overshoot of 1.05 per step; foolbox 3 applies
    `overshoot` (0.02) once to the accumulated perturbation."""

    norms = ("l2", "linf")
    needs_gradient = True
    source = SOURCE
    settles = True  # foolbox queries every sample of the batch until all are adversarial

    steps: int = 100
    candidates: int = 10
    overshoot: float = 0.02
    loss: str = "crossentropy"

    def run(
        self, model: QueryModel, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        kind = fb.attacks.L2DeepFoolAttack if self.norm == "l2" else fb.attacks.LinfDeepFoolAttack
        attack = kind(
            steps=self.steps, candidates=self.candidates, overshoot=self.overshoot, loss=self.loss
        )
        return attack.run(foolbox_model(model), x, fb.criteria.Misclassification(y))


@dataclass(eq=False)
class BoundaryAttack(Attack):
    """foolbox's BoundaryAttack from foolbox's blended-uniform-noise starting points, or from
    the suite's best adversarial so far (`start: best`) where a sample has one.
    foolbox 1.3 (the paper): 5,000 iterations of up to 25 candidate directions each; foolbox 3
    tries one direction per step (about 2 queries per step), so `steps` counts differently."""

    norms = ("l2",)
    source = SOURCE
    accepts_start = True
    batched = False  # foolbox draws its noise and directions from torch's global generator

    steps: int = 5000
    spherical_step: float = 0.01
    source_step: float = 0.01
    step_adaptation: float = 1.5
    init_directions: int = 1000
    init_steps: int = 1000

    def run(
        self,
        model: QueryModel,
        x: torch.Tensor,
        y: torch.Tensor,
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        init = blended_noise_starts(model, x, y, self.init_directions, self.init_steps)
        starts = with_starts(model, x, start, init)
        attack = fb.attacks.BoundaryAttack(
            steps=self.steps,
            spherical_step=self.spherical_step,
            source_step=self.source_step,
            step_adaptation=self.step_adaptation,
        )
        return run_from_starts(attack, model, x, y, starts)


@dataclass(eq=False)
class PointwiseAttack(Attack):
    """foolbox's PointwiseAttack (the paper's; re-ported in foolbox 3.3.2) from the paper's
    salt-and-pepper starting points (`init_epsilons` x `init_repetitions`). norm l0: pixel
    resets only; l2: then the per-pixel 10-step binary search. foolbox 3 makes complete passes
    over the pixels instead of restarting after each success. `repetitions`: independent runs
    (fresh starts, fresh pixel orders), the smallest adversarial kept. With `start: best`, the
    first run starts from the suite's best adversarial where a sample has one (salt-and-pepper
    then runs on the whole batch, as it counts queries by batch row, if any sample has none)."""

    norms = ("l0", "l2")
    source = SOURCE
    accepts_start = True
    batched = False  # foolbox shuffles the pixels with numpy's global generator

    init_epsilons: int = 100
    init_repetitions: int = 10
    repetitions: int = 1

    def run(
        self,
        model: QueryModel,
        x: torch.Tensor,
        y: torch.Tensor,
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        init = SaltAndPepperAttack(self.name, self.norm, self.init_epsilons, self.init_repetitions)
        attack = fb.attacks.PointwiseAttack(l2_binary_search=self.norm == "l2")
        for repetition in range(self.repetitions):
            given = start if repetition == 0 else None
            starts = with_starts(model, x, given, lambda rows: init.run(model, x, y)[rows])
            run_from_starts(attack, model, x, y, starts)
        return model.best.clone()


def refine_binarized(
    model: QueryModel, x: torch.Tensor, y: torch.Tensor, adversarials: torch.Tensor
) -> torch.Tensor:
    """foolbox's BinarizationRefinementAttack for models that binarize at 0.5 (x >= 0.5 -> 1):
    each pixel that binarizes as in x gets x's value back, the others move to the threshold's
    near side. The binarized image is unchanged, so the distance can only shrink."""
    attack = fb.attacks.BinarizationRefinementAttack(threshold=0.5, included_in="upper")
    return attack.run(
        foolbox_model(model), x, fb.criteria.Misclassification(y), starting_points=adversarials
    )
