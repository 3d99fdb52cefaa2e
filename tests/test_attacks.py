"""The attack suite on the authors' vanilla CNN: each attack breaks it with verified rows;
seeded runs repeat; the harness survives broken attacks; a second implementation agrees."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import foolbox as fb
import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from abslab.attacks.apgd import APGDAttack
from abslab.attacks.base import EpsilonSearchAttack
from abslab.attacks.distances import distance
from abslab.attacks.gradient import IterativeAttack
from abslab.attacks.harness import Outcome, run_attack
from abslab.attacks.minimal import FMNAttack, HopSkipJumpAttack
from abslab.attacks.noise import SaltAndPepperAttack
from abslab.attacks.queries import GradientUnavailable, QueryModel
from abslab.attacks.suite import instantiate_attack
from abslab.models.cnn import CNNDefense
from abslab.results.attack_summary import beyond
from conftest import (
    CONF,
    REFERENCE_MODELS,
    RaisingAttack,
    compose_config,
    plain_distance,
    run_evaluate,
    tiny_overrides,
)

PRETRAINED = f"model.pretrained={REFERENCE_MODELS / 'cnn'}"

# Each attack at a tiny budget, so the whole suite runs in seconds on CPU.
TINY = {
    "fgm": {"bracket_steps": 6, "bisect_steps": 4},
    "fgsm": {"bracket_steps": 6, "bisect_steps": 4},
    "bim": {"steps": 3, "bracket_steps": 5, "bisect_steps": 3},
    "bim_l2": {"steps": 3, "bracket_steps": 5, "bisect_steps": 3},
    "mim": {"steps": 3, "bracket_steps": 5, "bisect_steps": 3},
    "pgd": {"steps": 5},
    "gaussian_noise": {"bracket_steps": 6, "bisect_steps": 3},
    "deepfool_l2": {"steps": 30},
    "deepfool_linf": {"steps": 30},
    "boundary": {"steps": 20, "init_directions": 50, "init_steps": 50},
    "pointwise": {"init_epsilons": 20, "init_repetitions": 1, "repetitions": 1},
    "pointwise_l2": {"init_epsilons": 20, "init_repetitions": 1, "repetitions": 1},
    "salt_pepper": {"epsilons": 20, "repetitions": 2},
    # nested substitute attacks by their path; null drops one
    "transfer_l2": {"substitute_attacks.deepfool_l2": None, "substitute_attacks.bim_l2": None},
    "transfer_linf": {"substitute_attacks.deepfool_linf": None, "substitute_attacks.bim": None},
}
# The _ge attacks: their base's budget; tests/test_paper_attacks.py runs each on a CNN small
# enough to be queried 1,568 times a gradient.
for _base in ("fgm", "fgsm", "bim", "bim_l2", "mim", "deepfool_l2", "deepfool_linf"):
    TINY[f"{_base}_ge"] = TINY[_base]
# Each norm's suite as the CNN runs it: the _ge attacks and Latent Descent are skipped there.
NORM_SUITES = {
    "l2": [
        "transfer_l2",
        "gaussian_noise",
        "boundary",
        "pointwise_l2",
        "fgm",
        "deepfool_l2",
        "bim_l2",
    ],
    "linf": ["transfer_linf", "fgsm", "deepfool_linf", "bim", "mim"],
    "l0": ["salt_pepper", "pointwise"],
}
SKIPPED_ON_CNN = {
    "l2": ["fgm_ge", "deepfool_l2_ge", "bim_l2_ge", "latent_descent"],
    "linf": ["fgsm_ge", "deepfool_linf_ge", "bim_ge", "mim_ge"],
    "l0": [],
}


def attack_config(name: str, settings: dict | None = None) -> DictConfig:
    """conf/attack/<name>.yaml as evaluate.py composes it (the published transfer substitute),
    with `settings` (dotted keys) set."""
    overrides = [f"attack={name}", "weights=published", f"published_root={REFERENCE_MODELS}"]
    spec = compose_config("evaluate", overrides, Path("unused")).attack[name]
    with open_dict(spec):
        for key, value in (settings or {}).items():
            OmegaConf.update(spec, key, value, merge=False)
    return spec


def tiny_attack(name: str):
    return instantiate_attack(name, attack_config(name, TINY[name]))


def _override_value(value) -> str:
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def tiny_attack_overrides(names: list[str]) -> list[str]:
    return [f"attack.{n}.{k}={_override_value(v)}" for n in names for k, v in TINY[n].items()]


@pytest.fixture(scope="module")
def cnn():
    return CNNDefense(pretrained=str(REFERENCE_MODELS / "cnn")).eval()


@pytest.fixture(scope="module")
def test_batch(mnist_arrays):
    x = torch.from_numpy(mnist_arrays["test_images"][:6]).float().div(255).unsqueeze(1)
    y = torch.from_numpy(mnist_arrays["test_labels"][:6].astype(np.int64))
    return x, y


def test_every_configured_attack_has_a_tiny_budget_in_a_test():
    """The paper's attacks (and pgd) have their tiny budget here, every other attack in the
    test file of its family: a new attack config without a test fails here."""
    suite_files = {"none", "l2", "linf", "l0"}  # a norm's suite, and no attack
    configured = {p.stem for p in (CONF / "attack").glob("*.yaml")} - suite_files
    paper = {n for n in configured if attack_config(n).paper} | {"pgd"}
    assert paper - {"latent_descent"} == set(TINY)  # latent_descent: tests/test_latent_descent
    tested_elsewhere = "".join(
        p.read_text()
        for p in Path(__file__).parent.glob("test_*.py")
        if p.name != Path(__file__).name
    )
    untested = sorted(n for n in configured - paper if f'"{n}"' not in tested_elsewhere)
    assert not untested, f"attack configs without a test: {untested}"
    suites = {a for norm in NORM_SUITES for a in NORM_SUITES[norm] + SKIPPED_ON_CNN[norm]}
    assert suites | {"pgd"} == set(TINY) | {"latent_descent"}


@pytest.mark.parametrize("name", sorted(n for n in TINY if not n.endswith("_ge")))
def test_attack_breaks_the_cnn_with_verified_rows_and_repeats_for_a_seed(name, cnn, test_batch):
    x, y = test_batch
    attack = tiny_attack(name)
    with torch.no_grad():
        clean = cnn(x).argmax(1)
    assert (clean == y).all()
    first = run_attack(attack, cnn, x, y, clean, seed=3)
    again = run_attack(attack, cnn, x, y, clean, seed=3)
    assert first.error == [""] * len(x)
    assert first.success.sum() >= len(x) // 2, f"{name} broke only {int(first.success.sum())}"
    adv = first.adversarial[first.success]
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (cnn(adv).argmax(1) != y[first.success]).all()
    assert torch.equal(first.adv_pred[first.success], cnn(adv).argmax(1))
    measured = plain_distance(adv, x[first.success], attack.norm)
    assert torch.allclose(measured, first.distance[first.success])
    assert torch.isinf(first.distance[~first.success]).all()
    assert (first.queries > 0).all()
    assert torch.equal(first.distance, again.distance) and torch.equal(first.queries, again.queries)
    assert torch.equal(first.adversarial, again.adversarial)


def test_query_model_counts_rows_keeps_the_best_and_guards_gradients(cnn, test_batch):
    x, y = test_batch
    model = QueryModel(cnn, x, y, "l2")
    model(x)
    rows = torch.tensor([1, 4])
    far, near = torch.zeros_like(x[rows]), x[rows] * 0.0 + 0.5
    model.predict(far, rows)
    assert model.queries.tolist() == [1, 2, 1, 1, 2, 1]
    model.predict(near, rows)
    for k, row in enumerate(rows):
        candidates = [c[k] for c in (far, near) if cnn(c[k : k + 1]).argmax(1) != y[row]]
        if candidates:
            best = min(distance(c[None], x[row : row + 1], "l2").item() for c in candidates)
            assert model.best_distance[row].item() == pytest.approx(best)
    cnn.gradient_mode_for_test = None
    no_gradient = QueryModel(_NoGradient(cnn), x, y, "l2")
    with pytest.raises(GradientUnavailable, match="no input gradient"):
        no_gradient(x.clone().requires_grad_(True))


class _NoGradient(torch.nn.Module):
    gradient = "none"
    name = "no_gradient"

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_a_throwing_or_misshapen_attack_becomes_error_rows(cnn, test_batch):
    x, y = test_batch
    clean = cnn(x).argmax(1)
    outcome = run_attack(RaisingAttack("boom", "linf"), cnn, x, y, clean, seed=0)
    assert all("always fails" in e for e in outcome.error)
    assert torch.isinf(outcome.distance).all() and not outcome.success.any()

    class Misshapen(RaisingAttack):
        def run(self, model, x, y):
            return x[:, :, :10]

    outcome = run_attack(Misshapen("bad", "linf"), cnn, x, y, clean, seed=0)
    assert all("returned" in e for e in outcome.error) and torch.isinf(outcome.distance).all()


def test_clean_misclassifications_have_distance_zero_and_are_not_attacked(cnn, test_batch):
    x, y = test_batch
    wrong = cnn(x).argmax(1)
    wrong[0] = (y[0] + 1) % 10
    outcome: Outcome = run_attack(tiny_attack("fgsm"), cnn, x, y, wrong, seed=0)
    assert outcome.distance[0] == 0 and outcome.success[0] and outcome.queries[0] == 0


def test_binarization_refinement_leaves_only_original_or_threshold_pixels(test_batch):
    x, y = test_batch
    binary = CNNDefense(binarize_input=True, pretrained=str(REFERENCE_MODELS / "cnn")).eval()
    clean = binary(x).argmax(1)
    outcome = run_attack(tiny_attack("fgsm"), binary, x, y, clean, seed=0)
    hit = outcome.success & (clean == y)
    assert hit.any()
    adv, orig = outcome.adversarial[hit], x[hit]
    below = float(np.nextafter(np.float32(0.5), np.float32(0)))
    allowed = (adv == orig) | (adv == 0.5) | (adv == below)
    assert allowed.all()


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("linf", 0.3), ("l2", 1.0), ("l2", 1.5)])
def test_bim_agrees_with_foolbox_basic_iterative_attack(norm, eps, cnn, mnist_arrays):
    """Fixed epsilon, 10 steps of eps/6, no random start, on 200 test images: accuracies within
    2 points of foolbox's LinfBasicIterativeAttack / L2BasicIterativeAttack called directly."""
    x = torch.from_numpy(mnist_arrays["test_images"][:200]).float().div(255).unsqueeze(1)
    y = torch.from_numpy(mnist_arrays["test_labels"][:200].astype(np.int64))
    clean = cnn(x).argmax(1)
    ours = IterativeAttack(f"bim_{norm}", norm, eps, steps=10, rel_stepsize=1 / 6, search=False)
    outcome = run_attack(ours, cnn, x, y, clean, seed=0)
    our_accuracy = beyond(outcome.distance, eps).float().mean().item()
    kind = (
        fb.attacks.LinfBasicIterativeAttack if norm == "linf" else fb.attacks.L2BasicIterativeAttack
    )
    theirs = kind(abs_stepsize=eps / 6, steps=10, random_start=False)
    _, _, success = theirs(fb.PyTorchModel(cnn, bounds=(0, 1)), x, y, epsilons=eps)
    their_accuracy = 1 - success.float().mean().item()
    assert abs(our_accuracy - their_accuracy) <= 0.02, (our_accuracy, their_accuracy)
    assert our_accuracy <= their_accuracy + 1e-6  # early return + best kept: never weaker


