"""The paper's pipeline end to end, as a user types it (subprocesses): train all (tiny models,
two steps each), sweep the three Table 1 blocks and the distal figure over the six models at
budget=smoke, rerun a finished block (nothing recomputed), report. Numbers mean nothing here;
that every stage runs and hands the next what it needs does."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MNIST_ROOT, REPO

DATA = [
    f"data.root={MNIST_ROOT}",
    "data=mnist_tiny",
    "data.download=false",
    "trainer.enable_progress_bar=false",
    "logger=none",
]
TINY_ABS = ["++model.n_iter=2", "++model.bank_size=100"]  # ++: also in a sweep over models
# Brendel-Bethge left out of the blocks: foolbox's numba classes compile for about a minute in
# every process (they cannot be cached); tests/test_minimal_attacks.py runs them.
NO_BB = {
    "table1_l2": ["~attack.bb_l2"],
    "table1_linf": ["~attack.bb_linf"],
    "table1_l0": ["~attack.bb_l0"],
}

# The scripts by their path, run from a tmp_path: what a run writes relative to its working
# directory (Hydra's multirun folder, the report's W&B run) stays out of the checkout.
TRAIN, EVALUATE = str(REPO / "train.py"), str(REPO / "evaluate.py")


def _run(args: list[str], cwd: Path) -> str:
    start = time.time()
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    print(f"{time.time() - start:6.1f} s  {' '.join(args[:4])}")
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_train_all_sweep_report(tmp_path):
    registry = tmp_path / "models"
    sweeps = tmp_path / "results" / "sweeps"  # where the report counts cells as not legacy
    train = [f"registry={registry}", "trainer.max_steps=2", "test_after_fit=false", *DATA]
    _run([TRAIN, "-m", "experiment=cnn,binary_cnn,madry,transfer_cnn", *train], tmp_path)
    _run([TRAIN, "experiment=abs", *TINY_ABS, *train], tmp_path)
    for name in ("cnn", "binary_cnn", "madry", "transfer_cnn", "abs"):
        assert (registry / name / "weights.ckpt").is_file(), name
    scalars = json.loads((registry / "abs" / "weights.scalars.json").read_text())
    assert len(scalars["class_scalars"]) == 10

    sweep = [
        "budget=smoke",
        "data.test_samples=null",  # the budget's counts, not mnist_tiny's 256
        f"registry={registry}",
        f"hydra.sweep.dir={sweeps}/${{sweep_name}}_${{weights}}_${{budget.name}}",
        *DATA,
    ]
    baselines = "model=cnn,binary_cnn,nearest_neighbor,madry"
    for paper in ("table1_l2", "table1_linf", "table1_l0", "figure_distal"):
        block = [EVALUATE, "-m", f"+paper={paper}", *NO_BB.get(paper, [])]
        _run([*block, baselines, *sweep], tmp_path)
        _run([*block, "model=abs,binary_abs", *TINY_ABS, *sweep], tmp_path)

    linf = sweeps / "table1_linf_own_smoke"
    before = (linf / "cnn_0" / "per_sample.csv").read_text()
    rerun = [EVALUATE, "-m", "+paper=table1_linf", *NO_BB["table1_linf"], "model=cnn", *sweep]
    log = _run(rerun, tmp_path)
    assert "3 of 3 samples are finished" in log
    assert (linf / "cnn_0" / "per_sample.csv").read_text() == before

    binary_abs = json.loads((linf / "binary_abs_0" / "summary.json").read_text())
    assert binary_abs["config"]["model"]["class_scalars"] == scalars["class_scalars"]
    assert binary_abs["ckpt"] == str(registry / "abs" / "weights.ckpt")
    transfer = json.loads((linf / "cnn_0" / "summary.json").read_text())["budgets"]
    assert transfer["transfer_linf"]["substitute_weights"].startswith(str(registry))

    out = tmp_path / "results" / "table1"
    _run(
        [
            "-m",
            "abslab.report",
            *sorted(str(p) for p in sweeps.iterdir()),
            "--out",
            str(out),
            "--wandb",
            "offline",
        ],
        tmp_path,
    )
    table = out.with_suffix(".md").read_text()
    for block in ("## L2", "## L∞", "## L0", "## Distal adversarials"):
        assert block in table
    header = "| attack | CNN | Binary CNN | Nearest Neighbor | Madry et al. | Binary ABS | ABS |"
    assert table.count(header) == 3
    assert (
        "| N / budget | 3 / smoke | 3 / smoke | 3 / smoke | 3 / smoke | 2 / smoke | 2 / smoke |"
        in table
    )
    for attack in ("latent_descent", "bim_l2_ge", "boundary", "mim", "transfer_linf", "pointwise"):
        assert f"| {attack} |" in table
    for suffix in (
        "_curves.png",
        "_gallery_l2.png",
        "_gallery_linf.png",
        "_gallery_l0.png",
        "_distal.png",
        ".csv",
        ".tex",
    ):
        assert out.with_name(out.name + suffix).stat().st_size > 0, suffix
