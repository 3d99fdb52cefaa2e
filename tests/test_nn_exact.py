"""The exact 1-NN attack against brute force: every other-class reference's problem solved
with every condition written out, no bound and no constraint generation, by other methods than
the attack's (L2: scipy's SLSQP, not DAQP; L-inf: HiGHS's interior point, not its simplex), on a
tiny low-resolution reference set (3 images of each class, 4x4 pixels)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize

from abslab.attacks.harness import run_attack
from abslab.attacks.nearest_neighbor import NearestNeighborExact
from abslab.attacks.queries import QueryModel
from abslab.models.cnn import CNNDefense
from abslab.models.nearest_neighbor import NearestNeighborDefense
from conftest import run_evaluate, tiny_overrides

MARGIN = 1e-2  # squared-L2 units, as the config: the harness then sees a margin above its own
PIXELS = 16


@pytest.fixture
def nearest_neighbor() -> NearestNeighborDefense:
    """30 black-and-white 4x4 references, 3 of each class: the box binds, as on MNIST."""
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(30, 1, 4, 4, generator=generator) < 0.3).float()
    labels = torch.arange(10).repeat(3)  # interleaved: fit_reference sorts them by class
    model = NearestNeighborDefense()
    model.fit_reference(images, labels)
    return model


def midpoints(model: NearestNeighborDefense) -> tuple[torch.Tensor, torch.Tensor]:
    """8 images halfway between two references of one class (classes 0-7), and the model's
    labels of them (so all "correctly classified"): there several conditions of the label and
    several candidates compete."""
    refs, labels = model.reference_set()
    first, second = torch.arange(0, 24, 3), torch.arange(1, 24, 3)
    assert torch.equal(labels[first], labels[second])
    x = ((refs[first] + refs[second]) / 2).reshape(8, 1, 4, 4)
    return x, model(x).argmax(1)


def brute_force(model: NearestNeighborDefense, x: torch.Tensor, label: int, norm: str) -> float:
    """min over every other-class reference j of the smallest perturbation d (L2: SLSQP;
    L-inf: HiGHS interior point) with |x + d - r_j|^2 <= |x + d - r_i|^2 - MARGIN for every r_i
    of the label, in the box."""
    refs, labels = (t.double().numpy() for t in model.reference_set())
    x = x.double().flatten().numpy()
    same = refs[labels == label]
    best = np.inf
    for r_j in refs[labels != label]:

        def conditions(v: np.ndarray, r_j: np.ndarray = r_j) -> np.ndarray:
            z = x + v[:PIXELS]  # >= 0 where r_j beats r_i by the margin
            return ((z - same) ** 2).sum(1) - ((z - r_j) ** 2).sum() - MARGIN

        box = [(-xk, 1 - xk) for xk in x]
        if norm == "l2":
            result = minimize(
                lambda v: v @ v,
                r_j - x,
                jac=lambda v: 2 * v,
                method="SLSQP",
                bounds=box,
                constraints=[{"type": "ineq", "fun": conditions}],
                options={"ftol": 1e-14},
            )
            value = np.sqrt(result.fun)
        else:  # variables (d, t), every condition written out: min t, -t <= d_k <= t
            rows = np.c_[2 * (same - r_j), np.zeros(len(same))]
            ones = np.ones((PIXELS, 1))
            result = linprog(
                np.r_[np.zeros(PIXELS), 1.0],
                A_ub=np.r_[rows, np.c_[np.eye(PIXELS), -ones], np.c_[-np.eye(PIXELS), -ones]],
                b_ub=np.r_[
                    (same**2).sum(1) - r_j @ r_j - MARGIN - rows[:, :PIXELS] @ x,
                    np.zeros(2 * PIXELS),
                ],
                bounds=[*box, (0, None)],
                method="highs-ipm",
            )
            value = result.fun
        if result.success and conditions(result.x).min() > -1e-8:
            best = min(best, value)
    return best


def attack_and_notes(
    model: NearestNeighborDefense, x: torch.Tensor, y: torch.Tensor, monkeypatch, **settings
) -> tuple[torch.Tensor, dict[int, str], QueryModel, NearestNeighborExact]:
    notes: dict[int, str] = {}

    def set_note(self: QueryModel, rows: torch.Tensor, text: str) -> None:
        notes.update({int(row): text for row in rows})

    monkeypatch.setattr(QueryModel, "set_note", set_note, raising=False)
    settings = {"norm": "l2", "initial_constraints": 1, "constraints_per_round": 1} | settings
    attack = NearestNeighborExact("nn_exact", margin=MARGIN, **settings)
    queries = QueryModel(model, x, y, attack.norm)
    return attack.run(queries, x, y), notes, queries, attack


def measured(adversarial: torch.Tensor, x: torch.Tensor, norm: str) -> np.ndarray:
    diff = (adversarial - x).flatten(1).double()
    return (diff.norm(dim=1) if norm == "l2" else diff.abs().amax(1)).numpy()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_distances_equal_brute_force_and_every_adversarial_wins(
    nearest_neighbor, norm, monkeypatch
):
    x, y = midpoints(nearest_neighbor)
    adversarial, notes, queries, _ = attack_and_notes(
        nearest_neighbor, x, y, monkeypatch, norm=norm
    )
    expected = [brute_force(nearest_neighbor, x[i], int(y[i]), norm) for i in range(len(x))]
    np.testing.assert_allclose(measured(adversarial, x, norm), expected, rtol=1e-4, atol=1e-5)
    assert (nearest_neighbor(adversarial).argmax(1) != y).all()
    assert notes == dict.fromkeys(range(len(x)), "exact")
    assert queries.queries.tolist() == [1] * len(x)  # the search reads references, no queries


def test_the_bound_stops_early_and_the_result_is_exact(nearest_neighbor, monkeypatch):
    refs, _ = nearest_neighbor.reference_set()
    x = (refs[:3].reshape(3, 1, 4, 4) + 0.02).clamp(0, 1)  # beside references of class 0
    y = nearest_neighbor(x).argmax(1)
    assert y.tolist() == [0, 0, 0]
    solved: list[int] = []
    original = NearestNeighborExact.solve_candidate

    def counting(self, references, point, j, *rest):
        solved.append(j)
        return original(self, references, point, j, *rest)

    monkeypatch.setattr(NearestNeighborExact, "solve_candidate", counting)
    adversarial, notes, _, _ = attack_and_notes(
        nearest_neighbor, x, y, monkeypatch, initial_constraints=3
    )
    assert len(solved) < 3 * 27  # 27 other-class references per sample: most never solved
    expected = [brute_force(nearest_neighbor, x[i], 0, "l2") for i in range(3)]
    np.testing.assert_allclose(measured(adversarial, x, "l2"), expected, rtol=1e-4)
    assert notes == {0: "exact", 1: "exact", 2: "exact"}


def test_a_candidate_limit_leaves_an_upper_bound(monkeypatch):
    """x = 0.5 everywhere, its class 0 at x +- 0.1 e_0; classes 1 and 2 at x + 0.3 e_1 and
    x + 0.3 e_2 (mirror images: equal bounds, equal distances); classes 3-9 at x + 0.45 e_c.
    Beating x + 0.1 e_0 alone (the bound, from the 1 nearest) brings z nearer to x - 0.1 e_0,
    so candidate 1's distance exceeds candidate 2's bound: one candidate cannot prove it."""
    x = torch.full((1, 1, 4, 4), 0.5)
    unit = torch.eye(PIXELS).reshape(PIXELS, 1, 4, 4)
    steps = torch.tensor([0.1, -0.1, 0.3, 0.3, *[0.45] * 7]).reshape(-1, 1, 1, 1)
    images = x + steps * unit[[0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]
    model = NearestNeighborDefense()
    model.fit_reference(images, torch.tensor([0, 0, *range(1, 10)]))
    y = torch.tensor([0])
    expected = brute_force(model, x[0], 0, "l2")
    for max_candidates, note in [(1, "upper bound"), (2, "exact")]:
        adversarial, notes, _, _ = attack_and_notes(
            model, x, y, monkeypatch, max_candidates=max_candidates
        )
        assert notes == {0: note}
        assert model(adversarial).argmax(1).item() in (1, 2)
        np.testing.assert_allclose(measured(adversarial, x, "l2"), [expected], rtol=1e-4)


def test_only_a_nearest_neighbour_model_has_a_reference_set(nearest_neighbor):
    attack = NearestNeighborExact("nn_exact", "l2")
    assert attack.unsupported(nearest_neighbor) is None
    cnn = CNNDefense()
    assert "no nearest-neighbour classifier" in attack.unsupported(cnn)
    with pytest.raises(NotImplementedError, match="nearest_neighbor = False"):
        cnn.reference_set()
    with pytest.raises(ValueError, match="does not minimise norm=l0"):
        NearestNeighborExact("nn_exact", "l0")


def test_the_reference_set_keeps_each_image_with_its_label():
    images = torch.arange(10.0).flip(0).reshape(10, 1, 1, 1).expand(10, 1, 2, 2) / 10
    labels = torch.arange(10).flip(0)  # image k carries (9 - k) / 10 everywhere, label 9 - k
    model = NearestNeighborDefense()
    model.fit_reference(images, labels)
    refs, got = model.reference_set()
    assert got.tolist() == list(range(10))
    assert torch.equal(refs, (torch.arange(10.0) / 10)[:, None].expand(10, 4))


def test_through_the_harness_the_notes_reach_the_outcome(nearest_neighbor):
    x, y = midpoints(nearest_neighbor)
    attack = NearestNeighborExact("nn_exact", "l2", margin=MARGIN)
    out = run_attack(attack, nearest_neighbor, x, y, clean_pred=y, seed=0)
    assert out.note == ["exact"] * len(x)
    expected = [brute_force(nearest_neighbor, x[i], int(y[i]), "l2") for i in range(len(x))]
    np.testing.assert_allclose(out.distance.numpy(), expected, rtol=1e-4)


@pytest.mark.parametrize("name", ["nn_exact_l2", "nn_exact_linf"])
def test_the_configured_attack_breaks_the_1nn_of_the_tiny_subset_exactly(name, tmp_path):
    """evaluate.py with the attack's config on the 1-NN:
    every correctly classified sample broken, flagged exact, and re-verified by the harness."""
    norm = name.removeprefix("nn_exact_")
    overrides = tiny_overrides(
        "model=nearest_neighbor", f"norm={norm}", f"attack=[{name}]", "data.test_samples=4"
    )
    summary = run_evaluate(overrides, tmp_path)
    rows = list(csv.DictReader((tmp_path / "per_sample.csv").open()))
    attacked = [r for r in rows if r["clean_pred"] == r["label"]]
    assert attacked and all(r["success"] == "1" for r in attacked)
    assert {r["note"] for r in attacked} == {"exact"}
    assert summary["attacks"][name]["errors"] == 0
