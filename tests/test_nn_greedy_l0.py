"""The greedy L0 attack on the 1-NN against brute force over every set of up to 3 pixels set to
0 or 1, on tiny black-and-white reference sets (4x4 pixels), and through the harness on MNIST."""

from __future__ import annotations

import csv
import itertools

import pytest
import torch

from abslab.attacks.harness import run_attack
from abslab.attacks.nearest_neighbor import References
from abslab.attacks.nearest_neighbor_l0 import NearestNeighborGreedyL0, Sample, smallest_proven
from abslab.attacks.queries import QueryModel
from abslab.models.cnn import CNNDefense
from abslab.models.nearest_neighbor import NearestNeighborDefense
from conftest import configured_attack, run_evaluate, tiny_overrides

# The harness's margin (1e-3 calibrated units) over the 1-NN's logit_scale 5, in L2 distance.
HARNESS_MARGIN = 2e-4


def fitted(images: torch.Tensor, labels: torch.Tensor) -> NearestNeighborDefense:
    model = NearestNeighborDefense()
    model.fit_reference(images.reshape(len(images), 1, 4, 4), labels)
    return model


def nn_margins(model: NearestNeighborDefense, images: torch.Tensor, label: int) -> torch.Tensor:
    """Nearest same-class distance minus nearest other-class distance (M,) of images (M, ...),
    in float64, written out here (not the attack's running distances)."""
    refs, labels = model.reference_set()
    dist = torch.cdist(images.double().flatten(1), refs.double())
    return dist[:, labels == label].amin(1) - dist[:, labels != label].amin(1)


def brute_force(model: NearestNeighborDefense, x: torch.Tensor, label: int) -> int | None:
    """The fewest pixels (up to 3) of x (16,) that, set to 0 or 1, make the 1-NN wrong by the
    harness's margin; None if 3 are not enough."""
    x = x.flatten()
    for size in range(1, 4):
        images = []
        for pixels in itertools.combinations(range(16), size):
            for values in itertools.product([0.0, 1.0], repeat=size):
                image = x.clone()
                image[list(pixels)] = torch.tensor(values)
                images.append(image)
        images = torch.stack(images)
        every_pixel_changed = (images != x).sum(1) == size
        if (every_pixel_changed & (nn_margins(model, images, label) >= HARNESS_MARGIN)).any():
            return size
    return None


def attacked(
    model: NearestNeighborDefense, x: torch.Tensor, y: torch.Tensor, monkeypatch, **settings
) -> tuple[torch.Tensor, dict[int, str], QueryModel]:
    notes: dict[int, str] = {}

    def set_note(self: QueryModel, rows: torch.Tensor, text: str) -> None:
        notes.update({int(row): text for row in rows})

    monkeypatch.setattr(QueryModel, "set_note", set_note, raising=False)
    attack = NearestNeighborGreedyL0("nn_greedy_l0", "l0", **settings)
    queries = QueryModel(model, x, y, "l0")
    return attack.run(queries, x, y), notes, queries


def test_a_case_with_a_known_optimum_of_two_pixels(monkeypatch):
    """x is its class's only reference; class 1's reference differs from x in 3 pixels, the
    others in 15. One changed pixel leaves x's copy at distance 1 and every other
    reference at sqrt(2) or more; two of class 1's three pixels leave it at 1 < sqrt(2)."""
    x = torch.zeros(16)
    x[[0, 5, 10, 15]] = 1.0
    images = [x.clone()]
    first = x.clone()
    first[[1, 2, 3]] = 1.0
    images.append(first)
    for c in range(2, 10):
        far = 1.0 - x
        far[c] = x[c]  # 15 pixels from x, each class its own image
        images.append(far)
    model = fitted(torch.stack(images), torch.arange(10))
    xb, y = x.reshape(1, 1, 4, 4), torch.tensor([0])
    assert brute_force(model, x, 0) == 2
    adversarial, notes, queries = attacked(model, xb, y, monkeypatch)
    changed = (adversarial != xb).flatten()
    assert int(changed.sum()) == 2 and changed[[1, 2, 3]].sum() == 2
    assert model(adversarial).argmax(1).item() == 1
    assert notes == {0: "exact"}  # 1 pixel lowers |z - t|^2 - |z - x|^2 = 3 by 2 at most
    assert queries.queries.tolist() == [1]  # the search reads references: one query, to verify


