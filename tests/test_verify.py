"""`python -m abslab.verify`: a fresh run verifies; a tampered adversarial is named."""

from __future__ import annotations

import numpy as np

from abslab.tasks.verify import main
from conftest import REFERENCE_MODELS, run_evaluate, tiny_overrides


def test_verify_passes_a_fresh_run_and_names_a_tampered_adversarial(tmp_path, capsys):
    run_dir = tmp_path / "run"
    summary = run_evaluate(
        tiny_overrides(
            "model=cnn",
            "weights=published",
            f"published_root={REFERENCE_MODELS}",
            "data.test_samples=4",
            "norm=linf",
            "attack=fgsm",
            "figure_samples=0",
        ),
        run_dir,
    )
    assert summary["attacks"]["fgsm"]["successes"] == 4
    assert main([str(run_dir), "--all"]) == 0

    path = run_dir / "adversarials.npz"
    with np.load(path) as data:
        arrays = dict(data)
    original = arrays["images"][1].copy()
    arrays["images"][1] = np.clip(original + 0.01, 0, 1)  # the distance changes
    np.savez_compressed(path, **arrays)
    capsys.readouterr()
    assert main([str(run_dir)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"index {arrays['index'][1]} attack fgsm: distance" in lines[0]

    arrays["images"][1] = arrays["images"][1] * 0 + original * 0  # a blank image: not adversarial
    np.savez_compressed(path, **arrays)
    assert main([str(run_dir)]) == 1
    assert "per_sample.csv adv_pred" in capsys.readouterr().err
    # a config written before runs recorded how to reload their model: named, not a traceback
    config = (run_dir / "config.yaml").read_text()
    kept = [line for line in config.splitlines() if not line.startswith("weights:")]
    (run_dir / "config.yaml").write_text("\n".join(kept) + "\n")
    assert main([str(run_dir)]) == 1
    out = capsys.readouterr()
    assert f"{run_dir}: cannot be verified" in out.out
    assert "config.yaml has no weights: it was written before" in out.err
