"""python -m abslab.report: shards merge into one cell, overlaps, gaps and unfinished shards are
refused with the fix; models and norms are shown as their cards say (recorded, from conf, or a
default card), never dropped; legacy cells name their source; the paper's numbers are compared
with the paper's attacks, all attacks beside them; each attack's AttackBench optimality and the
suite's cost; the committed tables regenerate byte for byte with the README's commands."""

from __future__ import annotations

import glob
import json
import math
import pickle
import shlex

import numpy as np
import pytest

from abslab.report import ReportError, main, report
from abslab.results.attack_summary import optimality
from abslab.results.cells import build_cells, find_runs
from abslab.results.figures import curves_figure
from abslab.results.per_sample import append_rows
from conftest import REPO

NORM = {"name": "linf", "threshold": 0.3, "curve_max": 0.5, "curve_points": 11}  # pre-card run
# A norm and a model conf/ does not know, with the cards their runs recorded.
L3 = {
    "name": "l3",
    "title": "L3",
    "column": 4,
    "unit": " (units)",
    "paper_curves": "L3",
    "threshold": 0.5,
    "curve_max": 1.0,
    "curve_points": 11,
}
WAVELET = {
    "name": "wavelet_net",
    "card": {
        "label": "Wavelet Net",
        "column": 7,
        "color": "tab:green",
        "line": "-.",
        "paper": {"l3": [0.5, 0.25]},
    },
}


def fake_run(
    root,
    model,
    first,
    n,
    distances,
    attacks=("fgsm", "bim"),
    weights="own",
    norm=NORM,
    model_config=None,
    paper=None,
):
    """A finished run dir of `model` on test images [first, first + n): per attack, sample i
    has distance distances[i] (the second attack 0.01 farther; distances as a dict: attack ->
    its own distances), 3 queries and 0.25 s. paper: attack -> its recorded `paper` flag
    (None: a run recorded before the flag)."""
    run_dir = root / f"{model}_{first}"
    run_dir.mkdir(parents=True)
    if isinstance(distances, dict):
        attacks, per_attack = tuple(distances), distances
    else:
        per_attack = {a: [d + 0.01 * k for d in distances] for k, a in enumerate(attacks)}
    rows = []
    for attack in attacks:
        for i in range(first, first + n):
            d = per_attack[attack][i - first]
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
                    seconds=0.25,
                    error="",
                )
            )
    append_rows(run_dir / "per_sample.csv", rows)
    config = {"data": {"test_offset": first, "test_samples": n}, "norm": norm}
    if model_config is not None:
        config["model"] = model_config
    summary = {
        "model": model,
        "norm": norm["name"],
        "n_samples": n,
        "weights": weights,
        "budget": "smoke",
        "attacks": {a: {} for a in [*attacks, "all"]},
        "budgets": {a: {"paper": flag} for a, flag in (paper or {}).items()},
        "config": config,
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
        distance=np.array(per_attack[attacks[0]], float),
        images=np.zeros((n, 28, 28)),
    )
    return run_dir


def test_shards_merge_into_one_cell_with_the_papers_figure_beside(tmp_path):
    sweep = tmp_path / "results" / "sweeps" / "table1_linf_own_smoke"
    fake_run(sweep, "madry", 0, 2, [0.1, 0.4])
    fake_run(sweep, "madry", 2, 2, [0.5, float("inf")])
    fake_run(sweep, "cnn", 0, 4, [0.05, 0.07, 0.0, 0.09])
    md = report([sweep], tmp_path / "out" / "table1", "T", wandb_mode="disabled")
    text = md.read_text()
    # madry: distances 0.1, 0.4, 0.5, inf -> median 0.45, 3 of 4 beyond 0.3
    assert "| **all attacks** | 0.06 / 0% | 0.45 / 75% |" in text
    # old runs record no card: labels and the paper's numbers come from conf/model
    assert "| attack | CNN | Madry et al. |" in text
    assert "| paper, all attacks | 0.075 / 0% | 0.34 / 87% |" in text
    assert "+32% / -12 pts **!**" in text  # 0.45 vs 0.34, 75% vs 87%
    assert "| N / budget | 4 / smoke | 4 / smoke |" in text
    assert "legacy" not in text.split("## L∞")[1]
    csv_text = (tmp_path / "out" / "table1.csv").read_text()
    # madry, all: 4 samples, 3 broken, 1 not; 2 attacks x 3 queries, 2 x 0.25 s per sample
    assert "linf,madry,all,0.45,0.75,4,smoke,0.34,0.87,3,1,0,6.0,0.5," in csv_text
    assert "linf,madry,fgsm,0.45,0.75,4,smoke,,,3,1,0,3.0,0.25," in csv_text
    assert "\\begin{tabular}" in (tmp_path / "out" / "table1.tex").read_text()
    for name in ("table1_curves.png", "table1_gallery_linf.png"):
        assert (tmp_path / "out" / name).stat().st_size > 1000


