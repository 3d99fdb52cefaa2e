"""ABS's latent optimisation as a hand-written CPU kernel (abs_kernel.cpp), loaded with ctypes.

The kernel runs every Adam step of one (image, class) pair with its activations in cache and
16-channel vectors; threads split the pairs. It computes `optimise_latents` in another float
order (its own exp): logits agree to a few 1e-6 relative, not bit for bit (docs/abs_kernel.md,
where one image of 1,000 differs by 1.3e-5 and why). It is
compiled on first use with the system's C++ compiler for the CPU it runs on (about 2 s) and
cached by a hash of source, flags, compiler and CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
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
)
from abslab.models.vae import LATENT_DIM, N_CLASSES

SOURCE = Path(__file__).with_name("abs_kernel.cpp")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")
COMPILER_ENV = "CXX"  # the compiler to use; default g++


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


class KernelOptimiser:
    """`optimise_latents` with the Adam steps in abs_kernel.cpp; x (B, 1, 28, 28) float32 on
    the CPU -> z* (B, 10, 8). Build a new one whenever the decoder or the bank change."""

    def __init__(self, decoder: FoldedDecoder, bank: LatentBank, settings: InferenceSettings):
        self.kernel = load_kernel()
        self.bank, self.settings = bank, settings
        self.weights = kernel_weights(decoder)
        beta1, beta2 = ADAM_BETAS
        self.step_sizes, self.second_scales = adam_schedule(settings)
        self.adam = (beta1, 1 - beta1, beta2, 1 - beta2, ADAM_EPS)

    def _run(self, x: torch.Tensor, z: torch.Tensor, begin: int, end: int) -> None:
        """Units [begin, end) of x (B, 784) and z (B, 10, 8), z updated in place; the call
        releases the GIL, so threads run side by side."""
        s = self.settings
        pointer = ctypes.c_void_p
        self.kernel.abs_optimise_latents(
            pointer(x.data_ptr()),
            pointer(z.data_ptr()),
            ctypes.c_int64(begin),
            ctypes.c_int64(end),
            *(pointer(t.data_ptr()) for t in self.weights.values()),
            ctypes.c_int(s.adam_steps),
            pointer(self.step_sizes.data_ptr()),
            pointer(self.second_scales.data_ptr()),
            *(ctypes.c_float(v) for v in (*self.adam, s.beta, s.clip)),
            ctypes.c_int(s.clip_mode == "authors"),
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise ValueError(f"the ABS kernel takes float32 CPU images, not {x.dtype}, {x.device}.")
        z, target, _, _ = adam_start(self.bank, x, self.settings.beta)
        z = z.contiguous()
        flat = target.reshape(len(x), -1).contiguous()
        units = z.shape[0] * z.shape[1]
        threads = max(1, min(torch.get_num_threads(), units))
        bounds = [units * i // threads for i in range(threads + 1)]
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(self._run, [flat] * threads, [z] * threads, bounds[:-1], bounds[1:]))
        return z
