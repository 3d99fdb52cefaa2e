"""experiment=abs_sweep (issue 19): the grid and its fixed run dirs, resuming and skipping jobs
in their run dir, the ABS diagnostics in summary.json, and the table of runs in results/abs.md."""

from __future__ import annotations

import json
import math

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from abslab.results.abs_runs import BEGIN, END, main, markdown_rows
from abslab.results.cells import _flat
from conftest import CONF, compose_config, run_train, tiny_overrides

SHORT = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
]


def _sweep_jobs(experiment: str) -> dict[str, list[str]]:
    """The multirun's jobs: each job's run subdir -> its overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = [f"experiment={experiment}", "registry=reg"]
        hydra_cfg = compose("train", base, return_hydra_config=True).hydra
        assert hydra_cfg.sweep.dir == "reg/abs_sweep"
        params = [f"{key}={value}" for key, value in hydra_cfg.sweeper.params.items()]
        [jobs] = BasicSweeper.split_arguments(
            OverridesParser.create().parse_overrides(params), None
        )
        dirs = {}
        for job in jobs:
            cfg = compose("train", [*base, *job], return_hydra_config=True)
            assert cfg.hydra.run.dir == f"{cfg.hydra.sweep.dir}/{cfg.hydra.sweep.subdir}"
            dirs[cfg.hydra.sweep.subdir] = job
    return dirs


def _recipe(tmp_path) -> dict[str, object]:
    """experiment=abs's config, flat."""
    return _flat(OmegaConf.to_container(compose_config("train", ["experiment=abs"], tmp_path)))


def _changed_from_recipe(job: list[str], experiment: str, tmp_path) -> dict[str, object]:
    """The keys where a job's config differs from experiment=abs's recipe, with its values."""
    recipe = _recipe(tmp_path)
    config = compose_config("train", [f"experiment={experiment}", *job], tmp_path)
    return {k: v for k, v in _flat(OmegaConf.to_container(config)).items() if recipe[k] != v}


def test_the_sweep_is_four_jobs_of_the_abs_recipe_each_in_a_fixed_dir(tmp_path):
    jobs = _sweep_jobs("abs_sweep")
    assert set(jobs) == {
        "beta1.0_warm0_light",
        "beta1.0_warm0_augmentor",
        "beta0.5_warm0_light",
        "beta0.5_warm0_augmentor",
    }
    # a job is experiment=abs's recipe with its keys, resuming and the diagnostics on, at the
    # grid's 30 epochs (the recipe's 100 cost 3x the time per job)
    recipe = _recipe(tmp_path)
    assert recipe["model.augmentation"] == "light" and recipe["model.kl_warmup_epochs"] == 0
    assert recipe["trainer.max_epochs"] == 100 and recipe["fit_binary_scalars"] is True
    assert recipe["model.train_entropy_weight"] == 0.5  # the authors' KLD
    changed = _changed_from_recipe(jobs["beta0.5_warm0_augmentor"], "abs_sweep", tmp_path)
    assert changed.pop("abs_diagnostics") > 0 and changed.pop("resume_run_dir") is True
    assert changed == {
        "model.train_beta": 0.5,
        "model.train_entropy_weight": 1.0,  # the full KL, as the grid's records ran
        "model.augmentation": "augmentor",
        "logger.group": "abs_sweep",
        "trainer.max_epochs": 30,
    }


