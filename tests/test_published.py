"""The authors' published weights give the published accuracies on all 10,000 test images."""

from __future__ import annotations

import pytest

from conftest import MNIST_ROOT, REFERENCE_MODELS, run_evaluate

FULL_TEST_SET = [
    f"data.root={MNIST_ROOT}",
    "data.download=false",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "data.eval_batch_size=1000",
]
CNN_WEIGHTS = f"model.pretrained={REFERENCE_MODELS / 'cnn'}"


@pytest.mark.parametrize(
    ("overrides", "published_accuracy"),
    [
        (["model=cnn", CNN_WEIGHTS], 0.9935),
        (["model=binary_cnn", CNN_WEIGHTS], 0.9882),
        (["model=nearest_neighbor"], 0.9691),
    ],
)
def test_published_accuracy_on_the_full_test_set(overrides, published_accuracy, tmp_path):
    summary = run_evaluate([*FULL_TEST_SET, *overrides], tmp_path)
    assert summary["n_samples"] == 10000
    assert summary["clean_accuracy"] == pytest.approx(published_accuracy, abs=1e-9)