@pytest.mark.parametrize("targets", [0, 3])
def test_random_tiny_sets_within_one_pixel_of_brute_force(targets, monkeypatch):
    """30 random black-and-white references (3 per class); x: each reference with two pixels
    flipped, where the 1-NN still says the reference's class and 3 pixels can break it."""
    generator = torch.Generator().manual_seed(1)
    refs = (torch.rand(30, 16, generator=generator) < 0.3).float()
    labels = torch.arange(10).repeat(3)
    model = fitted(refs, labels)
    flipped = torch.rand(30, 16, generator=generator).argsort(1)[:, :2]  # 2 pixels each
    points = refs.clone()
    points.scatter_(1, flipped, 1 - refs.gather(1, flipped))
    points = points.reshape(30, 1, 4, 4)
    keep = model(points).argmax(1) == labels
    optimum = [brute_force(model, p, int(c)) for p, c in zip(points[keep], labels[keep])]
    known = torch.tensor([o is not None for o in optimum])
    x, y = points[keep][known], labels[keep][known]
    optimum = torch.tensor([o for o in optimum if o is not None])
    assert len(x) >= 10
    adversarial, notes, _ = attacked(model, x, y, monkeypatch, targets=targets)
    found = (adversarial != x).flatten(1).sum(1)
    for i in range(len(x)):  # every result verified here, by the float64 margin written out
        assert nn_margins(model, adversarial[i : i + 1], int(y[i])).item() >= HARNESS_MARGIN
    assert (found >= optimum).all()  # brute force is the smallest over {0, 1} values
    assert (found <= optimum + 1).all(), f"greedy {found.tolist()}, optimum {optimum.tolist()}"
    assert (found == optimum).float().mean() >= 0.9
    # "exact": the lower bound proves no fewer pixels, of any values, can do it
    proven = torch.tensor([notes[i] == "exact" for i in range(len(x))])
    assert set(notes.values()) <= {"exact", "upper bound"} and proven.any()
    assert torch.equal(found[proven], optimum[proven])


def test_the_lower_bound_never_proves_more_than_brute_force_finds():
    """Brute force's optimum k is reachable, so no bound may claim that k + 1 is smallest; on
    these cases the bound is tight: it proves k itself."""
    generator = torch.Generator().manual_seed(2)
    refs = (torch.rand(50, 16, generator=generator) < 0.3).float()
    model = fitted(refs, torch.arange(10).repeat(5))
    points = (torch.rand(40, 16, generator=generator) < 0.3).float()
    labels = model(points.reshape(40, 1, 4, 4)).argmax(1)
    references = References(*model.reference_set())
    tight = 0
    for point, label in zip(points, labels.tolist()):
        optimum = brute_force(model, point, label)
        if optimum is None:
            continue
        sample = Sample(references, point.double(), label, HARNESS_MARGIN)
        assert not smallest_proven(sample, optimum + 1)
        tight += smallest_proven(sample, optimum)
    assert tight >= 10


