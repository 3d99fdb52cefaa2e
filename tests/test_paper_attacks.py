"""The paper's own attacks: estimated gradients ("w/ GE") and transfer, on the authors' small
transfer CNN (52k parameters: cheap to query 1,568 times a gradient)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from abslab.attacks.estimators import GradientEstimator
from abslab.attacks.gradient import IterativeAttack
from abslab.attacks.harness import run_attack
from abslab.attacks.queries import QueryModel
from abslab.attacks.suite import instantiate_attack
from abslab.models.cnn import CNNDefense
from abslab.models.pretrained import WeightsError
from abslab.models.projected_gradient import input_gradient
from conftest import (
    REFERENCE_MODELS,
    compose_config,
    plain_distance,
    run_evaluate,
    run_train,
    tiny_overrides,
)

TRANSFER_NET = REFERENCE_MODELS / "cnn" / "transfer_cnn.net"


@pytest.fixture(scope="module")
def small_cnn():
    return CNNDefense(architecture="transfer", pretrained=str(TRANSFER_NET)).eval()


@pytest.fixture(scope="module")
def vanilla_cnn():
    return CNNDefense(pretrained=str(REFERENCE_MODELS / "cnn")).eval()


def _images(mnist_arrays, n: int, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    x, y = mnist_arrays[f"{split}_images"][:n], mnist_arrays[f"{split}_labels"][:n]
    return torch.from_numpy(x).float().div(255).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


class ScoresOnly(nn.Module):
    """A defense that fails any test which lets autograd reach it: `gradient: none`, and its
    forward asserts that no graph is being built through it."""

    gradient = "none"
    name = "scores_only"
    logit_scale = 1.0  # calibrated units of the harness's margin
    binarize_input = False
    reconstructs = False

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not x.requires_grad and not torch.is_grad_enabled(), "autograd reached the model"
        self.calls += 1
        return self.net(x)


def test_coordinate_estimate_agrees_with_autograd_and_counts_its_queries(small_cnn, mnist_arrays):
    x, y = _images(mnist_arrays, 6)
    rows = torch.arange(len(x))
    exact, _ = input_gradient(QueryModel(small_cnn, x, y, "linf"), x, y, rows)
    model = QueryModel(ScoresOnly(small_cnn), x, y, "linf", estimator=GradientEstimator())
    estimated, _ = input_gradient(model, x, y, rows)
    cosine = nn.functional.cosine_similarity(estimated.flatten(1), exact.flatten(1))
    assert (cosine >= 0.99).all(), cosine
    assert (model.queries == 1 + 2 * 784).all()  # the forward, then 1,568 differences
    input_gradient(model, x, y, rows)  # the same point again: the estimate is reused
    assert (model.queries == 2 + 2 * 784).all()


def test_antithetic_estimate_points_along_the_gradient_for_its_sample_count(
    small_cnn, mnist_arrays
):
    x, y = _images(mnist_arrays, 6)
    rows = torch.arange(len(x))
    exact, _ = input_gradient(QueryModel(small_cnn, x, y, "linf"), x, y, rows)
    estimator = GradientEstimator("antithetic", step=0.01, samples=400)
    model = QueryModel(ScoresOnly(small_cnn), x, y, "linf", estimator=estimator)
    torch.manual_seed(0)
    estimated, _ = input_gradient(model, x, y, rows)
    cosine = nn.functional.cosine_similarity(estimated.flatten(1), exact.flatten(1))
    # 200 random pairs in 784 dimensions: about sqrt(200 / 984) = 0.45 expected
    assert (cosine > 0.25).all() and (cosine < 0.7).all(), cosine
    assert (model.queries == 1 + 400).all()


@pytest.fixture(scope="module")
def tiny_cnn(mnist_arrays):
    """A CNN small enough (23k multiply-adds) to be queried 1,568 times a gradient in a test,
    trained for a few seconds: about 95% test accuracy."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 5, stride=2),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(200, 10),
    )
    x, y = _images(mnist_arrays, 8_000, split="train")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for batch in torch.randperm(len(x)).split(64):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
        optimizer.step()
    net.gradient, net.name = "exact", "tiny_cnn"
    net.binarize_input, net.reconstructs = False, False  # the Defense contract's flags
    net.logit_scale = 1.0  # calibrated units of the harness's margin
    return net.eval()


