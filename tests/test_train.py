"""train.py's task: checkpoints, resuming, seeding, loggers."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

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


def test_last_ckpt_follows_every_epoch_when_the_best_does_not_move(tmp_path):
    """Monitoring `epoch` in min mode keeps epoch 0 the best for good. A crash in epoch 2 must
    still find last.ckpt at the end of epoch 1 (Lightning's own save_last left it at epoch 0)."""
    best_stays = ["callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min"]
    crash = ["+callbacks.crash._target_=conftest.CrashAtStep", "+callbacks.crash.step=7"]
    overrides = tiny_overrides(*SHORT, "trainer.max_epochs=3", *best_stays, *crash)
    with pytest.raises(RuntimeError, match="simulated crash at step 7"):
        run_train(overrides, tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch_*")) == ["epoch_000.ckpt"]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 6


@pytest.mark.parametrize("tested", ["best", "last"])
def test_tested_checkpoint_picks_what_is_tested_and_exported(tmp_path, tested):
    """Epoch 0 stays the best (monitoring `epoch` in min mode); after 3 epochs, `best` tests and
    exports epoch 0's weights, `last` the last epoch's."""
    best_stays = ["callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.mode=min"]
    overrides = [*SHORT, "trainer.max_epochs=3", *best_stays, f"tested_checkpoint={tested}"]
    summary = run_train(tiny_overrides(*overrides), tmp_path)
    expected = summary["best_checkpoint"] if tested == "best" else summary["last_checkpoint"]
    assert summary["tested_checkpoint"] == expected
    assert summary["best_checkpoint"].endswith("epoch_000.ckpt")

    def weights(path):
        return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]

    exported, chosen = weights(tmp_path / "weights.ckpt"), weights(expected)
    other = weights(summary["last_checkpoint" if tested == "best" else "best_checkpoint"])
    assert all(torch.equal(exported[k], chosen[k]) for k in chosen)
    assert not all(torch.equal(exported[k], other[k]) for k in other)


def test_an_unknown_tested_checkpoint_is_an_error_before_training(tmp_path):
    with pytest.raises(
        ValueError, match=r"tested_checkpoint=first: choose one of \('best', 'last'\)"
    ):
        run_train(tiny_overrides(*SHORT, "tested_checkpoint=first"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_a_run_without_checkpoints_of_its_own_still_ends_with_last_ckpt(tmp_path):
    """fast_dev_run saves no checkpoint; train.py writes last.ckpt at the end of the fit."""
    summary = run_train(tiny_overrides("debug=fast", "test_after_fit=false"), tmp_path)
    assert summary["best_checkpoint"] is None
    assert summary["last_checkpoint"] == str(tmp_path / "checkpoints" / "last.ckpt")
    last = torch.load(summary["last_checkpoint"], map_location="cpu", weights_only=True)
    assert last["global_step"] == 1


def _val_accuracies(run_dir):
    """Every val/acc the CSV logger recorded in run_dir, over all its versions."""
    values = []
    for metrics in sorted((run_dir / "csv").rglob("metrics.csv")):
        rows = csv.DictReader(metrics.open())
        values += [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    return values


def test_a_crashed_run_resumes_where_it_stopped(tmp_path):
    run_dir = tmp_path / "run"
    two_epochs = [*SHORT, "trainer.max_epochs=2", "logger=csv"]
    with pytest.raises(RuntimeError, match="simulated crash at step 4"):
        run_train(
            tiny_overrides(
                *two_epochs,
                "+callbacks.crash._target_=conftest.CrashAtStep",
                "+callbacks.crash.step=4",
            ),
            run_dir,
        )
    saved = run_dir / "checkpoints" / "on_exception.ckpt"
    checkpoint = torch.load(saved, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert checkpoint["best_val_acc"] == _val_accuracies(run_dir)[0]  # epoch 0 was validated

    # Resume in the same run directory, so the best-checkpoint bookkeeping carries on.
    resumed = run_train(tiny_overrides(*two_epochs, f"ckpt_path={saved}"), run_dir)
    assert resumed["steps"] == 6 and resumed["epochs"] == 2
    val_accuracies = _val_accuracies(run_dir)
    assert len(val_accuracies) == 2
    assert resumed["val_accuracy_best"] == max(val_accuracies)
    best_epoch = val_accuracies.index(max(val_accuracies))
    assert resumed["best_checkpoint"].endswith(f"epoch_{best_epoch:03d}.ckpt")
    after = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
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
    assert _val_accuracies(tmp_path / "csv")
    summary = run_train(
        tiny_overrides(*SHORT, "logger=wandb", "model=binary_cnn"), tmp_path / "wandb"
    )
    runs = list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    inspected = subprocess.run(
        [
            str(Path(sys.executable).parent / "wandb"),
            "leet",
            "inspect",
            "--summary",
            "--json",
            str(runs[0]),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    record = json.loads(inspected.stdout)
    assert record["config"]["model"]["name"] == "binary_cnn"  # the resolved Hydra config
    assert record["config"]["output_dir"] == str(tmp_path / "wandb")
    assert record["summary"]["test_acc"] == pytest.approx(summary["test_acc"])
    assert record["summary"]["best_checkpoint"] == summary["best_checkpoint"]
