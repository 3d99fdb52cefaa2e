"""python -m bench.attacks --runs: per-sample costs read from run dirs, clean misclassifications
left out, shards of one cell merged into one section, budget changes shown as dotted keys, and
results/attacks_speed.md's sections replaced by heading under its regeneration paragraph."""

from __future__ import annotations

import json
import math

import pytest

from abslab.results.per_sample import append_rows
from bench.attacks import HEADER, sweep_costs, write_section

NORM = {"name": "l2", "threshold": 1.5, "curve_max": 3.0, "curve_points": 7}
# fgm_ge ran with 7 antithetic samples: a nested key the budget changed (its conf default is
# the coordinate-wise estimator); fgm at its defaults.
BUDGETS = {
    "fgm": {"source": "abslab"},
    "fgm_ge": {"source": "abslab", "estimator": {"kind": "antithetic", "samples": 7}},
}


def fake_run(root, first, rows, segments=None):
    """A finished run dir of the published CNN on test images [first, first + len(rows)):
    rows[k] = (clean_pred, {attack: (seconds, queries, gradients, success, error)}) for test
    image first + k, whose label is first + k (mod 10); segments: its segments.jsonl records
    (None: an older run dir without the file)."""
    run_dir = root / f"cnn_{first}"
    run_dir.mkdir(parents=True)
    records = []
    for attack in BUDGETS:
        for k, (clean_pred, costs) in enumerate(rows):
            seconds, queries, gradients, success, error = costs[attack]
            index = first + k
            records.append(
                dict(
                    index=index,
                    label=index % 10,
                    clean_pred=clean_pred,
                    attack=attack,
                    success=success,
                    adv_pred=(index + 1) % 10,
                    distance=1.0 if success else math.inf,
                    queries=queries,
                    gradients=gradients,
                    seconds=seconds,
                    error=error,
                    note="",
                )
            )
    append_rows(run_dir / "per_sample.csv", records)
    summary = {
        "model": "cnn",
        "norm": "l2",
        "n_samples": len(rows),
        "weights": "published",
        "pretrained": "reference_models/cnn/vanilla_cnn.net",
        "budget": "cpu",
        "attacks": {a: {} for a in [*BUDGETS, "all"]},
        "budgets": BUDGETS,
        "config": {"data": {"test_offset": first, "test_samples": len(rows)}, "norm": NORM},
        "command": f"python evaluate.py data.test_offset={first}",
        "commit": f"commit{first}",
        "hardware": "test cpu",
        "wall_time_s": 2.0,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if segments is not None:
        lines = "".join(json.dumps(s) + "\n" for s in segments)
        (run_dir / "segments.jsonl").write_text(lines)
    return run_dir


def two_shards(root):
    """Shard [0, 3), image 1 misclassified (its costs are huge, so counting it would show),
    image 2's fgm_ge failed with an error; shard [3, 4)."""
    misclassified = {a: (100.0, 1000, 1000, True, "") for a in BUDGETS}
    first = fake_run(
        root,
        0,
        [
            (0, {"fgm": (0.5, 10, 2, True, ""), "fgm_ge": (2.0, 100, 0, True, "")}),
            (9, misclassified),
            (2, {"fgm": (1.5, 30, 4, False, ""), "fgm_ge": (4.0, 300, 0, False, "Boom: x")}),
        ],
        segments=[
            {
                "command": "python evaluate.py -m +paper=table1_l2",
                "commit": "aaa",
                "hardware": "box A",
                "wall_time_s": 5.0,
                "status": "finished",
            }
        ],
    )
    second = fake_run(
        root, 3, [(3, {"fgm": (1.0, 20, 3, True, ""), "fgm_ge": (3.0, 200, 0, True, "")})]
    )
    return first, second


def test_costs_per_attacked_sample_over_merged_shards(tmp_path):
    first, second = two_shards(tmp_path)
    [section] = sweep_costs([first, second])
    assert (section.model, section.weights, section.budget, section.norm) == (
        "cnn",
        "published",
        "cpu",
        "l2",
    )
    assert section.images == 4
    fgm, fgm_ge = section.costs
    assert (fgm.attack, fgm_ge.attack) == ("fgm", "fgm_ge")
    # fgm on images 0, 2, 3: seconds 0.5 + 1.5 + 1.0, queries 10 + 30 + 20, gradients 2 + 4 + 3
    assert fgm.attacked == 3
    assert fgm.per_sample() == pytest.approx({"seconds": 1.0, "forward": 20.0, "backward": 3.0})
    assert (fgm.broken, fgm.errors) == (2, 0)
    assert fgm_ge.per_sample() == pytest.approx({"seconds": 3.0, "forward": 200.0, "backward": 0})
    assert (fgm_ge.attacked, fgm_ge.broken, fgm_ge.errors) == (3, 2, 1)
    assert fgm.settings == []
    assert "estimator.samples=7" in fgm_ge.settings
    assert fgm_ge.code == "abslab"


def test_section_names_runs_and_rows(tmp_path):
    two_shards(tmp_path)
    text = sweep_costs([tmp_path])[0].markdown()  # a sweep dir finds both shards
    assert text.count("## cnn (published weights), l2, budget=cpu") == 1
    assert "N = 4 test images (3 correctly classified and attacked)" in text
    assert "`python evaluate.py -m +paper=table1_l2` at commit aaa, box A" in text
    # the shard without segments.jsonl: its summary's command
    assert "`python evaluate.py data.test_offset=3` at commit commit3, test cpu" in text
    assert "| l2 | fgm | abslab | none | 3 | 1.000 | 20.0 | 3.0 | 50.00 | 2/3 | 0 |" in text
    assert "| fgm_ge | abslab |" in text and "estimator.samples=7" in text


def test_an_unfinished_run_is_named_and_left_out(tmp_path, capsys):
    _, second = two_shards(tmp_path)
    (second / "summary.json").unlink()
    (section,) = sweep_costs([tmp_path])
    assert f"  {second}" in capsys.readouterr().out
    assert "N = 3 test images" in section.markdown()


def test_write_section_replaces_by_heading_under_header(tmp_path):
    out = tmp_path / "speed.md"
    out.write_text("# old title\n\nold text\n\n## older bench\n\nkept\n\n## cnn, x\n\nold\n")
    write_section(out, "## cnn, x", "## cnn, x\n\nnew\n")
    write_section(out, "## abs, y", "## abs, y\n\nadded\n")
    assert out.read_text() == HEADER + (
        "## older bench\n\nkept\n\n## cnn, x\n\nnew\n\n## abs, y\n\nadded\n"
    )
