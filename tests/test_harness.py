"""The harness: results independent of how the work was cut, per-sample budgets, the margin
rule at two batch sizes, errors that keep what was met, and the hand-over between attacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from abslab.attacks.base import Attack
from abslab.attacks.harness import run_attack
from abslab.attacks.queries import QueryModel
from abslab.attacks.suite import instantiate_attack
from abslab.callbacks.attack_evaluation import AttackEvaluation
from abslab.models.base import CleanPredictions
from abslab.results.per_sample import append_rows, read_rows


class Linear(nn.Module):
    """A fixed linear model computed row by row (no batched matrix product), so its logits do
    not depend on the batch: a sample's result may then depend only on the harness."""

    gradient = "exact"
    name = "linear"
    binarize_input = False
    reconstructs = False
    logit_scale = 1.0

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(10, 784, generator=generator) * 0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1)[:, None, :] * self.weight).sum(-1)


class Threshold(nn.Module):
    """Class 1 once the mean pixel passes 0.2 (+ `bonus` in batches of more than one image),
    else class 0: logits (-m, m), m = mean - 0.2, so the calibrated margin is 2m."""

    gradient = "exact"
    name = "threshold"
    binarize_input = False
    reconstructs = False
    logit_scale = 1.0

    def __init__(self, bonus: float = 0.0) -> None:
        super().__init__()
        self.bonus = bonus
        self.rows = 0  # rows that reached the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        m = x.flatten(1).mean(1) - 0.2 + (self.bonus if len(x) > 1 else 0.0)
        return torch.stack([-m, m], 1)


def flat(values: list[float]) -> torch.Tensor:
    """Constant images (N, 1, 28, 28) of the given values."""
    return torch.tensor(values).reshape(-1, 1, 1, 1).expand(-1, 1, 28, 28).clone()


class Shift(Attack):
    """Returns x + `by` (a fixed candidate, queried only if `query`), then raises if `fail`."""

    norms = ("linf",)

    def __init__(self, name: str, norm: str, by: float, query: bool = False, fail: bool = False):
        super().__init__(name, norm)
        self.by, self.query, self.fail = by, query, fail

    def run(self, model, x, y, start=None):
        moved = x + self.by
        if self.query:
            model.predict(moved, torch.arange(len(x)))
        if self.fail:
            raise RuntimeError("failed after querying")
        return moved


class StartRecorder(Attack):
    """Records the starting points it is given and returns them."""

    norms = ("linf",)
    accepts_start = True

    def run(self, model, x, y, start=None):
        self.seen = (start.clone(), model.has_start.clone())
        return start


def tiny(target: str, norm: str, **settings) -> Attack:
    return instantiate_attack("a", {"_target_": target, "norm": norm, **settings})


