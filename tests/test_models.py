"""The defenses: one training step each, the published weights, nearest neighbour, interfaces."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from abslab.data.mnist import MNISTDataModule
from abslab.models.cnn import CNNDefense
from abslab.models.madry import MadryDefense
from abslab.models.nearest_neighbor import NearestNeighborDefense
from abslab.models.nets import binarize
from abslab.models.pretrained import WeightsError, load_state_dict_file
from conftest import MNIST_ROOT, REFERENCE_MODELS, run_train, tiny_overrides

CNN_DIR = REFERENCE_MODELS / "cnn"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_one_batch_on_the_gpu(tmp_path):
    summary = run_train(tiny_overrides("trainer=gpu", "debug=fast"), tmp_path)
    assert summary["steps"] == 1 and "CUDA" in summary["hardware"]


def _authors_cnn_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The authors' CNN written out from their raw keys: conv, BN (eval), ELU; no padding."""
    strides = [1, 2, 2, 1]
    for i in range(3):
        x = F.conv2d(x, state[f"conv_{i}.weight"], state[f"conv_{i}.bias"], stride=strides[i])
        x = F.batch_norm(
            x,
            state[f"bn_{i}.running_mean"],
            state[f"bn_{i}.running_var"],
            state[f"bn_{i}.weight"],
            state[f"bn_{i}.bias"],
            training=False,
        )
        x = F.elu(x)
    return F.conv2d(x, state["conv_3.weight"], state["conv_3.bias"], stride=1).flatten(1)


@pytest.fixture(scope="module")
def test_batch():
    dm = MNISTDataModule(root=str(MNIST_ROOT), download=False, test_samples=1000)
    dm.setup("test")
    return dm.test_set.tensors


def test_published_cnn_weights_compute_the_authors_function(test_batch):
    x, y, _ = test_batch
    model = CNNDefense(pretrained=str(CNN_DIR)).eval()
    assert model.pretrained.endswith("vanilla_cnn.net")
    state = load_state_dict_file(CNN_DIR / "vanilla_cnn.net")
    with torch.no_grad():
        ours, theirs = model(x), _authors_cnn_forward(state, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (ours.argmax(1) == y).float().mean() >= 0.99


def test_binary_cnn_uses_vanilla_weights_on_binarized_input(test_batch):
    x, _, _ = test_batch
    binary = CNNDefense(binarize_input=True, pretrained=str(CNN_DIR)).eval()
    vanilla = CNNDefense(pretrained=str(CNN_DIR)).eval()
    with torch.no_grad():
        torch.testing.assert_close(binary(x), vanilla((x >= 0.5).float()))
    assert binary.gradient == "straight_through" and vanilla.gradient == "exact"
    explicit = CNNDefense(binarize_input=True, pretrained=str(CNN_DIR / "binary_cnn.net"))
    assert not torch.equal(explicit.net.convs[0].weight, binary.net.convs[0].weight)


def test_weight_loading_errors_name_the_problem(tmp_path):
    with pytest.raises(WeightsError, match="No weight file"):
        CNNDefense(pretrained=str(tmp_path / "missing.net"))
    state = load_state_dict_file(CNN_DIR / "transfer_cnn.net")  # another architecture
    torch.save(state, tmp_path / "wrong_shapes.net")
    with pytest.raises(WeightsError, match=r"shape mismatches \['convs.0.weight"):
        CNNDefense(pretrained=str(tmp_path / "wrong_shapes.net"))
    state = load_state_dict_file(CNN_DIR / "vanilla_cnn.net")
    state["fc.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra_key.net")
    with pytest.raises(WeightsError, match="fc.weight"):
        CNNDefense(pretrained=str(tmp_path / "extra_key.net"))


def test_nearest_neighbor_equals_brute_force(mnist_arrays):
    generator = torch.Generator().manual_seed(0)
    refs = torch.from_numpy(mnist_arrays["train_images"][:300]).float().div(255).unsqueeze(1)
    labels = torch.from_numpy(mnist_arrays["train_labels"][:300]).long()
    queries = torch.rand(20, 1, 28, 28, generator=generator)
    queries[:10] = refs[100:110] + 0.05 * torch.rand(10, 1, 28, 28, generator=generator)
    model = NearestNeighborDefense()
    model.fit_reference(refs, labels)
    logits = model(queries)
    for i, query in enumerate(queries):
        for c in range(10):
            nearest = min(float((query - r).norm()) for r, y in zip(refs, labels) if y == c)
            assert logits[i, c].item() == pytest.approx(-nearest, rel=1e-4, abs=1e-3)
    assert logits[:10].argmax(1).tolist() == labels[100:110].tolist()
    assert model.gradient == "none" and not model.needs_training


def test_nearest_neighbor_needs_every_class():
    with pytest.raises(ValueError, match="every class"):
        NearestNeighborDefense().fit_reference(torch.rand(5, 1, 28, 28), torch.arange(5))


def test_binarize_is_exact_forward_and_identity_backward():
    x = torch.tensor([0.0, 0.3, 0.49999, 0.5, 0.7, 1.0], requires_grad=True)
    out = binarize(x)
    assert out.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    out.sum().backward()
    assert x.grad.tolist() == [1.0] * 6


def test_calibrated_softmax_matches_the_formula():
    model = MadryDefense()  # alpha 1, eta 60
    logits = torch.tensor([[1.0, 2.0, 8.0, 0, 0, 0, 0, 0, 0, -3.0]])
    direct = (logits.exp() + 60) / (logits.exp().sum() + 600)
    torch.testing.assert_close(model.calibrated_softmax(logits), direct)
    extreme = NearestNeighborDefense().calibrated_softmax(torch.full((2, 10), -500.0))
    assert torch.isfinite(extreme).all()
    torch.testing.assert_close(extreme.sum(1), torch.ones(2))


def test_madry_trains_on_adversarial_inputs_inside_the_ball():
    model = MadryDefense(train_steps=3, train_step_size=0.1)
    seen = []
    forward = model.net.forward
    model.net.forward = lambda x: (seen.append(x.detach().clone()), forward(x))[1]
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(x, y, torch.arange(8)), batch_size=8))
    assert len(seen) == 3 + 1  # three PGD steps, then the loss on their result
    trained_on = seen[-1]
    assert 0.1 < (trained_on - x).abs().max() <= 0.3 + 1e-6
    assert trained_on.min() >= 0 and trained_on.max() <= 1
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_a_nan_loss_stops_training_with_advice():
    model = CNNDefense()
    with pytest.raises(FloatingPointError, match="model=cnn.*Lower model.lr"):
        model.classification_loss(torch.full((2, 10), float("nan")), torch.zeros(2).long(), "k")


def test_pgd_raises_the_loss_and_leaves_parameter_gradients_alone():
    from abslab.models.projected_gradient import iterate

    model = MadryDefense()
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    x_adv = iterate(lambda v, _: model(v), x, y, eps=0.3, steps=5, step_size=0.1)
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    assert all(p.grad is None for p in model.parameters())
