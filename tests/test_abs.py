"""ABS: batched inference against the authors' per-class structure, clipping, binary ABS,
the published-weight converter, training, and the envelope gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from abslab.data.sampling import ClassBalancedSampler
from abslab.models.abs import PUBLISHED_CLASS_SCALARS, ABSDefense, annealed_kl_weight
from abslab.models.abs_inference import clip_to_ball, make_latent_bank, transposed_conv
from abslab.models.pretrained import WeightsError, stack_reference_vaes
from abslab.models.vae import pack_by_class, vae_loss_terms
from abslab.tasks.abs_margins import error_matrix, figure, margins
from abslab.tasks.fit_scalars import choose_class_scalars, fit_class_scalars
from bench.abs_reference import ReferenceABS, ReferenceVAE, load_reference_vaes
from conftest import (
    REFERENCE_MODELS,
    REPO,
    compose_config,
    run_evaluate,
    run_train,
    tiny_overrides,
)

ABS_DIR = REFERENCE_MODELS / "abs"


@pytest.fixture(scope="module")
def digits(mnist_arrays):
    """The first 6 test images (6, 1, 28, 28) and labels."""
    x = torch.from_numpy(mnist_arrays["test_images"][:6].astype(np.float32) / 255)
    return x[:, None], torch.from_numpy(mnist_arrays["test_labels"][:6].astype(np.int64))


def random_reference_vaes(seed: int) -> list[ReferenceVAE]:
    """Ten VAEs in the authors' layout with random weights and BatchNorm statistics.

    The decoder weights are scaled up 3x: at PyTorch's initial scale the reconstructions barely
    depend on z, and inference would only shrink the latents towards the prior's mode.
    """
    torch.manual_seed(seed)
    vaes = [ReferenceVAE().eval() for _ in range(10)]
    for vae in vaes:
        with torch.no_grad():
            for i in range(4):
                getattr(vae.Decoder, f"conv_{i}").weight.mul_(3)
        for name, buffer in vae.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    return vaes


def abs_from(vaes: list[ReferenceVAE], **kwargs) -> ABSDefense:
    model = ABSDefense(**kwargs).eval()
    model.vaes.load_state_dict(stack_reference_vaes([v.state_dict() for v in vaes], "random"))
    return model


@pytest.mark.parametrize("clip_mode", ["project", "authors"])
def test_batched_inference_equals_the_per_class_reference(clip_mode, digits):
    vaes = random_reference_vaes(seed=0)
    # a radius that the optimised latents reach, so that the clip acts
    model = abs_from(vaes, bank_size=300, clip=1.5, clip_mode=clip_mode)
    reference = ReferenceABS(vaes, model.bank_latents, clip=1.5, keep_sign=clip_mode == "project")
    x = digits[0]
    with torch.no_grad():
        expected = reference(x)
    got = model(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # the two modes really differ, so each comparison above tests its own clip
    other = abs_from(
        vaes, bank_size=300, clip=1.5, clip_mode="authors" if clip_mode == "project" else "project"
    )
    assert (other(x) - got).abs().max() > 1e-4


def test_clip_to_ball_in_both_modes():
    z = torch.tensor([[3.0, -4.0], [0.3, -0.4]])
    projected = clip_to_ball(z, 2.5, "project")
    torch.testing.assert_close(projected, torch.tensor([[1.5, -2.0], [0.3, -0.4]]))
    authors = clip_to_ball(z, 2.5, "authors")  # their clip_to_sphere drops the sign
    torch.testing.assert_close(authors, torch.tensor([[1.5, 2.0], [0.3, -0.4]]))
    with pytest.raises(ValueError, match="clip_mode"):
        ABSDefense(clip_mode="sphere", bank_size=10)


def test_binary_abs_binarizes_and_scales(digits):
    vaes = random_reference_vaes(seed=1)
    plain = abs_from(vaes, bank_size=200, n_iter=5)
    binary = abs_from(
        vaes, bank_size=200, n_iter=5, binarize_input=True, class_scalars=PUBLISHED_CLASS_SCALARS
    )
    x = digits[0]
    expected = plain((x >= 0.5).float()) * torch.tensor(PUBLISHED_CLASS_SCALARS)
    torch.testing.assert_close(binary(x), expected)
    with pytest.raises(ValueError, match="class_scalars"):
        ABSDefense(class_scalars=[1.0, 2.0], bank_size=10)


def test_published_weights_compute_the_authors_function(digits):
    x, y = digits
    model = ABSDefense(pretrained=str(ABS_DIR), clip_mode="authors", bank_size=2000).eval()
    reference = ReferenceABS(load_reference_vaes(ABS_DIR), model.bank_latents)
    with torch.no_grad():
        expected = reference(x)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
    assert (expected.argmax(1) == y).all()


def test_the_drawn_bank_is_the_published_one():
    published = np.load(ABS_DIR / "latent_samples_8000.npy")
    assert torch.equal(make_latent_bank(8000, 0.1, 1234), torch.from_numpy(published))


def test_loading_errors_name_the_problem(tmp_path):
    with pytest.raises(WeightsError, match="not a directory"):
        ABSDefense(pretrained=str(tmp_path / "nowhere"), bank_size=10)
    with pytest.raises(WeightsError, match="ABS_0.net"):
        ABSDefense(pretrained=str(tmp_path), bank_size=10)
    np.save(tmp_path / "bank.npy", np.zeros((5, 3), np.float32))
    with pytest.raises(WeightsError, match=r"\(5, 3\)"):
        ABSDefense(latent_samples=str(tmp_path / "bank.npy"), bank_size=10)


def test_packing_gives_each_vae_only_its_own_class():
    y = torch.tensor([3, 1, 3, 3, 0, 1, 7])
    x = y.float().view(-1, 1, 1, 1).expand(-1, 1, 28, 28)  # every pixel holds the label
    packed, mask = pack_by_class(x, y)
    assert packed.shape == (3, 10, 28, 28)
    assert mask.sum(0).tolist() == torch.bincount(y, minlength=10).float().tolist()
    present = torch.bincount(y, minlength=10) > 0
    for c in range(10):
        expected = float(c) if present[c] else 0.0
        assert (packed[:, c] == expected).all()


def test_a_training_step_updates_only_the_vaes_of_classes_in_the_batch():
    torch.manual_seed(0)
    model = ABSDefense(bank_size=10)
    y = torch.tensor([2, 2, 5, 5, 5])
    packed, mask = pack_by_class(torch.rand(5, 1, 28, 28), y)
    rec_error, kl = vae_loss_terms(model.vaes, packed, mask)
    (rec_error + kl).backward()
    grad = model.vaes.decoder.convs[1].weight.grad.view(10, -1)  # class c = row c
    has_grad = grad.abs().sum(1) > 0
    assert has_grad.tolist() == [c in (2, 5) for c in range(10)]


def test_the_training_kl_weight_is_train_beta_annealed_and_the_bound_keeps_beta():
    assert annealed_kl_weight(0.5, 0, 0.0) == 0.5  # no annealing
    assert annealed_kl_weight(0.5, 4, 1.0) == 0.125  # a quarter of the way up
    assert annealed_kl_weight(0.5, 4, 9.0) == 0.5  # after the ramp
    torch.manual_seed(0)
    model = ABSDefense(bank_size=10, train_beta=0.25, augment=0.0)
    assert model.settings.beta == 1.0  # the bound that classifies
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([1, 1, 3, 3])
    torch.manual_seed(1)
    loss = model.training_step((x, y, torch.arange(4)), 0)
    torch.manual_seed(1)
    rec_error, kl = vae_loss_terms(model.vaes, *pack_by_class(x, y))
    assert torch.allclose(loss, (rec_error + 0.25 * kl) / 4)
    with pytest.raises(ValueError, match=r"model.train_beta=-1: .* >= 0"):
        ABSDefense(bank_size=10, train_beta=-1)
    with pytest.raises(ValueError, match=r"model.kl_warmup_epochs=-2: .*>= 0"):
        ABSDefense(bank_size=10, kl_warmup_epochs=-2)


def test_one_training_run_of_the_ten_vaes(tmp_path):
    summary = run_train(
        tiny_overrides("model=abs", "debug=fast", "model.bank_size=50", "model.n_iter=2"),
        tmp_path,
    )
    assert summary["model"] == "abs" and summary["steps"] == 1


def test_class_balanced_batches():
    labels = torch.arange(10).repeat_interleave(torch.arange(5, 15))  # 5 ... 14 per class
    torch.manual_seed(0)
    order = torch.tensor(list(ClassBalancedSampler(labels)))
    assert len(order) == 10 * 10  # ceil(95 / 10) per class
    for batch in order.view(-1, 20):
        assert torch.bincount(labels[batch], minlength=10).tolist() == [2] * 10


def test_envelope_gradient_matches_finite_differences_of_the_bound(digits):
    torch.manual_seed(0)
    model = ABSDefense(pretrained=str(ABS_DIR), bank_size=500, n_iter=5).double().eval()
    x = digits[0][:2].double().requires_grad_(True)
    out = model.infer(x)
    out.logits[:, 3].sum().backward()
    torch.testing.assert_close(x.grad, -2 * (x - out.reconstructions[:, 3:4]) / 784)
    # central differences of the bound at the optimised latents, decoded by the plain network
    with torch.no_grad():
        rec = model.vaes.eval().decode(out.latents)[:, 3:4]
        prior = 0.5 * (out.latents[:, 3] ** 2).sum(1)

        def bound(image: torch.Tensor) -> torch.Tensor:
            return -(((image - rec) ** 2).flatten(1).sum(1) + prior) / 784

        direction = torch.randn_like(x)
        step = 1e-3
        numeric = (bound(x + step * direction) - bound(x - step * direction)) / (2 * step)
    analytic = (x.grad * direction).flatten(1).sum(1)
    torch.testing.assert_close(numeric, analytic, rtol=1e-7, atol=1e-10)


def test_fitted_scalars_undo_a_class_penalty():
    torch.manual_seed(0)
    labels = torch.arange(10).repeat(100)
    elbos = 1.04 + 0.005 * torch.rand(1000, 10)
    elbos[torch.arange(1000), labels] = 1.0 + 0.005 * torch.rand(1000)
    elbos[:, 3] *= 1.06  # class 3 now loses its own images, and only its own
    assert ((elbos.argmin(1) == labels).double().mean()) == 0.9
    scalars = fit_class_scalars(elbos.double(), labels)
    # 1.06 s_3 (1.0 + noise) must fall under 1.04, and 1.06 s_3 (1.04 + noise) stay over 1.005
    assert 0.912 < scalars[3] < 0.9765
    assert ((elbos.double() * scalars).argmin(1) == labels).all()
    assert scalars[0] == 1


def test_scalars_are_kept_only_where_they_win_on_held_out_folds():
    """A real class penalty: the fit wins on held-out folds too and is kept. Class-free noise:
    the fit still gains on the images it was fitted on, loses on held-out folds, and ones stay."""
    torch.manual_seed(0)
    labels = torch.arange(10).repeat(100)
    elbos = 1.04 + 0.005 * torch.rand(1000, 10)
    elbos[torch.arange(1000), labels] = 1.0 + 0.005 * torch.rand(1000)
    elbos[:, 3] *= 1.06
    penalty = choose_class_scalars(elbos.double(), labels)
    assert penalty["chosen"] == "fitted"
    assert penalty["val_accuracy_fitted_held_out"] > penalty["val_accuracy_ones"] == 0.9
    assert penalty["class_scalars"] == penalty["fitted_scalars"] != [1.0] * 10

    labels = torch.arange(10).repeat(200)
    elbos = 1.0 + 0.1 * torch.rand(2000, 10)
    elbos[torch.arange(2000), labels] -= 0.08 * torch.rand(2000)
    noise = choose_class_scalars(elbos.double(), labels)
    assert noise["val_accuracy_fitted"] > noise["val_accuracy_ones"]
    assert noise["val_accuracy_fitted_held_out"] < noise["val_accuracy_ones"]
    assert noise["chosen"] == "ones" and noise["class_scalars"] == [1.0] * 10
    assert noise["val_accuracy"] == noise["val_accuracy_ones"]


def test_evaluate_writes_reconstructions_and_binary_abs_takes_an_abs_checkpoint(tmp_path):
    small = ["model.bank_size=100", "model.n_iter=3"]
    trained = run_train(tiny_overrides("model=abs", "debug=fast", *small), tmp_path / "train")
    summary = run_evaluate(
        tiny_overrides(
            "model=binary_abs",
            f"ckpt={trained['last_checkpoint']}",
            "data.test_samples=8",
            "figure_samples=3",
            *small,
        ),
        tmp_path / "evaluate",
    )
    assert summary["model"] == "binary_abs" and summary["n_samples"] == 8
    assert summary["figures"] == [str(tmp_path / "evaluate" / "reconstructions.png")]
    assert (tmp_path / "evaluate" / "reconstructions.png").stat().st_size > 10_000


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_replay_equals_plain_inference(digits):
    kwargs = {"pretrained": str(ABS_DIR), "bank_size": 1000}
    plain = ABSDefense(**kwargs).cuda().eval()
    graphed = ABSDefense(cuda_graphs=True, **kwargs).cuda().eval()
    x = digits[0].cuda()
    for _ in range(2):  # capture, then replay
        torch.testing.assert_close(graphed(x), plain(x))


def test_compiled_inference_equals_plain_inference(mnist_arrays):
    """The compiled Adam steps compute the plain loop's function: same predictions, logits
    within 1e-5 relative, in chunks of 16 and 5 (the dynamic graph) and of one image."""
    kwargs = {"pretrained": str(ABS_DIR), "bank_size": 1000, "n_iter": 5}
    plain = ABSDefense(**kwargs).eval()
    compiled = ABSDefense(compile_inference=True, **kwargs).eval()
    x = torch.from_numpy(mnist_arrays["test_images"][:21].astype(np.float32) / 255)[:, None]
    with torch.no_grad():
        for batch in (x, x[:1]):
            expected, logits = plain(batch), compiled(batch)
            assert torch.equal(logits.argmax(1), expected.argmax(1))
            torch.testing.assert_close(logits, expected, rtol=1e-5, atol=0)


def test_compiled_inference_is_refused_on_cuda():
    model = ABSDefense(bank_size=100, n_iter=3, compile_inference=True).eval()
    model._inference_parts()
    model._device = torch.device("cuda", 0)  # no GPU needed: the check comes first
    with pytest.raises(ValueError, match="model.compile_inference=false"):
        model(torch.zeros(1, 1, 28, 28))


def test_binary_abs_config_uses_the_published_scalars(tmp_path):
    cfg = compose_config("evaluate", ["model=binary_abs"], tmp_path)
    assert tuple(cfg.model.class_scalars) == PUBLISHED_CLASS_SCALARS


def test_transposed_conv_is_conv_transpose2d():
    torch.manual_seed(0)
    for c_in, c_out, k, stride, n in [(32, 16, 5, 2, 4), (16, 16, 5, 2, 11), (16, 1, 4, 1, 25)]:
        h = torch.randn(3, 10 * c_in, n, n)
        weight, bias = torch.randn(10 * c_in, c_out, k, k), torch.randn(10 * c_out)
        expected = F.conv_transpose2d(h, weight, bias, stride=stride, groups=10)
        torch.testing.assert_close(transposed_conv(h, weight, bias, stride), expected)


def test_margins_and_error_matrix_of_the_class_specificity_figure():
    labels = np.array([0, 1, 1])
    bounds = np.array([[1.0, 3.0, 2.0], [0.5, 1.0, 4.0], [2.0, 1.0, 1.5]])
    bounds = np.pad(bounds, ((0, 0), (0, 7)), constant_values=9.0)
    np.testing.assert_allclose(margins(bounds, labels), [1.0, -0.5, 0.5])
    errors = np.arange(30, dtype=float).reshape(3, 10)
    matrix = error_matrix(errors, np.array([0, 1, 1]))
    np.testing.assert_allclose(matrix[1], (errors[1] + errors[2]) / 2)
    assert np.isnan(matrix[2:]).all()  # no digits of those classes
    fig = figure({"a": (bounds, errors), "b": (bounds, 3 * errors)}, labels)
    assert len(fig.axes) == 4 + 3  # two models, difference, histogram; a colorbar per matrix
    first, second, diff, histogram = fig.axes[:4]
    assert [ax.get_title() for ax in (first, second, diff)] == [
        "a: mean ||x - G_c(z*)||^2 / 784",
        "b: mean ||x - G_c(z*)||^2 / 784",
        "b - a",
    ]
    difference = diff.get_images()[0].get_array()
    np.testing.assert_allclose(difference[0], 2 * errors[0])  # 3e - e: one digit of class 0
    np.testing.assert_allclose(difference[1], errors[1] + errors[2])  # two of class 1, averaged
    legend = [t.get_text() for t in histogram.get_legend().get_texts()]
    assert legend == ["a (error 33.3%)", "b (error 33.3%)"]  # margins 1, -0.5, 0.5


def test_the_speed_bench_says_why_it_skips_the_authors_code(tmp_path):
    from bench.authors_code import authors_modules, missing_reason

    assert missing_reason(None) == "no --authors-code given"
    assert "no AnalysisBySynthesis clone" in missing_reason(tmp_path)
    with pytest.raises(FileNotFoundError, match="no AnalysisBySynthesis clone"):
        authors_modules(tmp_path)


def test_the_committed_own_abs_checkpoint_classifies(tmp_path):
    ckpt = REPO / "checkpoints" / "abs.ckpt"  # results/abs.md: 98.90% on 10,000
    summary = run_evaluate(
        tiny_overrides("model=abs", f"ckpt={ckpt}", "data.test_samples=40"), tmp_path
    )
    assert summary["n_samples"] == 40 and summary["clean_accuracy"] >= 0.95


def test_the_entropy_weight_half_is_the_authors_kld_with_the_posterior_std():
    """train_entropy_weight=0.5 trains on the authors' loss_functions.KLD(mu, sig_q=std):
    -1/2 sum(1 - mu^2 + log(sig_q) - sig_q^2), re-typed here from their code."""
    torch.manual_seed(0)
    model = ABSDefense(bank_size=10, train_entropy_weight=0.5, augment=0.0)
    packed, mask = pack_by_class(torch.rand(6, 1, 28, 28), torch.tensor([0, 0, 4, 4, 4, 7]))
    mean, log_var = model.vaes.encode(packed)
    std = (0.5 * log_var).exp()
    authors = -0.5 * (1 - mean**2 + std.log() - std**2).sum(2)
    torch.manual_seed(1)
    _, kl = vae_loss_terms(model.vaes, packed, mask, entropy_weight=0.5)
    torch.testing.assert_close(kl, (authors * mask).sum())
    torch.manual_seed(1)
    _, full = vae_loss_terms(model.vaes, packed, mask)  # weight 1: the KL to N(0, I)
    textbook = -0.5 * (1 + log_var - mean**2 - log_var.exp()).sum(2)
    torch.testing.assert_close(full, (textbook * mask).sum())
    assert (full - kl).abs() > 1e-3  # the weight changed the term
    with pytest.raises(ValueError, match=r"model.train_entropy_weight=2"):
        ABSDefense(bank_size=10, train_entropy_weight=2)