# A grid of three distances (0, 0.5, 1) for hand-computed optimality; threshold 0.5.
COARSE = {**L3, "curve_points": 3}
INF = float("inf")


def test_optimality_is_1_for_the_best_curve_0_for_nothing_and_the_area_ratio_between():
    epsilons = [0.0, 0.5, 1.0]
    best = [1.0, 0.25, 0.0]  # area 0.25 * (1 + 0.25) + 0.25 * 0.25 = 0.375
    assert optimality(best, best, epsilons) == 1
    assert optimality([1.0, 1.0, 1.0], best, epsilons) == 0  # nothing found: area 1
    # area 0.25 * 1.5 + 0.25 * 1.0 = 0.625: 1 - (0.625 - 0.375) / (1 - 0.375) = 0.6
    assert optimality([1.0, 0.5, 0.5], best, epsilons) == pytest.approx(0.6)
    # 5% misclassified clean: an attack that finds nothing stays at 0.95
    assert optimality([0.95, 0.95, 0.95], [0.95, 0.2, 0.0], epsilons) == 0
    assert optimality([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], epsilons) is None  # none found any


def test_the_papers_numbers_are_compared_with_the_papers_attacks_all_attacks_beside(tmp_path):
    """pointwise (one of the paper's) is beaten by fmn (not), noise finds nothing: the paper's
    0.5 / 25% is compared with pointwise's row, the all-attacks row is fmn's."""
    sweep = tmp_path / "results" / "sweeps" / "new"
    distances = {
        "pointwise": [0.2, 0.4, 1.5, 2.0],  # curve at 0, 0.5, 1: 1, 0.5, 0.5
        "fmn": [0.1, 0.2, 0.3, 0.8],  # 1, 0.25, 0: the best curve
        "noise": [INF] * 4,  # 1, 1, 1
    }
    flags = {"pointwise": True, "fmn": False, "noise": False}
    fake_run(sweep, "wavelet_net", 0, 4, distances, norm=COARSE, model_config=WAVELET,
             paper=flags)  # fmt: skip
    md = report([sweep], tmp_path / "out" / "t", "T", wandb_mode="disabled").read_text()
    assert "| pointwise | 0.95 / 50% (opt 0.60) |" in md  # median (0.4 + 1.5) / 2
    assert "| fmn | 0.25 / 25% (opt 1.00) |" in md
    assert "| noise | ∞ / 100% (opt 0.00) |" in md
    assert "| **paper's attacks** | 0.95 / 50% |" in md
    assert "| **all attacks** | 0.25 / 25% |" in md
    assert "| paper, all attacks | 0.5 / 25% |" in md
    assert "| difference, paper's attacks | +90% / +25 pts **!** |" in md
    assert "| difference, all attacks | -50% / +0 pts |" in md
    assert "| cost: s / image | 0.75 |" in md  # three attacks of 0.25 s each
    assert "‡" not in md
    csv_text = (tmp_path / "out" / "t.csv").read_text()
    assert "l3,wavelet_net,pointwise,0.95,0.5,4,smoke,,,4,0,0,3.0,0.25,,True,0.6\n" in csv_text
    assert "l3,wavelet_net,noise,,1.0,4,smoke,,,0,4,0,3.0,0.25,,False,0.0\n" in csv_text
    # the paper's numbers beside both minimum rows; the paper's attacks: 3 queries, 0.25 s
    assert "l3,wavelet_net,paper_attacks,0.95,0.5,4,smoke,0.5,0.25,4,0,0,3.0,0.25,,,0.6\n" in (
        csv_text
    )
    assert "l3,wavelet_net,all,0.25,0.25,4,smoke,0.5,0.25,4,0,0,9.0,0.75,,,1.0\n" in csv_text
    figure = curves_figure(build_cells(find_runs([sweep])[0]), None)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    papers = lines["Wavelet Net, paper's attacks"]
    assert papers.get_linestyle() == ":" and papers.get_color() == "tab:green"
    assert list(papers.get_ydata()) == [100, 50, 50]
    assert list(lines["Wavelet Net (N=4)"].get_ydata()) == [100, 25, 0]


