"""ABS's latent optimisation as a hand-written CPU kernel (abs_kernel.cpp), loaded with ctypes.

The kernel runs every Adam step of one (image, class) pair with its activations in cache and
16-channel vectors; threads split the pairs. It computes `optimise_latents` in another float
order (its own exp), with a first gradient near Adam's eps taken in float64: logits agree with
the authors' code within 5e-6 relative on the first 1,000 test images, not bit for bit
(docs/abs_kernel.md). It is compiled on first use with the system's C++ compiler for the CPU it
runs on (about 2 s) and cached by a hash of source, flags, compiler and CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch

from abslab.models.abs_inference import (
    ADAM_BETAS,
    ADAM_EPS,
    FoldedDecoder,
    InferenceSettings,
    LatentBank,
    adam_schedule,
    adam_start,
    adam_step,
    latent_loss_gradient,
)
from abslab.models.vae import LATENT_DIM, N_CLASSES

SOURCE = Path(__file__).with_name("abs_kernel.cpp")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")
COMPILER_ENV = "CXX"  # the compiler to use; default g++
# The first Adam step moves each coordinate by lr g / (|g| + eps), eps = 1e-8: below about 1e-5
# its slope in g, lr eps / (|g| + eps)^2, turns float32's error in g (a few 1e-9) into more than
# an ulp of z, and near eps the float noise picks the step. Such a first gradient is recomputed
# in float64 (docs/abs_kernel.md: test image 86, class 9, g = 9.4e-9).
SMALL_GRADIENT = 1e-5


def cache_dir() -> Path:
    """Where compiled kernels live: $XDG_CACHE_HOME/abslab, or ~/.cache/abslab."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "abslab"