def test_evaluate_runs_each_norms_suite_and_writes_every_file(tmp_path, cnn, mnist_arrays):
    for norm, names in NORM_SUITES.items():
        run_dir = tmp_path / norm
        summary = run_evaluate(
            tiny_overrides(
                "model=cnn",
                PRETRAINED,
                "data.test_samples=6",
                f"norm={norm}",
                f"attack=[{','.join(names + SKIPPED_ON_CNN[norm])}]",  # the paper's rows
                "figure_samples=0",
                *tiny_attack_overrides(names),
            ),
            run_dir,
        )
        assert set(summary["attacks"]) == {*names, "paper_attacks", "all"}  # paper: true
        assert set(summary["skipped_attacks"]) == set(SKIPPED_ON_CNN[norm])
        assert summary["attacks"]["all"]["successes"] == 6  # every sample broken, at some size
        rows = list(csv.DictReader((run_dir / "per_sample.csv").open()))
        assert len(rows) == 6 * len(names)
        smallest = np.load(run_dir / "adversarials.npz")
        assert len(smallest["index"]) == summary["attacks"]["all"]["successes"]
        images = torch.from_numpy(smallest["images"]).unsqueeze(1)
        originals = torch.from_numpy(mnist_arrays["test_images"][smallest["index"]])
        originals = originals.float().div(255).unsqueeze(1)
        assert images.min() >= 0 and images.max() <= 1
        with torch.no_grad():
            assert torch.equal(cnn(images).argmax(1), torch.from_numpy(smallest["adv_pred"]))
        assert (smallest["adv_pred"] != smallest["label"]).all()
        measured = plain_distance(images, originals, norm).numpy()
        assert np.allclose(measured, smallest["distance"], rtol=1e-6)
        for png in ("robustness_curve.png", "adversarials.png"):
            assert (run_dir / png).stat().st_size > 0
        all_min = {}
        for r in rows:
            all_min[r["index"]] = min(all_min.get(r["index"], np.inf), float(r["distance"]))
        median = np.median(list(all_min.values()))
        assert summary["attacks"]["all"]["median_distance"] == pytest.approx(median)