def test_the_entropy_sweep_is_three_jobs_of_the_100_epoch_recipe(tmp_path):
    jobs = _sweep_jobs("abs_entropy_sweep")
    # the dirs the w = 0.5 and w = 0 runs were started in; w = 1 is the committed 100-epoch run
    assert set(jobs) == {f"beta1.0_warm0_light_ent{w}_ep100" for w in ("1.0", "0.5", "0.0")}
    # train_beta 1.0: the recipe's null, the bound's beta 1
    sweep_keys = {"model.train_beta": 1.0, "logger.group": "abs_sweep"}
    for job, weight in (("0.5", None), ("1.0", 1.0), ("0.0", 0.0)):
        changed = _changed_from_recipe(
            jobs[f"beta1.0_warm0_light_ent{job}_ep100"], "abs_entropy_sweep", tmp_path
        )
        assert changed.pop("abs_diagnostics") > 0 and changed.pop("resume_run_dir") is True
        # the w = 0.5 job is experiment=abs's recipe itself
        entropy = {} if weight is None else {"model.train_entropy_weight": weight}
        assert changed == {**sweep_keys, **entropy}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        alone = compose(
            "train",
            ["experiment=abs_entropy_sweep", "registry=reg", "model.train_entropy_weight=0.0"],
            return_hydra_config=True,
        )
    assert alone.hydra.run.dir == "reg/abs_sweep/beta1.0_warm0_light_ent0.0_ep100"


def test_a_rerun_resumes_an_unfinished_run_dir_and_skips_a_finished_one(tmp_path):
    two_epochs = [
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
    ]
    resume = "resume_run_dir=true"
    crash = ["+callbacks.crash._target_=conftest.CrashAtStep", "+callbacks.crash.step=4"]
    with pytest.raises(RuntimeError, match="simulated crash at step 4"):
        run_train(tiny_overrides(*two_epochs, resume, *crash), tmp_path)
    resumed = run_train(tiny_overrides(*two_epochs, resume), tmp_path)
    assert resumed["resumed_from"] == str(tmp_path / "checkpoints" / "last.ckpt")
    assert resumed["steps"] == 6  # epoch 0 (3 steps) came from last.ckpt
    written = (tmp_path / "summary.json").read_text()
    # finished: returned as it is, nothing trains (the crash callback would raise at step 1)
    again = run_train(
        tiny_overrides(*two_epochs, resume, *crash[:1], "+callbacks.crash.step=1"), tmp_path
    )
    assert again == json.loads(written) and (tmp_path / "summary.json").read_text() == written


def test_abs_diagnostics_are_written_into_the_summary(tmp_path):
    small = ["model=abs", "model.bank_size=50", "model.n_iter=2", "abs_diagnostics=12"]
    summary = run_train(tiny_overrides(*SHORT, *small), tmp_path)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["abs_images"] == 12 and saved["resumed_from"] is None
    assert 0 <= saved["abs_acc"] <= 1 and saved["abs_acc"] * 12 == round(saved["abs_acc"] * 12)
    assert saved["abs_squared_error"] > 0 and saved["abs_kl"] >= 0
    assert math.isfinite(saved["abs_median_margin"])
    assert {k: saved[k] for k in summary if k.startswith("abs_")} == {
        k: summary[k] for k in summary if k.startswith("abs_")
    }