ATTACKS = {
    "fgsm": ("abslab.attacks.gradient.SingleStepAttack", "linf", {"eps_start": 0.05}),
    "pgd_random_start": (
        "abslab.attacks.gradient.IterativeAttack",
        "linf",
        {"eps_start": 0.3, "steps": 3, "random_start": True, "search": False},
    ),
    "gaussian_noise": (
        "abslab.attacks.noise.GaussianNoiseAttack",
        "l2",
        {"eps_start": 2.0, "bracket_steps": 6, "bisect_steps": 3},
    ),
    "salt_pepper": (
        "abslab.attacks.noise.SaltAndPepperAttack",
        "l0",
        {"epsilons": 10, "repetitions": 2},
    ),
    "pointwise": (
        "abslab.attacks.library.PointwiseAttack",
        "l0",
        {"init_epsilons": 10, "init_repetitions": 1},
    ),
    "deepfool": ("abslab.attacks.library.DeepFoolAttack", "l2", {"steps": 10}),
    "deepfool_linf": ("abslab.attacks.library.DeepFoolAttack", "linf", {"steps": 10}),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_sample_gets_the_same_row_alone_and_in_a_batch_of_7(name, mnist_arrays):
    model = Linear().eval()
    x = torch.from_numpy(mnist_arrays["test_images"][:7]).float().div(255).unsqueeze(1)
    with torch.no_grad():
        y = model(x).argmax(1)  # correctly classified by construction
    index = torch.arange(100, 107)
    target, norm, settings = ATTACKS[name]
    batch = run_attack(tiny(target, norm, **settings), model, x, y, y, 5, index)
    assert batch.success.sum() >= 3, f"{name} found only {int(batch.success.sum())}"
    for k in range(7):
        one = slice(k, k + 1)
        alone = run_attack(
            tiny(target, norm, **settings), model, x[one], y[one], y[one], 5, index[one]
        )
        assert torch.equal(alone.adversarial[0], batch.adversarial[k]), (name, k)
        for field in ("distance", "adv_pred", "queries", "gradients"):
            assert getattr(alone, field)[0] == getattr(batch, field)[k], (name, field, k)
    again = run_attack(tiny(target, norm, **settings), model, x, y, y, 5, index + 1)
    if name in ("gaussian_noise", "salt_pepper", "pgd_random_start", "pointwise"):
        assert not torch.equal(again.adversarial, batch.adversarial)  # other samples, other seeds


def test_a_frozen_sample_never_reaches_the_model_and_gets_no_gradient():
    threshold = Threshold()
    x, y = flat([0.05, 0.1, 0.15]), torch.zeros(3, dtype=torch.long)
    model = QueryModel(threshold, x, y, "linf", max_queries=5)
    rows = torch.tensor([0, 0, 0, 1, 2])
    model(x[rows], rows)
    answers = model(x[rows] + 0.3, rows)  # sample 0: 2 of its 3 rows left; all adversarial
    assert model.queries.tolist() == [5, 2, 2] and threshold.rows == 9
    assert model.frozen.tolist() == [True, False, False]
    assert answers.argmax(1).tolist() == [1, 1, 0, 1, 1]  # the frozen row: the true class
    inputs = (x[rows] + 0.3).requires_grad_(True)
    logits = model(inputs, rows)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y[rows], reduction="sum"), inputs)
    assert (grad[:3] == 0).all() and (grad[3:] != 0).all()
    assert model.gradients.tolist() == [0, 1, 1] and model.queries.tolist() == [5, 3, 3]


def test_budgets_are_per_sample_and_the_other_samples_go_on(mnist_arrays):
    model = Linear().eval()
    x = torch.from_numpy(mnist_arrays["test_images"][:4]).float().div(255).unsqueeze(1)
    y = model(x).argmax(1)
    settings = {"eps_start": 0.01, "bracket_steps": 20, "bisect_steps": 10}
    free = run_attack(tiny(*ATTACKS["fgsm"][:2], **settings), model, x, y, y, 0)
    budget = int(free.queries.min()) + 1
    capped = run_attack(
        tiny(*ATTACKS["fgsm"][:2], **settings, max_queries=budget), model, x, y, y, 0
    )
    assert (capped.queries == torch.clamp(free.queries, max=budget)).all()
    going = free.queries <= budget  # samples the budget did not stop: the same rows
    assert torch.equal(capped.distance[going], free.distance[going])
    assert capped.error == [""] * 4


def test_an_attack_that_raises_keeps_what_its_queries_met():
    x, y = flat([0.05, 0.1]), torch.zeros(2, dtype=torch.long)
    attack = Shift("s", "linf", by=0.16, query=True, fail=True)
    outcome = run_attack(attack, Threshold(), x, y, y, 0)
    assert outcome.success.all() and torch.allclose(outcome.distance, torch.tensor([0.16] * 2))
    assert all(e == "RuntimeError: failed after querying" for e in outcome.error)


def test_an_adversarial_needs_the_margin_at_batch_size_1_and_in_its_batch():
    x, y = flat([0.05, 0.05]), torch.zeros(2, dtype=torch.long)
    # mean 0.2001: margin 2e-4 < 1e-3 calibrated units, rejected; mean 0.201: 2e-3, kept
    assert not run_attack(Shift("s", "linf", by=0.1501), Threshold(), x, y, y, 0).success.any()
    kept = run_attack(Shift("s", "linf", by=0.151), Threshold(), x, y, y, 0)
    assert kept.success.all() and (kept.adv_pred == 1).all()
    # adversarial by 0.02 in a batch of two, by nothing alone: rejected
    batch_only = run_attack(Shift("s", "linf", by=0.15), Threshold(bonus=0.01), x, y, y, 0)
    assert not batch_only.success.any()


