"""Every model's checkpoint survives train.py -> evaluate.py, loaded with weights_only=True."""

from __future__ import annotations

import pytest
import torch

from conftest import CONF, run_evaluate, run_train, tiny_overrides

# every model abslab trains (torch_module wraps a user's trained module: evaluate only)
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem != "torch_module")
# the smallest settings under which each model still trains and predicts
SMALL = {
    "abs": ["model.bank_size=50", "model.n_iter=2"],
    "binary_abs": ["model.bank_size=50", "model.n_iter=2"],
    "madry": ["model.train_steps=1"],
}


@pytest.mark.parametrize("model", MODELS)
def test_a_trained_checkpoint_is_tested_and_evaluated_as_the_same_function(model, tmp_path):
    common = tiny_overrides(f"model={model}", "data.test_samples=24", *SMALL.get(model, []))
    trained = run_train(
        [
            *common,
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1",
            "test_after_fit=true",
        ],
        tmp_path / "train",
    )
    checkpoint = trained.get("last_checkpoint")
    if checkpoint is None:  # nothing to train: nearest neighbour
        assert model == "nearest_neighbor"
    else:
        assert trained["steps"] == 2
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        assert saved["hyper_parameters"]["name"] == model
    evaluated = run_evaluate(
        [*common, *([f"ckpt={checkpoint}"] if checkpoint else [])], tmp_path / "evaluate"
    )
    assert evaluated["n_samples"] == 24
    # train.py tested the best checkpoint (the only epoch's, = last.ckpt) on the same 24 images
    assert evaluated["clean_accuracy"] == pytest.approx(trained["test_acc"])
