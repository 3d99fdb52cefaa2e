"""The attacks' schedules against foolbox 1.3's formulas, written out here (docs/attacks.md §3,
§4.1): which epsilons the search probes, the per-step sizes of BIM, MIM's momentum, FGM's
direction, salt-and-pepper's probability grid. The real abslab attacks run on tiny models whose
decision the test controls and which record every query; the expected values come from the
formulas below, never from abslab's code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from abslab.attacks import noise
from abslab.attacks.gradient import IterativeAttack, SingleStepAttack
from abslab.attacks.noise import SaltAndPepperAttack
from abslab.attacks.queries import QueryModel

PIXELS = 784


class Recorder(nn.Module):
    """A two-class model with logits (0, h(x)): class 1 (an adversarial for label 0) wins where
    h > 0. Records every image it is asked about, and whether autograd asked (a gradient
    query)."""

    gradient = "exact"
    name = "recorder"
    logit_scale = 1.0  # calibrated units of the harness's margin

    def __init__(self, h) -> None:
        super().__init__()
        self.h = h
        self.images: list[np.ndarray] = []
        self.gradient_query: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for image in x:
            self.images.append(image.detach().double().flatten().numpy())
            self.gradient_query.append(x.requires_grad)
        h = self.h(x.flatten(1))
        return torch.stack([torch.zeros_like(h), h], dim=1)


def run(attack, recorder: Recorder, x0: np.ndarray, norm: str) -> torch.Tensor:
    x = torch.tensor(x0, dtype=torch.float32).reshape(1, 1, 28, 28)
    y = torch.zeros(1, dtype=torch.long)
    return attack.run(QueryModel(recorder, x, y, norm), x, y)


def search_schedule(success, start, bisect_steps, eps_max, growth=1.5, bracket_steps=20):
    """The epsilons the search probes (foolbox 1.3's `_run_binary_search`): start, times 1.5
    until the attack succeeds, then bisections. foolbox 1.3 bisected between 0 and the first
    success; abslab between the last failure and the first success (docs/attacks.md §4.1)."""
    probes, low, high, eps = [], 0.0, math.inf, min(start, eps_max)
    for _ in range(bracket_steps):
        probes.append(eps)
        if success(eps):
            high = eps
            break
        low = eps
        if eps >= eps_max:
            break
        eps = min(eps * growth, eps_max)
    for _ in range(bisect_steps if math.isfinite(high) else 0):
        mid = (low + high) / 2
        probes.append(mid)
        low, high = (low, mid) if success(mid) else (mid, high)
    return probes


def bim_queries(eps, theta, rel_stepsize, steps=10):
    """Sizes of BIM's iterates from x0 = 0 on `mean_above(theta)` (every pixel moves alike),
    one gradient query each, stopping at the first misclassified one (return_early): step j is
    at min(j * eps * rel_stepsize, eps)."""
    sizes = []
    for j in range(steps):
        sizes.append(min(j * eps * rel_stepsize, eps))
        if sizes[-1] > theta:
            return sizes, sizes[-1]
    return sizes, min(steps * eps * rel_stepsize, eps)


def mean_above(theta):
    """h = mean pixel - theta: a uniform gradient, so BIM moves every pixel alike."""
    return lambda flat: flat.mean(1) - theta


def sizes_of(recorder: Recorder, norm: str) -> np.ndarray:
    """|query - x0| per query, x0 = 0."""
    images = np.stack(recorder.images)
    return np.linalg.norm(images, axis=1) if norm == "l2" else np.abs(images).max(1)


@pytest.mark.parametrize(
    ("norm", "start", "eps_max", "theta"),
    [
        ("linf", 0.3, 1.0, 0.61803),  # 0.3 and 0.45 fail, 0.675 succeeds
        ("l2", 8.4, 28.0, 15.1),  # foolbox's 0.3 in RMS units is 28 * 0.3 = 8.4 in L2
    ],
)
def test_bim_probes_the_search_schedule_with_steps_of_eps_times_rel_stepsize(
    norm, start, eps_max, theta
):
    rel, bisect = 1 / 6, 8  # foolbox 1.3: step 0.05 at eps 0.3; 8 bisections stay far from ties
    pixel_theta = theta if norm == "linf" else theta / 28  # L2: each pixel moves by |delta| / 28
    recorder = Recorder(mean_above(pixel_theta))
    attack = IterativeAttack(
        "bim", norm, eps_start=start, steps=10, rel_stepsize=rel, bisect_steps=bisect
    )
    run(attack, recorder, np.zeros(PIXELS), norm)

    def success(eps):
        return bim_queries(eps, theta, rel)[1] > theta

    probes = search_schedule(success, start, bisect, eps_max)
    assert probes[:3] == pytest.approx([start, 1.5 * start, 2.25 * start])
    assert not success(probes[1]) and success(probes[2])
    expected, gradient_query = [], []
    for eps in probes:
        sizes, final = bim_queries(eps, theta, rel)
        expected += [*sizes, final]
        gradient_query += [True] * len(sizes) + [False]  # the search judges the final iterate
    assert min(abs(np.array(expected) - theta)) > 1e-4  # no decision rests on float rounding
    np.testing.assert_allclose(sizes_of(recorder, norm), expected, rtol=1e-5, atol=1e-6)
    assert recorder.gradient_query == gradient_query


def test_mim_accumulates_g_over_mean_abs_g_and_steps_along_its_sign():
    """Pixel 0 has h's gradient 1 - 10 x_0 (it turns at 0.1), the others 0.01; h stays < 0, so
    all 10 steps run. foolbox 1.3's MIM: v <- 1.0 v + g / mean|g|, x <- clip(x + 0.06 sign v)
    into the 0.3 ball and [0, 1]."""

    def h(flat):
        return flat[:, 0] - 5 * flat[:, 0] ** 2 + 0.01 * flat[:, 1:].sum(1) - 3.0

    def gradient(x):
        g = np.full(PIXELS, 0.01)
        g[0] = 1 - 10 * x[0]
        return g

    def mim(decay):
        x, v, visited = np.zeros(PIXELS), np.zeros(PIXELS), []
        for _ in range(10):
            visited.append(x.copy())
            g = gradient(x)
            v = decay * v + g / np.abs(g).mean()
            assert np.abs(v).min() > 1e-3  # sign(v) is not a float tie
            x = np.clip(x + 0.06 * np.sign(v), -0.3, 0.3).clip(0, 1)
        return visited, x

    recorder = Recorder(h)
    attack = IterativeAttack(
        "mim", "linf", eps_start=0.3, rel_stepsize=0.2, momentum=1.0, search=False
    )
    out = run(attack, recorder, np.zeros(PIXELS), "linf")
    visited, final = mim(decay=1.0)
    np.testing.assert_allclose(np.stack(recorder.images), [*visited, final], atol=1e-6)
    assert recorder.gradient_query == [True] * 10 + [False]
    # pixel 0: 0, .06, .12, then momentum carries it past the turn at 0.1 (plain BIM steps back)
    assert [round(v[0], 2) for v in visited[:5]] == [0.0, 0.06, 0.12, 0.18, 0.24]
    assert mim(decay=0.0)[0][3][0] == pytest.approx(0.06)
    assert torch.equal(out, torch.zeros(1, 1, 28, 28))  # never adversarial: x itself returned


def test_fgm_probes_x_plus_eps_along_g_over_its_l2_norm():
    """One gradient query at x, then candidates clip(x + eps g/|g|_2) at the search's epsilons."""
    torch.manual_seed(0)
    w = torch.randn(PIXELS, dtype=torch.float64)
    x0 = np.full(PIXELS, 0.5)
    theta = 47.0  # h = (w.(x - x0) - theta) / 28: |w| is about 28, so eps 1 and 1.5 fail

    def h(flat):  # divided by 28 so that the cross-entropy's gradient at x0 is not tiny
        return ((flat.double() - 0.5) @ w - theta) / 28

    recorder = Recorder(lambda flat: h(flat).float())
    run(SingleStepAttack("fgm", "l2", eps_start=1.0, bisect_steps=8), recorder, x0, "l2")

    unit = (w / w.norm()).numpy()

    def candidate(eps):
        return np.clip(x0 + eps * unit, 0, 1)

    def success(eps):
        return float(h(torch.from_numpy(candidate(eps))[None])) > 0

    probes = search_schedule(success, 1.0, 8, 28.0)
    assert probes[:2] == [1.0, 1.5] and not success(1.0)
    assert recorder.gradient_query == [True] + [False] * len(probes)
    np.testing.assert_allclose(recorder.images[0], x0, atol=1e-7)
    expected = np.stack([candidate(eps) for eps in probes])
    np.testing.assert_allclose(np.stack(recorder.images[1:]), expected, atol=1e-5)


def test_salt_and_pepper_walks_foolbox_13s_probability_grid(monkeypatch):
    """Per repetition p runs over linspace(0, max_p, epsilons + 1)[1:] until a success; then
    max_p <- min(1, 1.2 p). Candidates with no fewer changed pixels than the best are not
    queried. The noise is replaced by a deterministic one (its first floor(784 p) pixels set
    to 1), so each query's p can be read off; the model calls > 150 changed pixels adversarial."""
    threshold, epsilons, repetitions = 150, 100, 4
    drawn = []

    def first_pixels(x, p, _uniform):
        drawn.extend(p.tolist())
        n = torch.floor(p * PIXELS).long()
        mask = torch.arange(PIXELS) < n[:, None]
        return torch.where(mask.reshape(x.shape), torch.ones_like(x), x)

    monkeypatch.setattr(noise, "salt_and_pepper", first_pixels)
    recorder = Recorder(lambda flat: (flat != 0.5).sum(1).float() - threshold - 0.5)
    x0 = np.full(PIXELS, 0.5)
    run(SaltAndPepperAttack("salt_pepper", "l0", epsilons, repetitions), recorder, x0, "l0")

    def changed(p):
        return math.floor(p * PIXELS)

    expected_drawn, expected_queried, max_p, best = [], [], 1.0, math.inf
    for _ in range(repetitions):
        for p in np.linspace(0, max_p, epsilons + 1)[1:]:
            expected_drawn.append(p)
            if changed(p) >= best:
                continue
            expected_queried.append(p)
            if changed(p) > threshold:
                best, max_p = changed(p), min(1.0, 1.2 * p)
                break
    # float32 against float64: no p lies within rounding of a pixel boundary
    assert min(abs(p * PIXELS - round(p * PIXELS)) for p in expected_drawn) > 1e-3
    successes = [p for p in expected_queried if changed(p) > threshold]
    assert successes[0] == pytest.approx(0.20) and len(successes) > 1  # 156 pixels, then fewer
    np.testing.assert_allclose(drawn, expected_drawn, rtol=1e-6)
    queried = [(image != 0.5).sum() / PIXELS for image in recorder.images]
    np.testing.assert_allclose(queried, [changed(p) / PIXELS for p in expected_queried])