def test_runs_recorded_before_the_paper_flag_count_every_attack_as_the_papers(tmp_path):
    sweep = tmp_path / "results" / "sweeps" / "old"
    fake_run(sweep, "madry", 0, 4, [0.1, 0.4, 0.5, INF])  # fgsm, bim 0.01 farther: no flags
    # flags in the run's config only (attack.<name>.paper), not among its budgets
    run = fake_run(sweep, "cnn", 0, 4, [0.05, 0.07, 0.0, 0.09])
    summary = json.loads((run / "summary.json").read_text())
    summary["config"]["attack"] = {"fgsm": {"paper": False}, "bim": {"paper": True}}
    (run / "summary.json").write_text(json.dumps(summary))
    md = report([sweep], tmp_path / "out" / "t", "T", wandb_mode="disabled").read_text()
    # cnn: the paper's attacks = bim = [0.06, 0.08, 0.01, 0.1]; madry: both attacks
    assert "| **paper's attacks** | 0.07 / 0% | 0.45 / 75% ‡ |" in md
    assert "| **all attacks** | 0.06 / 0% | 0.45 / 75% |" in md
    assert "| difference, paper's attacks | -7% / +0 pts | +32% / -12 pts **!** |" in md
    assert "- ‡: the cell's runs were recorded before attacks carried the `paper` flag" in md
    csv_text = (tmp_path / "out" / "t.csv").read_text()
    assert "linf,madry,fgsm,0.45,0.75,4,smoke,,,3,1,0,3.0,0.25,,True," in csv_text
    assert "linf,cnn,fgsm,0.06" in csv_text and ",4,0,0,3.0,0.25,,False,1.0\n" in csv_text


def new_model_and_norm(root):
    """A sweep with Madry under L-inf (an old run), and under a norm conf does not know (its
    card recorded): a model conf does not know (card recorded) and one with no card at all."""
    sweep = root / "results" / "sweeps" / "new"
    fake_run(sweep, "madry", 0, 4, [0.1, 0.4, 0.5, float("inf")])
    fake_run(sweep / "l3", "wavelet_net", 0, 4, [0.2, 0.6, float("inf"), 0.0], norm=L3,
             model_config=WAVELET)  # fmt: skip
    fake_run(sweep / "l3", "mystery", 0, 2, [0.3, 0.9], norm=L3)
    return sweep