def _evaluate_batch(attacks, run_dir, x, y, rows=None):
    callback = AttackEvaluation(attacks, run_dir, seed=0, rows=rows, progress=False)
    callback.on_test_start(None, Threshold())
    index = torch.tensor([10, 11, 12])
    outputs = CleanPredictions(index, y, y)
    callback.on_test_batch_end(None, Threshold(), outputs, (x, y, index), 0)


def test_start_best_gets_the_smallest_adversarial_so_far_also_after_a_resume(tmp_path):
    x, y = flat([0.05, 0.05, 0.0]), torch.zeros(3, dtype=torch.long)
    near, far = Shift("near", "linf", by=0.16), Shift("far", "linf", by=0.3)
    recorder = StartRecorder("refine", "linf")
    recorder.start = "best"
    _evaluate_batch([far, near, recorder], tmp_path / "run", x, y)
    start, has_start = recorder.seen
    assert has_start.tolist() == [True, True, True]  # sample 3: only `far` (0.3) broke it
    assert torch.equal(start, torch.cat([x[:2] + 0.16, x[2:] + 0.3]))
    resumed = tmp_path / "resumed"
    _evaluate_batch([near], resumed, x, y)  # a run killed after its first attack
    again = StartRecorder("refine", "linf")
    again.start = "best"
    _evaluate_batch([near, again], resumed, x, y, read_rows(resumed / "per_sample.csv"))
    start, has_start = again.seen
    assert has_start.tolist() == [True, True, False]
    assert torch.equal(start, torch.cat([x[:2] + 0.16, x[2:]]))
    rows = read_rows(resumed / "per_sample.csv")
    assert [r["attack"] for r in rows] == ["near"] * 3 + ["refine"] * 3  # near not rerun


def test_the_suite_takes_paper_and_start_and_refuses_start_best_where_unsupported():
    fgsm = tiny(*ATTACKS["fgsm"][:2], eps_start=0.1, paper=True)
    assert fgsm.paper and fgsm.start == "own"
    assert fgsm.settings()["paper"] is True and fgsm.settings()["start"] == "own"
    with pytest.raises(ValueError, match=r"attack\.a\.start=best: SingleStepAttack cannot"):
        tiny(*ATTACKS["fgsm"][:2], eps_start=0.1, start="best")
    with pytest.raises(ValueError, match=r"attack\.a\.start=mine: choose one of own, best"):
        tiny(*ATTACKS["fgsm"][:2], eps_start=0.1, start="mine")


def test_old_csvs_without_gradients_and_note_still_read_and_extend(tmp_path):
    path = tmp_path / "per_sample.csv"
    header = "index,label,clean_pred,attack,success,adv_pred,distance,queries,seconds,error\n"
    path.write_text(header + "0,7,7,fgsm,1,3,0.25,20,0.01,\n")
    (old,) = read_rows(path)
    assert old["gradients"] is None and old["note"] == "" and old["distance"] == 0.25
    new = {**old, "index": 1, "gradients": 4, "note": "exact"}
    append_rows(path, [new])
    assert path.read_text().splitlines()[0].endswith(",queries,gradients,seconds,error,note")
    rows = read_rows(path)
    assert [(r["gradients"], r["note"]) for r in rows] == [(None, ""), (4, "exact")]
    assert np.isclose(rows[0]["seconds"], 0.01)


def test_a_start_between_the_margin_and_the_aim_is_refined_not_dropped():
    """A start verified at MARGIN in another batch can sit under AIM (float32 rounding): the
    refiner must still start from it, and what it returns must hold the MARGIN."""
    x, y = flat([0.05]), torch.zeros(1, dtype=torch.long)
    start = x + 0.1508  # mean 0.2008: margin 1.6e-3, between MARGIN (1e-3) and AIM (2e-3)
    refine = tiny(
        "abslab.attacks.library.BoundaryAttack",
        "l2",
        steps=20,
        init_directions=5,
        init_steps=5,
        start="best",
    )
    outcome = run_attack(refine, Threshold(), x, y, y, 0, start=start)
    assert outcome.success.all() and outcome.queries[0] > 1
    assert outcome.distance[0] <= (start - x).flatten().norm() + 1e-6
    mean = outcome.adversarial.flatten().mean()
    assert 2 * (mean - 0.2) >= 1e-3
