"""Weights by model name (weights=own|published): the trained run wins over the committed copy,
binary ABS takes the ABS weights with their fitted scalars, and every miss names its fix."""

from __future__ import annotations

import json

import pytest

from abslab.models import registry
from abslab.models.pretrained import WeightsError
from conftest import REPO


def test_own_prefers_the_trained_run_then_the_committed_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "cnn.ckpt").write_bytes(b"committed")
    assert registry.resolve("cnn", "own", "runs", "pub") == (registry.COMMITTED / "cnn.ckpt", {})
    (tmp_path / "runs" / "cnn").mkdir(parents=True)
    (tmp_path / "runs" / "cnn" / "weights.ckpt").write_bytes(b"trained")
    assert registry.resolve("cnn", "own", "runs", "pub")[0] == tmp_path.joinpath(
        "runs", "cnn", "weights.ckpt"
    ).relative_to(tmp_path)


def test_binary_abs_takes_the_abs_weights_and_their_scalars(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "abs"
    run.mkdir(parents=True)
    (run / "weights.ckpt").write_bytes(b"x")
    with pytest.raises(WeightsError, match="fit_scalars --ckpt runs/abs/weights.ckpt"):
        registry.resolve("binary_abs", "own", "runs", "pub")
    scalars = [1.0, 0.9, 1.1, 1, 1, 1, 1, 1, 1, 1]
    (run / "weights.scalars.json").write_text(json.dumps({"class_scalars": scalars}))
    ckpt, overrides = registry.resolve("binary_abs", "own", "runs", "pub")
    assert ckpt.name == "weights.ckpt" and overrides == {"class_scalars": scalars}


def test_misses_and_published_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match=r"python train.py experiment=madry"):
        registry.resolve("madry", "own", "runs", "pub")
    with pytest.raises(WeightsError, match="madry has no published weights"):
        registry.resolve("madry", "published", "runs", "pub")
    with pytest.raises(ValueError, match="weights='mine'"):
        registry.resolve("cnn", "mine", "runs", "pub")
    assert registry.resolve("binary_cnn", "published", "r", "pub") == (
        None,
        {"pretrained": "pub/cnn"},
    )
    assert registry.resolve("nearest_neighbor", "own", "r", "pub") == (None, {})
    assert registry.substitute_weights(None, "r", "pub") == "pub/cnn/transfer_cnn.net"
    assert registry.substitute_weights("x.ckpt", "r", "pub") == "x.ckpt"


def test_the_committed_weights_of_the_table_resolve(monkeypatch):
    """checkpoints/ holds what results/table1.md rests on, binary ABS's scalars included."""
    monkeypatch.chdir(REPO)
    for name in ("cnn", "binary_cnn", "transfer_cnn", "madry", "abs", "binary_abs"):
        ckpt, _ = registry.resolve(name, "own", "no-registry", "pub")
        assert ckpt.is_file()