GE_ATTACKS = [
    "fgm_ge",
    "fgsm_ge",
    "bim_ge",
    "bim_l2_ge",
    "mim_ge",
    "deepfool_l2_ge",
    "deepfool_linf_ge",
]


@pytest.mark.parametrize("name", GE_ATTACKS)
def test_each_ge_attack_breaks_a_cnn_it_can_only_query(name, tiny_cnn, mnist_arrays):
    from test_attacks import tiny_attack

    x, y = _images(mnist_arrays, 6)
    with torch.no_grad():
        clean = tiny_cnn(x).argmax(1)
    attack = tiny_attack(name)
    assert attack.estimator == GradientEstimator("coordinate", 0.1)
    blind = ScoresOnly(tiny_cnn)
    outcome = run_attack(attack, blind, x, y, clean, seed=0)
    assert outcome.error == [""] * len(x)
    attacked = clean == y
    assert outcome.success[attacked].sum() >= attacked.sum() // 2
    adv = outcome.adversarial[outcome.success]
    with torch.no_grad():
        assert (tiny_cnn(adv).argmax(1) != y[outcome.success]).all()
    measured = plain_distance(adv, x[outcome.success], attack.norm)
    assert torch.allclose(measured, outcome.distance[outcome.success])
    assert (outcome.queries[attacked] >= 2 * 784).all()


def test_bim_ge_reaches_bims_accuracy_without_autograd_on_the_model(tiny_cnn, mnist_arrays):
    """BIM with its epsilon search against BIM w/ GE (coordinate-wise) on 40 images, compared
    at BIM's median distance, where accuracy is about 50%: within 5 points (2 images)."""
    x, y = _images(mnist_arrays, 40)
    with torch.no_grad():
        clean = tiny_cnn(x).argmax(1)
    assert (clean == y).float().mean() > 0.85
    settings = dict(norm="linf", eps_start=0.1, steps=5, bracket_steps=10, bisect_steps=6)
    bim = run_attack(IterativeAttack("bim", **settings), tiny_cnn, x, y, clean, seed=0)
    ge_attack = IterativeAttack("bim_ge", **settings)
    ge_attack.estimator = GradientEstimator()
    blind = ScoresOnly(tiny_cnn)
    bim_ge = run_attack(ge_attack, blind, x, y, clean, seed=0)
    assert bim_ge.error == [""] * len(x) and blind.calls > 0
    threshold = bim.distance.median().item()
    accuracy = {
        name: (outcome.distance > threshold).float().mean().item()
        for name, outcome in [("bim", bim), ("bim_ge", bim_ge)]
    }
    assert abs(accuracy["bim_ge"] - accuracy["bim"]) <= 0.05, (threshold, accuracy)
    assert (bim_ge.queries[clean == y] >= 2 * 784).all()


def test_estimator_settings_are_checked():
    from test_attacks import attack_config

    with pytest.raises(ValueError, match="kind='finite'"):
        GradientEstimator("finite")
    with pytest.raises(ValueError, match="samples=7: must be an even integer >= 2"):
        GradientEstimator("antithetic", samples=7)
    with pytest.raises(ValueError, match=r"step=0: must be a number in \(0, 1\]"):
        GradientEstimator(step=0)
    with pytest.raises(ValueError, match="samples=10: must be null for kind=coordinate"):
        GradientEstimator("coordinate", samples=10)
    coordinate = {"kind": "coordinate", "step": 0.1, "samples": None}
    spec = attack_config("gaussian_noise", {"estimator": coordinate})
    with pytest.raises(ValueError, match="takes no gradients"):
        instantiate_attack("gaussian_noise", spec)


