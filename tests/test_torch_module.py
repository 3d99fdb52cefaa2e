"""model=torch_module: any importable nn.Module, evaluated and attacked as abslab's own models.

TinyNet below is the user's module: Hydra imports it as `test_torch_module.TinyNet` (pytest
puts tests/ on sys.path, as it does for conftest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hydra.errors import InstantiationException
from torch import nn
from torch.nn import functional as F

from abslab.models.base import build_defense
from abslab.models.pretrained import WeightsError
from abslab.models.torch_module import TorchModuleDefense, load_module_weights
from abslab.report import report
from abslab.results.cells import build_cells, find_runs
from abslab.results.figures import curves_figure
from conftest import compose_config, run_evaluate, tiny_overrides


class TinyNet(nn.Module):
    """A one-hidden-layer classifier of digits with pixels in [-1, 1]."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class OtherNet(nn.Module):
    """Another architecture: its weights do not fit TinyNet."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


def images(arrays: dict[str, Any], split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n images (n, 1, 28, 28) in [0, 1] of a split and their labels (n,)."""
    x = torch.from_numpy(arrays[f"{split}_images"][:n]).float().div(255).unsqueeze(1)
    return x, torch.from_numpy(arrays[f"{split}_labels"][:n]).long()


@pytest.fixture(scope="module")
def trained(mnist_arrays) -> TinyNet:
    """TinyNet after 150 Adam steps on 2,000 training digits mapped to [-1, 1]."""
    torch.manual_seed(0)
    net = TinyNet()
    x, y = images(mnist_arrays, "train", 2000)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(150):
        batch = slice(step * 100 % 2000, step * 100 % 2000 + 100)
        optimizer.zero_grad()
        F.cross_entropy(net(2 * x[batch] - 1), y[batch]).backward()
        optimizer.step()
    return net.eval()


def evaluate_tiny_net(weights: Path, output_dir: Path, *extra: str) -> dict[str, Any]:
    """evaluate.py on TinyNet as model=torch_module (name tiny_net, pixels in [-1, 1]): FGSM on
    the first 8 test images. The run a report check (Table 1 from the card) extends."""
    overrides = tiny_overrides(
        "model=torch_module",
        "model.name=tiny_net",
        "model.module._target_=test_torch_module.TinyNet",
        f"model.weights={weights}",
        "model.input_range=[-1,1]",
        "norm=linf",
        "attack=fgsm",
        "data.test_samples=8",
        *extra,
    )
    return run_evaluate(overrides, output_dir)


def test_an_own_module_is_evaluated_and_attacked(trained, mnist_arrays, tmp_path):
    weights = tmp_path / "tiny_net.pt"
    torch.save(trained.state_dict(), weights)
    summary = evaluate_tiny_net(weights, tmp_path / "run")
    x, y = images(mnist_arrays, "test", 8)
    with torch.no_grad():
        expected = (trained(2 * x - 1).argmax(1) == y).float().mean().item()
    assert expected >= 0.5  # well above chance: the accuracies below mean something
    assert summary["model"] == "tiny_net" and summary["n_samples"] == 8
    assert summary["clean_accuracy"] == pytest.approx(expected)
    fgsm = summary["attacks"]["fgsm"]
    assert fgsm["accuracy_at_threshold"] < summary["clean_accuracy"]
    assert fgsm["successes"] > 0 and fgsm["errors"] == 0
    assert summary["config"]["model"]["card"]["label"] == "tiny_net"  # label: ${..name}
    assert summary["pretrained"] == str(weights)
    # the report shows it from the run's own card: a column of the table and a curve
    md = report([tmp_path / "run"], tmp_path / "out" / "t", "T", wandb_mode="disabled")
    text = md.read_text()
    fgsm_accuracy = 100 * fgsm["accuracy_at_threshold"]
    assert "| attack | tiny_net |" in text
    assert f"| fgsm | {_median(fgsm['median_distance'])} / {fgsm_accuracy:.0f}% (opt " in text
    assert ",tiny_net,all," in (tmp_path / "out" / "t.csv").read_text()
    figure = curves_figure(build_cells(find_runs([tmp_path / "run"])[0]), None)
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert "tiny_net (N=8)" in legend  # the all-attacks curve, beside each attack's


def _median(value: float) -> str:
    """A median as the report prints it: three significant digits."""
    return f"{value:.3g}"


def test_pixels_are_mapped_onto_the_module_range(trained):
    defense = TorchModuleDefense(trained, input_range=[-1.0, 1.0]).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(defense(x), trained(x * 2 - 1))


def test_state_dicts_and_checkpoints_load(trained, tmp_path):
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, checkpoint)  # a Lightning-style checkpoint
    fresh = TinyNet()
    load_module_weights(fresh, checkpoint)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())


def test_weights_of_another_architecture_name_the_file_and_the_keys(tmp_path):
    weights = tmp_path / "other_net.pt"
    torch.save(OtherNet().state_dict(), weights)
    cfg = compose_config(
        "evaluate",
        [
            "model=torch_module",
            "model.module._target_=test_torch_module.TinyNet",
            f"model.weights={weights}",
        ],
        tmp_path,
    )
    with pytest.raises(InstantiationException) as error:  # Hydra's wrapper of the WeightsError
        build_defense(cfg.model)
    assert isinstance(error.value.__cause__, WeightsError)
    message = str(error.value.__cause__)
    assert str(weights) in message
    assert "layers.1.weight" in message and "head.weight" in message


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="model.gradient='envelope'"):
        TorchModuleDefense(TinyNet(), gradient="envelope")
    with pytest.raises(ValueError, match=r"model.input_range=\[1.0, 0.0\]"):
        TorchModuleDefense(TinyNet(), input_range=[1.0, 0.0])
    with pytest.raises(TypeError, match="not a torch nn.Module"):
        TorchModuleDefense(lambda x: x)
    with pytest.raises(WeightsError, match="no such file"):
        TorchModuleDefense(TinyNet(), weights=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match=r"returned shape \(4, 5\)"):
        TorchModuleDefense(nn.Sequential(nn.Flatten(), nn.Linear(784, 5)))(torch.rand(4, 1, 28, 28))