def test_a_resumed_run_skips_finished_pairs_and_gives_the_same_summary(tmp_path):
    names = ["gaussian_noise", "fgm"]
    overrides = tiny_overrides(
        "model=cnn",
        PRETRAINED,
        "data.test_samples=12",
        "data.eval_batch_size=4",
        "norm=l2",
        "attack=[gaussian_noise,fgm]",
        "figure_samples=0",
        *tiny_attack_overrides(names),
    )
    full = run_evaluate(overrides, tmp_path / "full")
    csv_path = tmp_path / "full" / "per_sample.csv"
    before = csv_path.read_bytes()
    run_evaluate(overrides, tmp_path / "full")  # nothing left to do: nothing appended
    assert csv_path.read_bytes() == before

    killed = tmp_path / "killed"
    killed.mkdir()
    lines = before.decode().splitlines(keepends=True)
    # killed after the first batch's both attacks and the second batch's first attack, while
    # writing a row: 1 header + 4 + 4 + 4 complete rows and half a line
    (killed / "per_sample.csv").write_text("".join(lines[:13]) + lines[13][:7])
    shutil.copytree(tmp_path / "full" / "adversarials", killed / "adversarials")
    resumed = run_evaluate(overrides, killed)
    rows = list(csv.DictReader((killed / "per_sample.csv").open()))
    pairs = [(r["index"], r["attack"]) for r in rows if r["error"] is not None]
    assert len(pairs) == len(set(pairs)) == 24  # each pair once; the cut line dropped
    assert resumed["clean_accuracy"] == full["clean_accuracy"]
    assert resumed["n_samples"] == full["n_samples"] == 12
    for name, stats in full["attacks"].items():  # all but the wall-clock seconds
        again = {k: v for k, v in resumed["attacks"][name].items() if k != "seconds_per_sample"}
        assert json.dumps(again) == json.dumps(
            {k: v for k, v in stats.items() if k != "seconds_per_sample"}
        )