def test_a_new_model_and_norm_are_shown_in_every_table_and_the_curves(tmp_path):
    sweep = new_model_and_norm(tmp_path)
    md = report([sweep], tmp_path / "out" / "t", "T", wandb_mode="disabled").read_text()
    l3 = md.split("## L3")[1]
    assert md.index("## L∞") < md.index("## L3")  # norm columns: linf 2, l3 4
    assert "| attack | Wavelet Net | mystery |" in l3  # card column 7, then no column
    # wavelet_net, all = per-sample minimum = 0.2, 0.6, inf, 0: median 0.4, 2 of 4 beyond 0.5
    assert "| **all attacks** | 0.4 / 50% | 0.6 / 50% |" in l3  # mystery: 0.3, 0.9
    assert "| paper, all attacks | 0.5 / 25% |  |" in l3
    assert "| difference, paper's attacks | -20% / +25 pts **!** |  |" in l3
    assert "| difference, all attacks | -20% / +25 pts |  |" in l3  # marked on one row only
    assert "Cells: median adversarial distance / accuracy at the threshold (L∞ 0.3, L3 0.5)" in md
    csv_text = (tmp_path / "out" / "t.csv").read_text()
    assert "l3,wavelet_net,all,0.4,0.5,4,smoke,0.5,0.25,3,1,0,6.0,0.5," in csv_text
    assert "l3,mystery,all,0.6,0.5,2,smoke,,,2,0,0,6.0,0.5," in csv_text
    tex = (tmp_path / "out" / "t.tex").read_text()
    assert " & Madry et al. & Wavelet Net & mystery \\\\" in tex
    assert "\\multicolumn{4}{l}{l3} \\\\" in tex
    assert "all attacks &  & 0.4 / 50\\% & 0.6 / 50\\% \\\\" in tex
    cells = build_cells(find_runs([sweep])[0])
    figure = curves_figure(cells, None)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles == ["L∞, all attacks (circles: the paper's numbers)",
                      "L3, all attacks (circles: the paper's numbers)"]  # fmt: skip
    l3_axis = figure.axes[1]
    assert l3_axis.get_xlabel() == "L3 distance (units)"
    legend = [t.get_text() for t in l3_axis.get_legend().get_texts()]
    assert legend == ["Wavelet Net (N=4)", "mystery (N=2)"]
    colors = {line.get_label(): line.get_color() for line in l3_axis.get_lines()}
    assert colors["Wavelet Net (N=4)"] == "tab:green"
    assert colors["mystery (N=2)"] not in ("tab:green", "tab:orange", "black")


def test_the_tables_do_not_change_between_runs_nor_with_the_papers_curves(tmp_path):
    sweep = new_model_and_norm(tmp_path)
    curves = tmp_path / "figures"
    curves.mkdir()
    for stem, label in (("L3", "Wavelet Net"), ("Linf", "Madry et al.")):
        data = {label: {"x": [0.0, 0.5, 1.0], "y": [100.0, 30.0, 0.0]}}
        (curves / f"{stem}_accuracy_distortion_curves.pickle").write_bytes(pickle.dumps(data))
    outputs = []
    out = tmp_path / "out" / "t"
    for paper in (None, curves, None):
        report([sweep], out, "T", paper_curves=paper, wandb_mode="disabled")
        outputs.append([out.with_suffix(s).read_text() for s in (".md", ".csv", ".tex")])
    assert outputs[0] == outputs[1] == outputs[2]
    assert str(curves) not in outputs[0][0]


def test_a_cell_from_outside_the_sweeps_is_marked_legacy_with_its_source(tmp_path):
    old = fake_run(tmp_path / "attack_runs", "madry", 0, 2, [0.1, 0.4])
    main([str(old), "--out", str(tmp_path / "out" / "one"), "--wandb", "disabled"])
    md, csv_text, tex = ((tmp_path / "out" / f"one.{s}").read_text() for s in ("md", "csv", "tex"))
    assert f"| N / budget | 2 / smoke, legacy: {old} |" in md
    assert f",{old}," in csv_text.splitlines()[1]
    assert "legacy: " + str(old).replace("_", "\\_") in tex


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


