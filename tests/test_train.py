"""train.py's task: checkpoints, resuming, seeding, loggers."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_train, tiny_overrides

SHORT = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
]


def test_checkpoints_are_written(tmp_path):
    summary = run_train(tiny_overrides(*SHORT), tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file() and summary["best_checkpoint"].endswith("epoch_000.ckpt")
    assert summary["steps"] == 3 and json.loads((tmp_path / "summary.json").read_text())
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3 and checkpoint["hyper_parameters"]["name"] == "cnn"


def test_a_crashed_run_resumes_where_it_stopped(tmp_path):
    two_epochs = [*SHORT, "trainer.max_epochs=2"]
    with pytest.raises(RuntimeError, match="simulated crash at step 4"):
        run_train(
            tiny_overrides(
                *two_epochs,
                "+callbacks.crash._target_=conftest.CrashAtStep",
                "+callbacks.crash.step=4",
            ),
            tmp_path / "crashed",
        )
    saved = tmp_path / "crashed" / "checkpoints" / "on_exception.ckpt"
    checkpoint = torch.load(saved, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4

    resumed = run_train(tiny_overrides(*two_epochs, f"ckpt_path={saved}"), tmp_path / "resumed")
    assert resumed["steps"] == 6 and resumed["epochs"] == 2
    after = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(
        not torch.equal(after["state_dict"][k], v) for k, v in checkpoint["state_dict"].items()
    )


def test_missing_resume_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt_path=.*nothing.ckpt"):
        run_train(tiny_overrides(f"ckpt_path={tmp_path / 'nothing.ckpt'}"), tmp_path)


def test_same_seed_same_result_and_seed_zero_counts(tmp_path):
    runs = [
        run_train(tiny_overrides(*SHORT, f"seed={s}"), tmp_path / f"{i}")
        for i, s in enumerate([0, 0, 1])
    ]
    weights = [
        torch.load(tmp_path / f"{i}" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for i in range(3)
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    assert runs[0]["seed"] == 0


def test_csv_and_wandb_loggers_write_into_the_run_dir(tmp_path):
    run_train(tiny_overrides(*SHORT, "logger=csv"), tmp_path / "csv")
    metrics = list((tmp_path / "csv" / "csv").rglob("metrics.csv"))
    assert metrics and "val/acc" in metrics[0].read_text()
    run_train(tiny_overrides(*SHORT, "logger=wandb"), tmp_path / "wandb")
    runs = list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
