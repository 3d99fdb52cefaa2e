"""python -m abslab.report: shards merge into one cell, overlaps, gaps and unfinished shards are
refused with the fix, and the table, its CSV/TeX and figures are written from the run dirs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from abslab.report import ReportError, report
from abslab.results.per_sample import append_rows

NORM = {"name": "linf", "threshold": 0.3, "curve_max": 0.5, "curve_points": 11}


def fake_run(root, model, first, n, distances, attacks=("fgsm", "bim"), weights="own"):
    """A finished run dir of `model` on test images [first, first + n): per attack, sample i
    has distance distances[i] (the second attack 0.01 farther)."""
    run_dir = root / f"{model}_{first}"
    run_dir.mkdir(parents=True)
    rows = []
    for k, attack in enumerate(attacks):
        for i in range(first, first + n):
            d = distances[i - first] + 0.01 * k
            rows.append(
                dict(
                    index=i,
                    label=i % 10,
                    clean_pred=i % 10,
                    attack=attack,
                    success=math.isfinite(d),
                    adv_pred=(i + 1) % 10,
                    distance=d,
                    queries=3,
                    seconds=0.1,
                    error="",
                )
            )
    append_rows(run_dir / "per_sample.csv", rows)
    summary = {
        "model": model,
        "norm": "linf",
        "n_samples": n,
        "weights": weights,
        "budget": "smoke",
        "attacks": {a: {} for a in [*attacks, "all"]},
        "budgets": {},
        "config": {"data": {"test_offset": first, "test_samples": n}, "norm": NORM},
        "command": "python evaluate.py",
        "commit": "abc",
        "hardware": "cpu",
        "wall_time_s": 1.0,
        "ckpt": "checkpoints/x.ckpt",
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    np.savez_compressed(
        run_dir / "adversarials.npz",
        index=np.arange(first, first + n),
        label=np.arange(first, first + n) % 10,
        adv_pred=(np.arange(first, first + n) + 1) % 10,
        attack=np.array(["fgsm"] * n),
        distance=np.array(distances, float),
        images=np.zeros((n, 28, 28)),
    )
    return run_dir


def test_shards_merge_into_one_cell_with_the_papers_figure_beside(tmp_path):
    sweep = tmp_path / "table1_linf_own_smoke"
    fake_run(sweep, "madry", 0, 2, [0.1, 0.4])
    fake_run(sweep, "madry", 2, 2, [0.5, float("inf")])
    fake_run(sweep, "cnn", 0, 4, [0.05, 0.07, 0.0, 0.09])
    md = report([sweep], tmp_path / "out" / "table1", "T", wandb_mode="disabled")
    text = md.read_text()
    # madry: distances 0.1, 0.4, 0.5, inf -> median 0.45, 3 of 4 beyond 0.3
    assert "| **all attacks** | 0.06 / 0% | 0.45 / 75% |" in text
    assert "| paper, all attacks | 0.075 / 0% | 0.34 / 87% |" in text
    assert "+32% / -12 pts **!**" in text  # 0.45 vs 0.34, 75% vs 87%
    assert "| N / budget | 4 / smoke | 4 / smoke |" in text
    csv_text = (tmp_path / "out" / "table1.csv").read_text()
    assert "linf,madry,all,0.45,0.75,4,smoke,0.34,0.87" in csv_text
    assert "\\begin{tabular}" in (tmp_path / "out" / "table1.tex").read_text()
    for name in ("table1_curves.png", "table1_gallery_linf.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000


def test_overlapping_missing_and_unfinished_shards_are_refused(tmp_path):
    overlap = tmp_path / "overlap"
    fake_run(overlap, "madry", 0, 3, [0.1] * 3)
    fake_run(overlap, "madry", 2, 2, [0.1] * 2)
    with pytest.raises(ReportError, match=r"shards overlap.*\[0, 3\).*\[2, 4\)"):
        report([overlap], tmp_path / "o", "T", wandb_mode="disabled")
    gap = tmp_path / "gap"
    fake_run(gap, "madry", 0, 2, [0.1] * 2)
    fake_run(gap, "madry", 5, 2, [0.1] * 2)
    with pytest.raises(
        ReportError, match=r"\[2, 5\) are missing.*test_offset=2 data.test_samples=3"
    ):
        report([gap], tmp_path / "o", "T", wandb_mode="disabled")
    short = tmp_path / "short"
    run = fake_run(short, "madry", 0, 3, [0.1] * 3)
    summary = json.loads((run / "summary.json").read_text())
    summary["config"]["data"]["test_samples"] = 5
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ReportError, match="lacks 4 .* rerun its sweep"):
        report([short], tmp_path / "o", "T", wandb_mode="disabled")
    budgets = tmp_path / "budgets"
    fake_run(budgets, "madry", 0, 2, [0.1] * 2)
    run = fake_run(budgets, "madry", 2, 2, [0.1] * 2)
    summary = json.loads((run / "summary.json").read_text())
    summary["budgets"] = {"fgsm": {"bisect_steps": 3}}
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ReportError, match="other attack budgets"):
        report([budgets], tmp_path / "o", "T", wandb_mode="disabled")
    mixed = tmp_path / "mixed"
    fake_run(mixed, "madry", 0, 2, [0.1] * 2)
    fake_run(mixed / "b", "cnn", 0, 2, [0.1] * 2, weights="published")
    with pytest.raises(ReportError, match="different weights"):
        report([mixed], tmp_path / "o", "T", wandb_mode="disabled")
