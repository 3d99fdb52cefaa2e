"""Weights by model name (weights=own|published), from the model config's card: the trained run
wins over the committed copy, a model takes the weights its card's weights_of names (binary ABS:
the ABS weights with their fitted scalars), and every miss names its fix."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from abslab.models import registry
from abslab.models.pretrained import WeightsError
from conftest import CONF, REPO


def spec(name, published=None, weights_of=None, has_weights=True):
    """A hand-written model config with its card (only what the registry reads)."""
    card = {"published": published, "weights_of": weights_of, "has_weights": has_weights}
    return OmegaConf.create({"name": name, "card": card})


def test_own_prefers_the_trained_run_then_the_committed_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "cnn.ckpt").write_bytes(b"committed")
    cnn = spec("cnn")
    assert registry.resolve(cnn, "own", "runs", "pub") == (registry.COMMITTED / "cnn.ckpt", {})
    (tmp_path / "runs" / "cnn").mkdir(parents=True)
    (tmp_path / "runs" / "cnn" / "weights.ckpt").write_bytes(b"trained")
    assert registry.resolve(cnn, "own", "runs", "pub")[0] == tmp_path.joinpath(
        "runs", "cnn", "weights.ckpt"
    ).relative_to(tmp_path)


def test_weights_of_takes_the_other_models_weights_and_their_scalars(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "vae"
    run.mkdir(parents=True)
    (run / "weights.ckpt").write_bytes(b"x")
    binary = spec("binary_vae", weights_of="vae")
    with pytest.raises(WeightsError, match="fit_scalars --ckpt runs/vae/weights.ckpt"):
        registry.resolve(binary, "own", "runs", "pub")
    scalars = [1.0, 0.9, 1.1, 1, 1, 1, 1, 1, 1, 1]
    (run / "weights.scalars.json").write_text(json.dumps({"class_scalars": scalars}))
    ckpt, overrides = registry.resolve(binary, "own", "runs", "pub")
    assert ckpt == (run / "weights.ckpt").relative_to(tmp_path)
    assert overrides == {"class_scalars": scalars}


def test_misses_and_published_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match=r"python train.py experiment=mine"):
        registry.resolve(spec("mine"), "own", "runs", "pub")
    with pytest.raises(WeightsError, match="mine has no published weights"):
        registry.resolve(spec("mine"), "published", "runs", "pub")
    with pytest.raises(ValueError, match="weights='theirs'"):
        registry.resolve(spec("mine"), "theirs", "runs", "pub")
    assert registry.resolve(spec("b", published="folder"), "published", "r", "pub") == (
        None,
        {"pretrained": "pub/folder"},
    )
    assert registry.resolve(spec("nn", has_weights=False), "own", "r", "pub") == (None, {})


def model_config(name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("evaluate", [f"model={name}"]).model


def test_load_model_writes_what_it_applied_into_the_spec(tmp_path, monkeypatch):
    """Binary ABS from own ABS weights: the fitted scalars land in the spec (the run's config)."""
    monkeypatch.chdir(REPO)
    binary_abs = model_config("binary_abs")
    model, ckpt = registry.load_model(binary_abs, "own", None, "no-registry", "pub")
    fitted = json.loads((REPO / "checkpoints" / "abs.scalars.json").read_text())
    assert ckpt == "checkpoints/abs.ckpt"
    assert list(binary_abs.class_scalars) == fitted["class_scalars"]
    assert model.name == "binary_abs"
    with pytest.raises(WeightsError, match="model=madry has no weights: give ckpt=PATH"):
        registry.load_model(model_config("madry"), None, None, "no-registry", "pub")


def test_the_committed_weights_of_the_table_resolve(monkeypatch):
    """checkpoints/ holds every model's own weights, binary ABS's scalars included."""
    monkeypatch.chdir(REPO)
    for name in ("cnn", "binary_cnn", "transfer_cnn", "madry", "abs", "binary_abs"):
        ckpt, _ = registry.resolve(model_config(name), "own", "no-registry", "pub")
        assert ckpt.is_file()