def test_shards_of_one_model_on_other_weights_are_refused_naming_both(tmp_path):
    """Shards rerun on a new checkpoint beside the old ones: the model's runs record two
    weights hashes, across norms too, and the report names each hash with its run dirs."""

    def record_hash(run_dir, weights_hash):
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["segments"] = [{"weights_hash": weights_hash, "n_samples": 2}]
        (run_dir / "summary.json").write_text(json.dumps(summary))

    same = tmp_path / "same"
    record_hash(fake_run(same, "abs", 0, 2, [0.1] * 2), "aaaa")
    record_hash(fake_run(same, "abs", 2, 2, [0.2] * 2), "aaaa")
    (cell,) = build_cells(find_runs([same])[0])
    assert len(cell.rows) == 8
    new = tmp_path / "new"
    record_hash(fake_run(new, "abs", 0, 2, [0.1] * 2, norm=L3), "bbbb")
    with pytest.raises(ReportError, match=r"abs: .*different weights.*aaaa: .*bbbb: .*new"):
        build_cells(find_runs([same, new])[0])


def readme_report_commands() -> list[list[str]]:
    """The README's commands that write the committed tables (results/table1*), as argv."""
    lines = (REPO / "README.md").read_text().splitlines()
    commands = [
        shlex.split(line, comments=True)
        for line in lines
        if line.startswith("python -m abslab.report results/") and "--out results/table1" in line
    ]
    assert len(commands) == 2, commands
    return [c[3:] for c in commands]


def test_the_committed_tables_regenerate_byte_for_byte_with_the_readmes_commands(
    tmp_path, monkeypatch
):
    """The README's commands, run where results/ holds only the committed runs and notes, write
    the committed results/table1*.md, .csv and .tex exactly."""
    (tmp_path / "results").mkdir()
    for name in ("sweeps", "table1_notes.md", "table1_published_notes.md"):
        (tmp_path / "results" / name).symlink_to(REPO / "results" / name)
    monkeypatch.chdir(tmp_path)
    for argv in readme_report_commands():
        words = [w for pattern in argv for w in (sorted(glob.glob(pattern)) or [pattern])]
        main([*words, "--wandb", "disabled"])
        out = words[words.index("--out") + 1]
        for suffix in (".md", ".csv", ".tex"):
            written = (tmp_path / (out + suffix)).read_bytes()
            assert written == (REPO / (out + suffix)).read_bytes(), out + suffix


def test_an_attack_added_in_a_run_dir_of_its_own_is_a_layer_of_the_cell(tmp_path):
    """A finished cell (fgsm, bim on images [0, 4), two shards) and a later run of another
    attack on the same images: one cell, every attack's row, the minimum over both."""
    sweep = tmp_path / "results" / "sweeps" / "table1_linf_own_smoke"
    fake_run(sweep, "madry", 0, 2, [0.1, 0.4])
    fake_run(sweep, "madry", 2, 2, [0.5, float("inf")])
    later = tmp_path / "results" / "sweeps" / "added"
    fake_run(later, "madry", 0, 4, {"apgd_linf": [0.2, 0.2, 0.2, 0.2]})
    cells = build_cells(find_runs([sweep, later])[0])
    (cell,) = cells
    assert cell.attacks == ["fgsm", "bim", "apgd_linf"]
    # per sample: min(0.1, 0.2), min(0.4, 0.2), min(0.5, 0.2), min(inf, 0.2) -> all 0.2
    assert cell.stats["attacks"]["all"]["median_distance"] == pytest.approx(0.2)
    assert cell.stats["attacks"]["all"]["accuracy_at_threshold"] == 0.0
    assert sorted(cell.adversarials["index"].tolist()) == [0, 1, 2, 3]
    fake_run(tmp_path / "other", "madry", 0, 2, {"apgd_linf": [0.2, 0.2]})
    with pytest.raises(ReportError, match="must cover the same test images"):
        build_cells(find_runs([sweep, tmp_path / "other"])[0])


def test_without_out_the_report_prints_the_table_and_writes_nothing(tmp_path, capsys):
    sweep = tmp_path / "results" / "sweeps" / "table1_linf_own_smoke"
    fake_run(sweep, "cnn", 0, 4, [0.05, 0.07, 0.0, 0.09])
    before = sorted(p for p in tmp_path.rglob("*"))
    main([str(sweep), "--wandb", "disabled"])
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert "| **all attacks** | 0.06 / 0% |" in capsys.readouterr().out
