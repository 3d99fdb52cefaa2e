"""The entry scripts as a user runs them, including `-m` multiruns (subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import MNIST_ROOT, REFERENCE_MODELS, REPO

COMMON = [
    f"data.root={MNIST_ROOT}",
    "data=mnist_tiny",
    "data.download=false",
    "trainer.enable_progress_bar=false",
]


def _run(script: str, args: list[str], tmp_path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, script, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "WANDB_SILENT": "true"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_job_multirun_gives_each_job_its_own_dir_and_wandb_run(tmp_path):
    sweep_dir = tmp_path / "sweep"
    _run(
        "train.py",
        ["-m", "model=cnn,binary_cnn", "debug=fast", f"hydra.sweep.dir={sweep_dir}", *COMMON],
        tmp_path,
    )
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [p.name.split(",model=")[0][:2] for p in jobs] == ["0_", "1_"]
    assert jobs[0].name.endswith("model=cnn,trainer.enable_progress_bar=False")
    assert jobs[1].name.endswith("model=binary_cnn,trainer.enable_progress_bar=False")
    for job, model in zip(jobs, ["cnn", "binary_cnn"]):
        assert json.loads((job / "summary.json").read_text())["model"] == model
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1


@pytest.mark.slow
def test_joblib_launcher_runs_a_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    _run(
        "evaluate.py",
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "model=nearest_neighbor",
            "data.test_offset=0,100",
            "logger=none",
            f"hydra.sweep.dir={sweep_dir}",
            *COMMON,
        ],
        tmp_path,
    )
    summaries = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))]
    assert [s["first_index"] for s in summaries] == [0, 100]


@pytest.mark.slow
def test_wrong_model_name_lists_the_choices(tmp_path):
    result = subprocess.run(
        [sys.executable, "train.py", "model=resnet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "resnet" in result.stderr and "madry" in result.stderr


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    _run(
        "train.py",
        [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "debug=fast",
            "logger=none",
            f"hydra.run.dir={tmp_path}",
            f"model.pretrained={REFERENCE_MODELS / 'cnn'}",
            *COMMON,
        ],
        tmp_path,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    # the published CNN after one small step: a broken DDP test loop would not score this
    assert summary["model"] == "cnn" and summary["test_acc"] > 0.9
    assert (tmp_path / "train_ddp_process_1.log").exists()  # a second process really ran


@pytest.mark.slow
def test_slurm_launcher_composes(tmp_path):
    result = _run("train.py", ["hydra/launcher=submitit_slurm", "--cfg", "hydra"], tmp_path)
    assert "submitit_folder" in result.stdout and "SlurmLauncher" in result.stdout