def test_a_broken_attack_in_a_run_is_recorded_and_the_run_goes_on(tmp_path):
    summary = run_evaluate(
        tiny_overrides(
            "model=cnn",
            PRETRAINED,
            "data.test_samples=4",
            "norm=linf",
            "attack=fgsm",
            "+attack.boom._target_=conftest.RaisingAttack",
            "+attack.boom.norm=linf",
            "figure_samples=0",
            *tiny_attack_overrides(["fgsm"]),
        ),
        tmp_path,
    )
    assert summary["attacks"]["boom"]["errors"] == 4
    assert summary["attacks"]["fgsm"]["errors"] == 0
    assert summary["attacks"]["all"]["successes"] == 4


def test_attack_and_norm_mistakes_are_named(tmp_path):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="(?s)attack/bimm.*bim_l2"):
        run_evaluate(tiny_overrides("model=cnn", PRETRAINED, "norm=linf", "attack=bimm"), tmp_path)
    with pytest.raises(MissingConfigException, match="(?s)norm/l3.*linf"):
        run_evaluate(tiny_overrides("model=cnn", PRETRAINED, "norm=l3"), tmp_path)
    with pytest.raises(ValueError, match="attack=bim minimises linf, not norm=l2: use norm=linf"):
        run_evaluate(tiny_overrides("model=cnn", PRETRAINED, "norm=l2", "attack=bim"), tmp_path)
    with pytest.raises(ValueError, match="attack=bim needs a norm: add norm=linf"):
        run_evaluate(tiny_overrides("model=cnn", PRETRAINED, "attack=bim"), tmp_path)


def test_gradient_attacks_on_a_model_without_gradients(tmp_path):
    with pytest.raises(
        ValueError, match="(?s)model=nearest_neighbor has no input gradient.*norm=l2's whole suite"
    ):
        run_evaluate(
            tiny_overrides("model=nearest_neighbor", "norm=l2", "attack=fgm"), tmp_path / "a"
        )
    summary = run_evaluate(
        tiny_overrides(
            "model=nearest_neighbor",
            "data.test_samples=4",
            "norm=l2",
            "attack=[fgm,gaussian_noise]",
            "figure_samples=0",
            *tiny_attack_overrides(["gaussian_noise"]),
        ),
        tmp_path / "b",
    )
    assert "no input gradient" in summary["skipped_attacks"]["fgm"]
    assert set(summary["attacks"]) == {"gaussian_noise", "paper_attacks", "all"}