def test_transfer_asks_the_target_for_decisions_only(vanilla_cnn, mnist_arrays, monkeypatch):
    x, y = _images(mnist_arrays, 8)
    with torch.no_grad():
        clean = vanilla_cnn(x).argmax(1)
    state = {"in_predict": False}
    target_calls: list[bool] = []
    forward, predict = QueryModel.forward, QueryModel.predict

    def spying_predict(self, inputs, rows):
        state["in_predict"] = True
        try:
            return predict(self, inputs, rows)
        finally:
            state["in_predict"] = False

    def spying_forward(self, inputs, rows=None):
        if self.defense is vanilla_cnn:
            target_calls.append(state["in_predict"] and not inputs.requires_grad)
        return forward(self, inputs, rows)

    monkeypatch.setattr(QueryModel, "predict", spying_predict)
    monkeypatch.setattr(QueryModel, "forward", spying_forward)
    from test_attacks import attack_config

    spec = attack_config("transfer_linf")
    outcome = run_attack(instantiate_attack("transfer_linf", spec), vanilla_cnn, x, y, clean, 0)
    assert target_calls and all(target_calls)
    assert outcome.error == [""] * len(x)
    assert outcome.success.sum() >= len(x) - 1
    adv = outcome.adversarial[outcome.success]
    with torch.no_grad():
        assert (vanilla_cnn(adv).argmax(1) != y[outcome.success]).all()
    measured = plain_distance(adv, x[outcome.success], "linf")
    assert torch.allclose(measured, outcome.distance[outcome.success])
    # three substitute attacks, each followed by a short search on the target
    assert (outcome.queries > 10).all() and (outcome.queries < 3 * 45).all()


def test_transfer_from_a_substitute_trained_here(tmp_path, mnist_arrays):
    """model=transfer_cnn trains the substitute; its checkpoint serves as substitute_ckpt."""
    run_train(
        tiny_overrides("model=transfer_cnn", "trainer.max_epochs=1", "seed=0"), tmp_path / "sub"
    )
    ckpt = tmp_path / "sub" / "checkpoints" / "last.ckpt"
    summary = run_evaluate(
        tiny_overrides(
            "model=nearest_neighbor",
            "data.test_samples=6",
            "norm=l2",
            "attack=[transfer_l2,fgm,fgm_ge]",
            f"attack.transfer_l2.substitute_ckpt={ckpt}",
            "attack.transfer_l2.substitute_attacks.deepfool_l2=null",
            "attack.transfer_l2.substitute_attacks.bim_l2=null",
            "estimator@attack.fgm_ge.estimator=antithetic",
            "attack.fgm_ge.estimator.samples=50",
            "figure_samples=0",
        ),
        tmp_path / "nn",
    )
    transfer = summary["budgets"]["transfer_l2"]
    assert transfer["substitute_weights"] == str(ckpt)
    assert list(transfer["substitute_attacks"]) == ["fgm"]
    # nearest_neighbor has no gradient: fgm is skipped, its estimated twin and transfer run
    assert set(summary["skipped_attacks"]) == {"fgm"}
    for name in ("transfer_l2", "fgm_ge"):
        stats = summary["attacks"][name]
        assert stats["errors"] == 0 and stats["successes"] >= 3, (name, stats)


def test_substitute_mistakes_are_named(tmp_path):
    from test_attacks import attack_config

    missing = attack_config("transfer_l2", {"substitute_ckpt": str(tmp_path / "missing.ckpt")})
    with pytest.raises(WeightsError, match="missing.ckpt"):
        instantiate_attack("transfer_l2", missing)
    no_gradient = attack_config("transfer_l2")
    no_gradient.substitute = compose_config("evaluate", ["model=nearest_neighbor"], tmp_path).model
    with pytest.raises(ValueError, match="model=nearest_neighbor has no input gradient"):
        instantiate_attack("transfer_l2", no_gradient)
    dropped = {f"substitute_attacks.{name}": None for name in ("fgm", "deepfool_l2", "bim_l2")}
    with pytest.raises(ValueError, match="substitute_attacks has none left"):
        instantiate_attack("transfer_l2", attack_config("transfer_l2", dropped))


def test_a_ge_attack_reports_its_estimator_under_its_config_keys():
    from test_attacks import attack_config

    antithetic = {"kind": "antithetic", "step": 0.1, "samples": 100}
    attack = instantiate_attack("bim_ge", attack_config("bim_ge", {"estimator": antithetic}))
    assert attack.settings()["estimator"] == {"kind": "antithetic", "step": 0.1, "samples": 100}
    assert "estimator" not in instantiate_attack("bim", attack_config("bim")).settings()
