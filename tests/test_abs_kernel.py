"""ABS's hand-written CPU kernel (abs_kernel.cpp) against the torch inference it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from abslab.models import abs_kernel
from abslab.models.abs import ABSDefense
from conftest import REFERENCE_MODELS

ABS_DIR = REFERENCE_MODELS / "abs"


@pytest.fixture(scope="module")
def images(mnist_arrays):
    """The first 21 test images (21, 1, 28, 28): a chunk of 16 and one of 5."""
    return torch.from_numpy(mnist_arrays["test_images"][:21].astype(np.float32) / 255)[:, None]


@pytest.mark.parametrize("clip_mode", ["authors", "project"])
def test_the_kernel_computes_the_torch_inference(clip_mode, images):
    """Same predictions, logits within 1e-5 relative, latents within 1e-4, with the published
    weights; a radius of 2 makes the clip act on most latents."""
    kwargs = {"pretrained": str(ABS_DIR), "bank_size": 1000, "n_iter": 12, "clip": 2.0}
    torch_model = ABSDefense(inference_kernel=False, clip_mode=clip_mode, **kwargs).eval()
    kernel_model = ABSDefense(inference_kernel=True, clip_mode=clip_mode, **kwargs).eval()
    with torch.no_grad():
        expected, got = torch_model.infer(images), kernel_model.infer(images)
    # the kernel ran (no silent fall-back to torch), and the torch model did not run it
    assert isinstance(kernel_model._optimisers[kernel_model.settings], abs_kernel.KernelOptimiser)
    assert not torch_model._optimisers
    assert (expected.latents.norm(dim=-1) > 1.999).float().mean() > 0.5
    assert torch.equal(got.logits.argmax(1), expected.logits.argmax(1))
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=0)
    torch.testing.assert_close(got.latents, expected.latents, rtol=0, atol=1e-4)
    # the Adam steps moved the latents: the comparison is not of two bank searches
    bank_only = ABSDefense(clip_mode=clip_mode, **{**kwargs, "n_iter": 1}).eval()
    with torch.no_grad():
        assert (bank_only.infer(images).latents - got.latents).abs().max() > 0.1


def test_the_kernel_gives_each_image_the_same_latents_in_any_batch_and_thread_count(images):
    """Each (image, class) pair runs alone in the kernel: its latents do not depend on the
    batch or the threads, bit for bit (torch's convolutions do not promise that)."""
    model = ABSDefense(pretrained=str(ABS_DIR), bank_size=1000, n_iter=6).eval()
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(2)
            whole = model.infer(images).latents
            torch.set_num_threads(1)
            alone = torch.cat([model.infer(images[i : i + 1]).latents for i in (0, 7, 20)])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, whole[[0, 7, 20]])


def test_a_missing_compiler_names_the_fix(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    abs_kernel.load_kernel.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="model.inference_kernel=false"):
            abs_kernel.load_kernel()
    finally:
        abs_kernel.load_kernel.cache_clear()


def test_a_first_gradient_near_zero_is_taken_in_float64(mnist_arrays):
    """Test image 86's class-9 latent starts with a gradient component of 9.4e-9, below Adam's
    eps: the first step, lr g / (|g| + eps), is there decided by float32's error in g (torch's
    float32 path steps 0.020, float64 0.024). The kernel takes that gradient in float64."""
    x = torch.from_numpy(mnist_arrays["test_images"][86:87].astype(np.float32) / 255)[:, None]
    kwargs = {"pretrained": str(ABS_DIR), "n_iter": 2, "clip_mode": "authors"}  # one Adam step
    with torch.no_grad():
        exact = ABSDefense(**kwargs).double().eval().infer(x.double()).latents[0, 9]
        plain = ABSDefense(inference_kernel=False, **kwargs).eval().infer(x).latents[0, 9]
        kernel = ABSDefense(**kwargs).eval().infer(x).latents[0, 9]
    assert (plain.double() - exact).abs().max() > 1e-3  # float32 alone misses it
    torch.testing.assert_close(kernel.double(), exact, rtol=0, atol=1e-6)
