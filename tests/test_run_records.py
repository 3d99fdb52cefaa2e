"""What a run dir records of the calls that wrote it (config.yaml, segments.jsonl, summary.json),
the resume guard against rows of another config or other weights, and weight files that are no
checkpoints."""

from __future__ import annotations

import csv
import json
import pickle

import pytest
import torch
import yaml

from abslab.models.pretrained import WeightsError
from abslab.utils.run_records import ResumeError
from conftest import REFERENCE_MODELS, run_evaluate, tiny_overrides

PRETRAINED = f"model.pretrained={REFERENCE_MODELS / 'cnn'}"


def fgsm_run(*extra: str) -> list[str]:
    """The published CNN under FGSM alone: seconds per image."""
    return tiny_overrides("model=cnn", "norm=linf", "attack=fgsm", "figure_samples=0", *extra)


def csv_rows(run_dir) -> list[dict[str, str]]:
    with (run_dir / "per_sample.csv").open() as f:
        return list(csv.DictReader(f))


def published_cnn_checkpoint(path, change: float = 0.0):
    """The authors' CNN weights as a ckpt= file, its first conv weight shifted by `change`."""
    from abslab.models.cnn import CNNDefense

    model = CNNDefense(pretrained=str(REFERENCE_MODELS / "cnn"))
    state = model.state_dict()
    state["net.convs.0.weight"] = state["net.convs.0.weight"] + change
    torch.save({"state_dict": state, "hyper_parameters": {"name": "cnn"}}, path)
    return path


def test_the_run_dir_config_is_the_one_that_ran(tmp_path):
    hydra_copy = tmp_path / ".hydra" / "config.yaml"
    hydra_copy.parent.mkdir()
    hydra_copy.write_text("attack: {fgsm: {bracket_steps: 20}}\n")  # as Hydra wrote it, pre-budget
    summary = run_evaluate(
        fgsm_run(PRETRAINED, "budget=smoke", "data.test_samples=3", "attack.fgsm.bisect_steps=7"),
        tmp_path,
    )
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    ran = summary["budgets"]["fgsm"]  # what the built attack held
    assert ran["bracket_steps"] == 4 and ran["bisect_steps"] == 2  # smoke lowers both
    for key in ("bracket_steps", "bisect_steps", "eps_start", "growth", "max_queries"):
        assert config["attack"]["fgsm"][key] == ran[key], key
    assert config["data"]["test_samples"] == 3 and config["budget"]["name"] == "smoke"
    assert yaml.safe_load(hydra_copy.read_text()) == config
    assert json.loads((tmp_path / "summary.json").read_text())["config"] == config


def test_a_resume_with_another_attack_budget_is_refused_unless_forced(tmp_path):
    run_evaluate(
        fgsm_run(PRETRAINED, "data.test_samples=2", "attack.fgsm.bisect_steps=3"), tmp_path
    )
    before = csv_rows(tmp_path)
    with pytest.raises(ResumeError) as refused:
        run_evaluate(
            fgsm_run(PRETRAINED, "data.test_samples=3", "attack.fgsm.bisect_steps=5"), tmp_path
        )
    message = str(refused.value)
    assert "attack.fgsm.bisect_steps: 3 (rows on disk) vs 5 (this run)" in message
    assert "resume=force" in message and "another run dir" in message
    assert "test_samples" not in message  # growing the run is not a difference
    assert csv_rows(tmp_path) == before  # stopped before any attack
    assert len((tmp_path / "segments.jsonl").read_text().splitlines()) == 1

    summary = run_evaluate(
        fgsm_run(PRETRAINED, "data.test_samples=3", "attack.fgsm.bisect_steps=5", "resume=force"),
        tmp_path,
    )
    assert summary["n_samples"] == 3
    assert summary["segments"][1]["forced"] == [
        "attack.fgsm.bisect_steps: 3 (rows on disk) vs 5 (this run)"
    ]


