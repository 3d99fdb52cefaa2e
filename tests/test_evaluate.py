"""evaluate.py's task: summary.json and per_sample.csv, and the errors a user can hit."""

from __future__ import annotations

import csv
import json

import pytest

from abslab.models.pretrained import WeightsError
from abslab.results.per_sample import COLUMNS
from conftest import REFERENCE_MODELS, run_evaluate, run_train, tiny_overrides

PRETRAINED = f"model.pretrained={REFERENCE_MODELS / 'cnn'}"


def test_evaluate_writes_summary_and_per_sample_rows(tmp_path):
    summary = run_evaluate(
        tiny_overrides(
            "model=cnn", PRETRAINED, "data.test_samples=100", "data.test_offset=50", "logger=wandb"
        ),
        tmp_path,
    )
    with (tmp_path / "per_sample.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS) and {r["attack"] for r in rows} == {"none"}
    assert [int(r["index"]) for r in rows] == list(range(50, 150))
    accuracy = sum(r["label"] == r["clean_pred"] for r in rows) / len(rows)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["n_samples"] == summary["n_samples"] == 100
    assert saved["clean_accuracy"] == pytest.approx(accuracy) and accuracy > 0.95
    assert saved["model"] == "cnn" and saved["config"]["data"]["test_offset"] == 50
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_evaluate_a_trained_checkpoint_and_reject_a_mismatched_one(tmp_path):
    run_train(
        tiny_overrides(
            "model=madry",
            "model.train_steps=1",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1",
            "test_after_fit=false",
        ),
        tmp_path / "train",
    )
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    summary = run_evaluate(
        tiny_overrides(
            "model=madry",
            f"ckpt={ckpt}",
            "data.test_samples=20",
            "norm=linf",
            "attack=pgd",
            "attack.pgd.steps=2",
        ),
        tmp_path / "eval",
    )
    with (tmp_path / "eval" / "per_sample.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["attack"] == "pgd"]
    # robust = correct and not broken within the threshold (0.3), recounted from the rows
    robust = sum(
        r["label"] == r["clean_pred"]
        and not (r["success"] == "1" and float(r["distance"]) <= 0.3 * (1 + 1e-5))
        for r in rows
    )
    assert summary["n_samples"] == len(rows) == 20
    assert summary["attacks"]["pgd"]["accuracy_at_threshold"] == pytest.approx(robust / 20)
    assert summary["attacks"]["pgd"]["accuracy_at_threshold"] <= summary["clean_accuracy"]
    with pytest.raises(WeightsError, match="trained as model=madry.*model=cnn"):
        run_evaluate(tiny_overrides("model=cnn", f"ckpt={ckpt}"), tmp_path / "wrong")


def test_evaluate_needs_weights_and_says_how(tmp_path):
    with pytest.raises(WeightsError, match=r"ckpt=PATH.*model.pretrained=PATH"):
        run_evaluate(tiny_overrides("model=cnn", "weights=null"), tmp_path)
    with pytest.raises(WeightsError, match="does not exist"):
        run_evaluate(tiny_overrides("model=cnn", f"ckpt={tmp_path / 'x.ckpt'}"), tmp_path)
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a loadable checkpoint"):
        run_evaluate(tiny_overrides("model=cnn", f"ckpt={tmp_path / 'garbage.ckpt'}"), tmp_path)


def test_evaluate_defaults_to_the_committed_own_weights(tmp_path):
    """`python evaluate.py model=cnn` with nothing trained here loads checkpoints/cnn.ckpt."""
    summary = run_evaluate(
        tiny_overrides("model=cnn", f"registry={tmp_path / 'empty'}", "data.test_samples=20"),
        tmp_path / "run",
    )
    assert summary["ckpt"] == "checkpoints/cnn.ckpt" and summary["clean_accuracy"] >= 0.9


def test_nearest_neighbor_needs_no_weights(tmp_path):
    summary = run_evaluate(
        tiny_overrides("model=nearest_neighbor", "data.test_samples=50"), tmp_path
    )
    assert summary["n_samples"] == 50 and summary["clean_accuracy"] > 0.9


def test_runs_table_reads_run_dirs(tmp_path):
    from abslab.results.tables import runs_table

    run_evaluate(tiny_overrides("model=nearest_neighbor", "data.test_samples=10"), tmp_path / "a")
    table = runs_table([tmp_path / "a"]).splitlines()
    assert table[0].startswith("| model | samples | clean acc.")
    assert table[2].startswith("| nearest_neighbor | 10 | ")


def test_a_slim_checkpoint_evaluates_like_the_full_one(tmp_path):
    from abslab.models.checkpoints import slim_checkpoint

    run_train(tiny_overrides("model=cnn", "debug=fast", "test_after_fit=false"), tmp_path / "train")
    full = tmp_path / "train" / "checkpoints" / "last.ckpt"
    slim = slim_checkpoint(full, tmp_path / "slim.ckpt")
    assert slim.stat().st_size < full.stat().st_size
    scores = [
        run_evaluate(tiny_overrides("model=cnn", f"ckpt={c}"), tmp_path / c.stem)["clean_accuracy"]
        for c in (full, slim)
    ]
    assert scores[0] == scores[1]