class _MeanThreshold(torch.nn.Module):
    """Class 1 once the mean pixel passes 0.2, else class 0: a boundary at a known epsilon."""

    gradient = "none"
    name = "mean_threshold"
    logit_scale = 1.0  # calibrated units of the harness's margin
    binarize_input = False
    reconstructs = False

    def forward(self, x):
        margin = x.flatten(1).mean(1) - 0.2
        return torch.stack([-margin, margin], 1)


class _Shift(EpsilonSearchAttack):
    norms = ("linf",)

    def make_candidate(self, model, x, y):
        return lambda rows, eps: (x[rows] + eps.reshape(-1, 1, 1, 1)).clamp(0, 1)


def test_epsilon_search_brackets_then_bisects_to_the_boundary():
    base = torch.tensor([0.0, 0.05, 0.1, 0.15, 0.95])
    x = base.reshape(-1, 1, 1, 1).expand(5, 1, 28, 28).clone()
    x[4] = 0.0
    x[4, 0, :2] = 1.0  # mean 0.07: needs eps 0.135 on the other 726 pixels (0.2*784-56)/728
    y = torch.zeros(5, dtype=torch.long)
    attack = _Shift("shift", "linf", eps_start=0.01, bracket_steps=20, bisect_steps=12)
    outcome = run_attack(attack, _MeanThreshold(), x, y, y, seed=0)
    needed = torch.cat([0.2 - base[:4], torch.tensor([(0.2 * 784 - 56) / 728])])
    assert torch.allclose(outcome.distance, needed, atol=2e-3)
    assert (outcome.distance >= needed - 1e-6).all()
    assert (outcome.queries <= 20 + 12).all()
    never = _Shift("shift", "linf", eps_start=0.5, bracket_steps=20, bisect_steps=0)
    far = run_attack(never, _MeanThreshold(), torch.zeros(1, 1, 28, 28) - 1.0, y[:1], y[:1], 0)
    assert far.queries.item() == 3  # 0.5, 0.75, then eps_max 1 once: no repeats


def test_a_defense_raising_on_nan_inside_an_attack_becomes_error_rows(cnn, test_batch):
    """ABS raises FloatingPointError when its bound turns NaN: a recorded failure, not a crash."""

    class NaNInside(torch.nn.Module):
        gradient = "exact"
        name = "nan_inside"
        logit_scale = 1.0  # calibrated units of the harness's margin
        binarize_input = False
        reconstructs = False

        def forward(self, x):
            if x.requires_grad:
                raise FloatingPointError("model=nan_inside: the ELBO is NaN")
            return cnn(x)

    x, y = test_batch
    clean = cnn(x).argmax(1)
    outcome = run_attack(tiny_attack("bim"), NaNInside(), x, y, clean, seed=0)
    assert all(e.startswith("FloatingPointError: model=nan_inside") for e in outcome.error)
    assert torch.isinf(outcome.distance).all()


def test_max_queries_stops_an_attack_and_keeps_what_it_met(cnn, test_batch):
    x, y = test_batch
    clean = cnn(x).argmax(1)
    attack = tiny_attack("pointwise")
    attack.max_queries = 25
    outcome = run_attack(attack, cnn, x, y, clean, seed=0)
    assert (outcome.queries <= 25).all() and outcome.error == [""] * len(x)
    assert outcome.success.sum() >= len(x) // 2  # the salt-and-pepper starts it met
    assert attack.settings()["max_queries"] == 25


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FMNAttack("fmn", "l1"), "attack fmn (FMNAttack) does not minimise norm=l1"),
        (lambda: APGDAttack("apgd", "linf", 0.1, loss="hinge"), "attack.apgd.loss='hinge'"),
        (
            lambda: HopSkipJumpAttack("hsj", "l2", stepsize_search="line"),
            "stepsize_search='line': choose geometric_progression or grid_search",
        ),
        (lambda: SaltAndPepperAttack("sp", "l0", epsilons=0), "epsilons and repetitions"),
        (lambda: IterativeAttack("pgd", "linf", 0.3, search=False, growth=2.0), "growth apply"),
    ],
)
def test_bad_attack_settings_fail_when_built_and_name_the_value(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()
