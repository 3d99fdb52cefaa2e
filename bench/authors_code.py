"""The authors' own ABS code (bethgelab/AnalysisBySynthesis), loaded from a clone, never copied.

Give the clone's path (`--authors-code DIR`; the `fetch` tool, or `git clone`, brings it). Their
models need scipy (their latent bank) and import torchvision, which is not installed here (no CPU
build): empty stand-in modules sit in sys.modules while their modules import (they use
torchvision only to download MNIST) and are removed after. Their `get_VAE` loads the published
weights from the clone's own `exp/VAE_swarm_MSE/nets/`, the same files as
../shared/data/reference_models/abs.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

STUBS = ("torchvision", "torchvision.datasets", "torchvision.transforms")


def missing_reason(code: str | Path | None) -> str | None:
    """Why the authors' code cannot be loaded from `code`, or None when it can."""
    if code is None:
        return "no --authors-code given"
    if not (Path(code) / "abs_models" / "models.py").is_file():
        return f"--authors-code {code} lacks abs_models/models.py: no AnalysisBySynthesis clone"
    try:
        import scipy  # noqa: F401  (their latent bank draws with scipy.stats)
    except ImportError:
        return "the authors' code needs scipy: pip install scipy"
    return None


def authors_modules(code: str | Path) -> tuple[Any, Any]:
    """Their `abs_models.models` and `abs_models.attack_utils`, imported from the clone."""
    reason = missing_reason(code)
    if reason is not None:
        raise FileNotFoundError(reason)
    for name in STUBS:
        sys.modules[name] = types.ModuleType(name)
    sys.modules["torchvision"].datasets = sys.modules["torchvision.datasets"]
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.path.insert(0, str(code))
    try:
        from abs_models import attack_utils, models
    finally:
        for name in STUBS:  # torchmetrics and others must not mistake the stub for torchvision
            del sys.modules[name]
    return models, attack_utils


def revision(code: str | Path) -> str:
    """The clone's commit (short hash), or "unknown" for an export without .git."""
    result = subprocess.run(
        ["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return result.stdout.strip() if result.returncode == 0 else "unknown"