def cpu_signature() -> str:
    """The CPU's model and instruction-set flags: `-march=native` builds for them, so a cache
    shared between machines (a cluster's home directory) must not hand one CPU's build to
    another (an illegal instruction)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text().splitlines()
        keys = ("model name", "flags", "Features", "CPU part")  # x86; ARM
        return "\n".join(dict.fromkeys(line for line in lines if line.startswith(keys)))
    return f"{platform.machine()} {platform.processor()}"


@cache
def load_kernel() -> ctypes.CDLL:
    """Compile abs_kernel.cpp (once per source, flags, compiler and CPU) and load it."""
    compiler = os.environ.get(COMPILER_ENV, "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(
            f"model.inference_kernel=true needs a C++ compiler; {compiler!r} is not on PATH. "
            f"Install g++ (or set {COMPILER_ENV}), or set model.inference_kernel=false."
        )
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    source = SOURCE.read_bytes()
    build_key = "\n".join([" ".join(FLAGS), version, cpu_signature()]).encode()
    digest = hashlib.sha256(source + build_key).hexdigest()
    library = cache_dir() / f"abs_kernel_{digest[:16]}.so"
    if not library.is_file():
        library.parent.mkdir(parents=True, exist_ok=True)
        partial = library.with_suffix(f".{os.getpid()}.tmp")
        build = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", str(partial)], capture_output=True, text=True
        )
        if build.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE} failed:\n{build.stderr[-3000:]}")
        partial.replace(library)  # atomic: concurrent processes never load half a file
    kernel = ctypes.CDLL(str(library))
    kernel.abs_optimise_latents.restype = None
    kernel.abs_latent_gradients.restype = None
    return kernel


def kernel_weights(decoder: FoldedDecoder) -> dict[str, torch.Tensor]:
    """The folded decoder's tensors in the kernel's layouts (abs_kernel.cpp, `Decoder`): per
    class, channels last, taps first; contiguous float32."""
    (w1, b1, _), (w2, b2, _), (w3, b3, _) = decoder.convs
    side = decoder.first_side
    width = decoder.first_matrix.shape[1] // N_CLASSES  # 32 channels x 4 x 4 per class
    blocks = torch.stack(
        [
            decoder.first_matrix[c * LATENT_DIM : (c + 1) * LATENT_DIM, c * width : (c + 1) * width]
            for c in range(N_CLASSES)
        ]
    )  # (10, 8, 32 * 4 * 4), channel-major
    grouped1 = w1.view(N_CLASSES, -1, *w1.shape[1:])  # (10, 32, 16, 5, 5)
    grouped2 = w2.view(N_CLASSES, -1, *w2.shape[1:])  # (10, 16, 16, 5, 5)
    parts = {
        "dense": blocks.view(N_CLASSES, LATENT_DIM, -1, side, side).permute(0, 1, 3, 4, 2),
        "dense_bias": decoder.first_bias.view(N_CLASSES, -1, side, side).permute(0, 2, 3, 1),
        "w1": grouped1.permute(0, 3, 4, 1, 2),
        "w1_adj": grouped1.permute(0, 3, 4, 2, 1),
        "b1": b1,
        "w2": grouped2.permute(0, 3, 4, 1, 2),
        "w2_adj": grouped2.permute(0, 3, 4, 2, 1),
        "b2": b2,
        "w3": w3.view(N_CLASSES, -1, *w3.shape[2:]).permute(0, 2, 3, 1),
        "b3": b3,
    }
    return {name: t.detach().contiguous() for name, t in parts.items()}


def pointers(*tensors: torch.Tensor) -> list[ctypes.c_void_p]:
    """The tensors' data as C pointers, for the kernel's arguments."""
    return [ctypes.c_void_p(t.data_ptr()) for t in tensors]


class KernelOptimiser:
    """`optimise_latents` with the Adam steps in abs_kernel.cpp; x (B, 1, 28, 28) float32 on
    the CPU -> z* (B, 10, 8). Build a new one whenever the decoder or the bank change.

    The first step's gradient is checked for components near zero, and an image with one is
    given its first gradient from `exact_decoder`, the decoders folded in float64
    (`SMALL_GRADIENT`); steps 2 on run in the kernel.
    """

    def __init__(
        self,
        decoder: FoldedDecoder,
        bank: LatentBank,
        settings: InferenceSettings,
        exact_decoder: FoldedDecoder,
    ):
        self.kernel = load_kernel()
        self.bank, self.settings = bank, settings
        self.weights = kernel_weights(decoder)
        self.exact_decoder = exact_decoder
        step_sizes, second_scales = adam_schedule(settings)
        self.later_steps = step_sizes[1:].contiguous(), second_scales[1:].contiguous()
        beta1, beta2 = ADAM_BETAS
        self.adam = (beta1, 1 - beta1, beta2, 1 - beta2, ADAM_EPS)

    def _gradients(self, x: torch.Tensor, z: torch.Tensor, grad: torch.Tensor) -> None:
        """The bound's gradient at z (B, 10, 8) for x (B, 784), into grad (B, 10, 8)."""
        self._split(
            len(x),
            lambda begin, end: self.kernel.abs_latent_gradients(
                *pointers(x, z, grad),
                ctypes.c_int64(begin),
                ctypes.c_int64(end),
                *pointers(*self.weights.values()),
                ctypes.c_float(self.settings.beta),
            ),
        )

    def _later_steps(
        self, x: torch.Tensor, z: torch.Tensor, first: torch.Tensor, second: torch.Tensor
    ) -> None:
        """Adam steps 2.. from z and the moments (B, 10, 8), all three updated in place."""
        s = self.settings
        self._split(
            len(x),
            lambda begin, end: self.kernel.abs_optimise_latents(
                *pointers(x, z, first, second),
                ctypes.c_int64(begin),
                ctypes.c_int64(end),
                *pointers(*self.weights.values()),
                ctypes.c_int(s.adam_steps - 1),
                *pointers(*self.later_steps),
                *(ctypes.c_float(v) for v in (*self.adam, s.beta, s.clip)),
                ctypes.c_int(s.clip_mode == "authors"),
            ),
        )

    @staticmethod
    def _split(images: int, run: Callable[[int, int], None]) -> None:
        """run(begin, end) on contiguous ranges of the images' (image, class) units, one range
        per thread; the kernel's calls release the GIL, so the threads run side by side."""
        units = images * N_CLASSES
        threads = max(1, min(torch.get_num_threads(), units))
        bounds = [units * i // threads for i in range(threads + 1)]
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, bounds[:-1], bounds[1:]))

    def _float64_where_small(
        self, grad: torch.Tensor, z: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """grad (B, 10, 8), with the images that have a component below SMALL_GRADIENT
        recomputed in float64, one image at a time (so that its result never depends on the
        batch)."""
        small = (grad.abs() < SMALL_GRADIENT).flatten(1).any(1).nonzero().flatten().tolist()
        for i in small:
            grad[i] = latent_loss_gradient(
                self.exact_decoder,
                z[i : i + 1].double(),
                target[i : i + 1].double(),
                self.settings.beta,
            )[0].float()
        return grad

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise ValueError(f"the ABS kernel takes float32 CPU images, not {x.dtype}, {x.device}.")
        z, target, first, second = adam_start(self.bank, x, self.settings.beta)
        z = z.contiguous()
        flat = target.reshape(len(x), -1).contiguous()
        grad = torch.empty_like(z)
        self._gradients(flat, z, grad)
        grad = self._float64_where_small(grad, z, target)
        z = adam_step(z, grad, first, second, 1, self.settings).contiguous()
        self._later_steps(flat, z, first, second)
        return z
