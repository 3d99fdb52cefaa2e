"""The harness's distances and its accuracy-at-epsilon convention against hand-built images and
hand-counted answers (docs/attacks.md §1, §2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from abslab.attacks.distances import distance
from abslab.results.attack_summary import beyond, summarize


def test_three_changed_pixels():
    x = torch.full((1, 1, 28, 28), 0.5)
    adv = x.clone()
    adv[0, 0, 0, 0] = 0.7  # +0.2
    adv[0, 0, 13, 5] = 0.1  # -0.4
    adv[0, 0, 27, 27] = 0.9  # +0.4
    assert distance(adv, x, "l0").item() == 3
    assert distance(adv, x, "l2").item() == pytest.approx(0.6, rel=1e-6)  # sqrt(.04+.16+.16)
    assert distance(adv, x, "linf").item() == pytest.approx(0.4, rel=1e-6)


def test_a_perturbation_of_l2_norm_exactly_1_5_per_sample():
    x = torch.zeros(3, 1, 28, 28)
    adv = x.clone()
    adv[0].view(-1)[:9] = 0.5  # nine pixels of 0.5: sqrt(9 * 0.25) = 1.5
    adv[1].view(-1)[100] = 1.0  # one black pixel turned white
    adv[2].view(-1)[5] = 1e-7  # the faintest change still counts in L0
    torch.testing.assert_close(distance(adv, x, "l2"), torch.tensor([1.5, 1.0, 1e-7]))
    torch.testing.assert_close(distance(adv, x, "linf"), torch.tensor([0.5, 1.0, 1e-7]))
    torch.testing.assert_close(distance(adv, x, "l0"), torch.tensor([9.0, 1.0, 1.0]))
    assert distance(x, x, "l0").tolist() == [0, 0, 0]


def test_a_wrong_norm_names_the_choices():
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(ValueError, match=r"norm='l1'.*'l2', 'linf', 'l0'"):
        distance(x, x, "l1")


def test_an_adversarial_made_at_eps_counts_as_broken_at_eps():
    """x + 0.3 sign(.) in float32 measures a rounding beyond 0.3: it breaks the sample at 0.3;
    a relative excess of 1e-4 does not (relative tolerance 1e-5)."""
    torch.manual_seed(0)
    x = torch.rand(64, 1, 28, 28) * 0.4 + 0.3
    adv = x + 0.3 * torch.randn_like(x).sign()
    measured = distance(adv, x, "linf")
    assert (measured != 0.3).any()  # float32 rounding, both sides of 0.3
    assert not beyond(measured, 0.3).any()
    assert beyond(torch.tensor([0.3 * (1 + 1e-4), 0.3 * (1 + 1e-6)]), 0.3).tolist() == [True, False]
    assert beyond(np.array([12.0, 13.0]), 12).tolist() == [False, True]  # L0: 12 pixels break


def rows(attack, distances, clean_wrong=()):
    """per_sample.csv rows for samples 0.. with these distances under one attack."""
    return [
        {
            "index": i,
            "label": 1,
            "clean_pred": 0 if i in clean_wrong else 1,
            "attack": attack,
            "success": math.isfinite(d) and i not in clean_wrong,
            "distance": d,
            "queries": 10,
            "seconds": 0.5,
            "error": "",
        }
        for i, d in enumerate(distances)
    ]


def test_medians_and_accuracies_from_hand_built_rows():
    """Sample 0 is misclassified clean (distance 0), sample 4 is never broken (infinity);
    'all' is the per-sample minimum; accuracy at eps = share of samples farther than eps."""
    eps = 0.3
    a = [0.0, 0.2, 0.3 * (1 + 1e-6), 0.31, math.inf]
    b = [0.0, 0.25, math.inf, 0.3 * (1 + 1e-4), math.inf]
    summary = summarize(
        rows("a", a, clean_wrong=(0,)) + rows("b", b, clean_wrong=(0,)),
        ["a", "b"],
        eps,
        np.array([0.0, 0.25]),
    )
    assert summary["clean_accuracy"] == 0.8
    # all = [0, 0.2, 0.3000003, 0.30003, inf]: broken at 0.3 up to rounding: 0, 1, 2
    stats = summary["attacks"]["all"]
    assert stats["accuracy_at_threshold"] == pytest.approx(2 / 5)
    assert stats["median_distance"] == pytest.approx(0.3 * (1 + 1e-6))
    assert stats["curve_accuracy"] == pytest.approx([4 / 5, 3 / 5])  # at 0: all but sample 0
    assert (stats["successes"], stats["failures"]) == (4, 1)
    assert summary["attacks"]["a"]["accuracy_at_threshold"] == pytest.approx(2 / 5)
    assert summary["attacks"]["b"]["accuracy_at_threshold"] == pytest.approx(3 / 5)
    assert summary["attacks"]["b"]["median_distance"] == pytest.approx(0.3 * (1 + 1e-4))
    assert summary["attacks"]["a"]["queries_per_sample"] == 10  # the 4 attacked samples