def test_a_failure_returns_x_and_says_why(monkeypatch):
    """One allowed change cannot break the two-pixel case; and an image the attack believes
    adversarial but the model does not is returned as x, never as a success."""
    x = torch.zeros(16)
    eye = torch.eye(16)
    images = [x, *(eye[c] + eye[c + 1] + eye[c + 2] for c in range(9))]  # 3 pixels from x
    model = fitted(torch.stack(images), torch.arange(10))
    xb, y = x.reshape(1, 1, 4, 4), torch.tensor([0])
    adversarial, notes, _ = attacked(model, xb, y, monkeypatch, steps=1)
    assert torch.equal(adversarial, xb)
    assert notes == {0: "no adversarial within attack.nn_greedy_l0.steps changes"}

    wrong = x.clone()
    wrong[0] = 1.0  # nearer to x's copy (1) than to any other reference (sqrt(2))
    monkeypatch.setattr(NearestNeighborGreedyL0, "attack", lambda self, sample: wrong.double())
    adversarial, notes, queries = attacked(model, xb, y, monkeypatch)
    assert torch.equal(adversarial, xb)
    assert "not adversarial by the harness's margin" in notes[0]
    assert queries.queries.tolist() == [1]


def test_only_a_nearest_neighbour_model_and_only_l0():
    attack = configured_attack("nn_greedy_l0")
    assert isinstance(attack, NearestNeighborGreedyL0) and attack.norm == "l0"
    assert attack.unsupported(NearestNeighborDefense()) is None
    assert "no nearest-neighbour classifier" in attack.unsupported(CNNDefense())
    with pytest.raises(ValueError, match="does not minimise norm=l2"):
        NearestNeighborGreedyL0("nn_greedy_l0", "l2")
    with pytest.raises(ValueError, match=r"targets=-1: must be an integer >= 0"):
        configured_attack("nn_greedy_l0", targets=-1)
    with pytest.raises(ValueError, match=r"aim_factor=0.5: must be a number >= 1"):
        configured_attack("nn_greedy_l0", aim_factor=0.5)


def test_through_the_harness_it_breaks_a_small_mnist_1nn(mnist_arrays):
    """A 1-NN over 500 training images: the first 10 test images it classifies correctly are
    nearly all broken, each by a handful of pixels that the harness verifies."""
    images = torch.from_numpy(mnist_arrays["train_images"][:500]).float().div(255)[:, None]
    labels = torch.from_numpy(mnist_arrays["train_labels"][:500]).long()
    model = NearestNeighborDefense()
    model.fit_reference(images, labels)
    x = torch.from_numpy(mnist_arrays["test_images"][:20]).float().div(255)[:, None]
    y = torch.from_numpy(mnist_arrays["test_labels"][:20]).long()
    keep = (model(x).argmax(1) == y).nonzero().flatten()[:10]
    x, y = x[keep], y[keep]
    out = run_attack(configured_attack("nn_greedy_l0"), model, x, y, clean_pred=y, seed=0)
    assert out.success.sum() >= 8, out.distance.tolist()
    broken = out.success
    assert (out.distance[broken] <= 40).all() and out.distance[broken].median() <= 15
    changed = (out.adversarial[broken] != x[broken]).flatten(1).sum(1).float()
    assert torch.equal(changed, out.distance[broken])
    assert (model(out.adversarial[broken]).argmax(1) != y[broken]).all()
    assert out.queries.tolist() == [1] * len(x)


def test_the_configured_attack_runs_in_the_l0_suite_of_the_1nn(tmp_path):
    """evaluate.py's L0 suite narrowed to the attack, on the tiny subset's 1-NN: every
    correctly classified sample broken and re-verified by the harness."""
    overrides = tiny_overrides(
        "model=nearest_neighbor", "norm=l0", "attack=[nn_greedy_l0]", "data.test_samples=4"
    )
    summary = run_evaluate(overrides, tmp_path)
    rows = list(csv.DictReader((tmp_path / "per_sample.csv").open()))
    attacked = [r for r in rows if r["clean_pred"] == r["label"]]
    assert attacked and all(r["success"] == "1" for r in attacked)
    assert {r["note"] for r in attacked} <= {"exact", "upper bound"}
    assert summary["attacks"]["nn_greedy_l0"]["errors"] == 0