def test_abs_diagnostics_on_another_model_is_an_error_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"abs_diagnostics=5 .* model=cnn .* abs_diagnostics=0"):
        run_train(tiny_overrides(*SHORT, "abs_diagnostics=5"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


MARGINS_MD = """Command: `python -m abslab.tasks.abs_margins`; the first 2 test images.

| model | error | median margin | mean own-class rec. error |
|---|---|---|---|
| published | 50.00% | 0.0125 | 0.0100 |
| abslab | 0.00% | 0.0300 | 0.0200 |

| model | squared error | KL | ELBO (beta 1) |
|---|---|---|---|
| published | 13.25 | 11.5 | 24.75 |
| abslab | 15.00 | 8.00 | 23.00 |
"""
MARGINS_CSV = "index,model,label\n0,published,7\n1,published,2\n0,abslab,7\n1,abslab,2\n"


def _summary(train_beta: float, warmup: int, **values: object) -> dict:
    return {
        "model": "abs",
        "epochs": 30,
        "wall_time_s": 1800.5,
        "commit": "abc1234",
        "hardware": "box",
        "command": "python train.py -m experiment=abs_sweep",
        "job_command": f"python train.py experiment=abs_sweep model.train_beta={train_beta} "
        f"model.kl_warmup_epochs={warmup}",
        "config": {"model": {"train_beta": train_beta, "kl_warmup_epochs": warmup}},
        **values,
    }


def test_markdown_rows_merge_the_tables_of_one_model():
    row = markdown_rows(MARGINS_MD, "published")
    assert row["error"] == "50.00%" and row["KL"] == "11.5" and row["model"] == "published"


def test_the_table_of_runs_replaces_only_the_marked_section(tmp_path):
    a, b, running = tmp_path / "beta0.5_warm0", tmp_path / "beta0.25_warm10", tmp_path / "x"
    for path in (a, b, running):
        path.mkdir()
    (a / "summary.json").write_text(
        json.dumps(
            _summary(
                0.5,
                0,
                val_accuracy_best=0.98,
                test_acc=0.9876,
                binary_abs_val_accuracy=0.98125,
                abs_images=1000,
                abs_acc=0.985,
                abs_squared_error=14.004,
                abs_kl=9.996,
                abs_median_margin=0.016049,
                seed=1,
                best_checkpoint="/runs/beta0.5_warm0/checkpoints/epoch_027.ckpt",
            )
        )
    )
    (b / "summary.json").write_text(json.dumps(_summary(0.25, 10, test_acc=0.99)))
    evaluation = tmp_path / "published.json"
    evaluation.write_text(
        json.dumps({"clean_accuracy": 0.9903, "commit": "c0", "hardware": "gpu", "command": "e"})
    )
    (tmp_path / "m.md").write_text(MARGINS_MD)
    (tmp_path / "m.csv").write_text(MARGINS_CSV)
    out = tmp_path / "abs.md"
    out.write_text(f"# history\n\nkept\n{BEGIN}\nold table\n{END}\n\n## after\nkept too\n")
    published = [f"--published-evaluation={evaluation}", f"--published-margins={tmp_path / 'm'}"]
    main([str(a), str(b), str(running), f"--out={out}", *published])
    text = out.read_text()
    assert text.startswith(f"# history\n\nkept\n{BEGIN}\n")
    assert text.endswith(f"\n{END}\n\n## after\nkept too\n") and "old table" not in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    assert header == (
        "| model | train beta | KL warm-up epochs | val acc. (best epoch) | test acc. | "
        "binary ABS val acc. (fitted scalars) | first N test images | acc. (first N) | "
        "squared error (first N) | KL (first N) | median margin (first N) | epochs | seed | "
        "tested checkpoint | wall time (s) | commit | hardware | command |"
    )
    rows = lines[lines.index(header) + 2 :]
    assert rows[0] == (
        "| abs, published VAEs (m.md for the first N) |  |  |  | 99.03% |  | 2 | 50.00% | 13.25 "
        "| 11.50 | 0.0125 |  |  |  |  | c0 | gpu | `e` |"
    )
    # sorted by dir name: beta0.25_warm10 before beta0.5_warm0
    assert rows[1] == (
        "| abs | 0.25 | 10 |  | 99.00% |  |  |  |  |  |  | 30 |  |  | 1800.5 | abc1234 | box | "
        "`python train.py experiment=abs_sweep model.train_beta=0.25 model.kl_warmup_epochs=10` |"
    )
    assert rows[2] == (
        "| abs | 0.5 | 0 | 98.00% | 98.76% | 98.12% | 1000 | 98.50% | 14.00 | 10.00 | 0.0160 | 30 "
        "| 1 | epoch_027.ckpt | 1800.5 | abc1234 | box | "
        "`python train.py experiment=abs_sweep model.train_beta=0.5 model.kl_warmup_epochs=0` |"
    )
    assert rows[3] == ""
    assert rows[4] == f"Unfinished (no summary.json): `{running}`"