def test_a_resume_with_other_weights_is_refused(tmp_path):
    run_evaluate(fgsm_run(PRETRAINED, "data.test_samples=2"), tmp_path)
    same = published_cnn_checkpoint(tmp_path / "same.ckpt")
    other = published_cnn_checkpoint(tmp_path / "other.ckpt", change=1e-3)
    with pytest.raises(ResumeError, match=r"weights \(hash of the model's tensors\)"):
        run_evaluate(fgsm_run(f"ckpt={other}", "data.test_samples=3"), tmp_path)
    # the same weights from another file are the same weights
    summary = run_evaluate(fgsm_run(f"ckpt={same}", "data.test_samples=3"), tmp_path)
    first, second = summary["segments"]
    assert first["weights_hash"] == second["weights_hash"] is not None


def test_unknown_resume_mode_names_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="resume='keep': choose one of check, force"):
        run_evaluate(fgsm_run(PRETRAINED, "resume=keep"), tmp_path)


def test_two_segments_sum_their_wall_times(tmp_path):
    run_evaluate(fgsm_run(PRETRAINED, "data.test_samples=2"), tmp_path)
    summary = run_evaluate(fgsm_run(PRETRAINED, "data.test_samples=3"), tmp_path)
    segments = summary["segments"]
    assert [s["samples"] for s in segments] == [[[0, 2]], [[2, 3]]]
    assert [s["status"] for s in segments] == ["finished", "finished"]
    assert all(s["wall_time_s"] > 0 for s in segments)
    assert summary["wall_time_s"] == pytest.approx(
        segments[0]["wall_time_s"] + segments[1]["wall_time_s"]
    )
    assert segments[0]["config_hash"] == segments[1]["config_hash"]
    on_disk = [json.loads(line) for line in (tmp_path / "segments.jsonl").read_text().splitlines()]
    assert on_disk == segments
    assert json.loads((tmp_path / "summary.json").read_text())["segments"] == segments


def test_a_segment_is_on_disk_while_it_runs_and_records_a_failure(tmp_path):
    from abslab.utils.run_records import read_segments, segment

    with pytest.raises(RuntimeError, match="crash"), segment(tmp_path, commit="abc"):
        (running,) = read_segments(tmp_path)  # a killed call leaves this record
        assert running["status"] == "running" and running["wall_time_s"] is None
        raise RuntimeError("crash")
    (failed,) = read_segments(tmp_path)
    assert failed["status"] == "failed: RuntimeError" and failed["commit"] == "abc"
    assert failed["wall_time_s"] >= 0


class NotATensor:
    """An object a pickle would have to build: weights_only=True refuses it."""


@pytest.mark.parametrize("kind", ["text", "truncated", "pickled object"])
def test_a_file_that_is_no_checkpoint_stops_before_any_attack(tmp_path, kind):
    path = tmp_path / "bad.ckpt"
    if kind == "text":
        path = tmp_path / "README.md"
        path.write_text("# Not weights\n")
    elif kind == "truncated":
        data = published_cnn_checkpoint(tmp_path / "full.ckpt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        torch.save({"state_dict": {}, "extra": NotATensor()}, path, pickle_module=pickle)
    run_dir = tmp_path / "run"
    with pytest.raises(WeightsError) as refused:
        run_evaluate(fgsm_run(f"ckpt={path}", "data.test_samples=2"), run_dir)
    message = str(refused.value)
    assert f"ckpt={path} is not a loadable checkpoint" in message
    assert "train.py" in message and "weights.ckpt" in message  # what ckpt= takes
    assert "weights_only" not in message and refused.value.__cause__ is None
    if kind == "pickled object":
        assert "NotATensor" in message
    assert not (run_dir / "per_sample.csv").exists()


@pytest.mark.parametrize("kind", ["cnn", "abs"])
def test_a_published_weight_file_that_is_no_state_dict_is_named(tmp_path, kind):
    from abslab.models.cnn import CNNDefense
    from abslab.models.pretrained import load_reference_abs

    bad = tmp_path / ("vanilla_cnn.net" if kind == "cnn" else "ABS_0.net")
    bad.write_text("not weights")
    with pytest.raises(WeightsError) as refused:
        CNNDefense(pretrained=str(tmp_path)) if kind == "cnn" else load_reference_abs(tmp_path)
    message = str(refused.value)
    assert f"{bad} is not a loadable checkpoint" in message
    assert "vanilla_cnn.net, ABS_0.net" in message and "weights_only" not in message
