"""MNIST: locate, download, verify and serve the four IDX files as a LightningDataModule."""

from __future__ import annotations

import hashlib
import http.client
import logging
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from abslab.data.idx import DataFileError, parse_idx, read_bytes
from abslab.data.sampling import ClassBalancedSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MnistFile:
    name: str  # file name without .gz
    size: int  # decompressed bytes
    md5: str  # md5 of the decompressed bytes (mirrors and recompressed copies agree on it)


MNIST_FILES = {
    "train_images": MnistFile(
        "train-images-idx3-ubyte", 47040016, "6bbc9ace898e44ae57da46a324031adb"
    ),
    "train_labels": MnistFile("train-labels-idx1-ubyte", 60008, "a25bea736e30d166cdddb491f175f624"),
    "test_images": MnistFile("t10k-images-idx3-ubyte", 7840016, "2646ac647ad5339dbf082846283269ea"),
    "test_labels": MnistFile("t10k-labels-idx1-ubyte", 10008, "27ae3e4e09519cfbb04c329615203637"),
}

# Tried in turn; each serves the four gzip files under their canonical names.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def _find(root: Path, file: MnistFile) -> Path | None:
    for candidate in (root / f"{file.name}.gz", root / file.name):
        if candidate.exists():
            return candidate
    return None


def _checked_content(path: Path, file: MnistFile) -> bytes:
    """Decompressed bytes of `path`, after checking size and md5 against the canonical file."""
    content = read_bytes(path)
    digest = hashlib.md5(content).hexdigest()
    if len(content) != file.size or digest != file.md5:
        raise DataFileError(
            f"{path} does not match the canonical {file.name} (size {len(content)} vs "
            f"{file.size}, md5 {digest} vs {file.md5}): it is truncated "
            "or corrupt. Delete it and run with data.download=true to fetch it afresh, or copy "
            "a good one in its place."
        )
    return content


def download_mnist(root: str | Path, mirrors: tuple[str, ...] = MIRRORS) -> None:
    """Download the missing MNIST files into `root`, trying each mirror, verifying each file."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for file in MNIST_FILES.values():
        if _find(root, file) is not None:
            continue
        target = root / f"{file.name}.gz"
        errors = []
        for mirror in mirrors:
            url = f"{mirror}{file.name}.gz"
            partial = target.with_suffix(".gz.part")
            try:
                log.info("Downloading %s", url)
                with urllib.request.urlopen(url, timeout=30) as response:
                    partial.write_bytes(response.read())
                _checked_content(partial, file)
            except (OSError, http.client.HTTPException, DataFileError) as err:
                errors.append(f"{url}: {err}")
                partial.unlink(missing_ok=True)
                continue
            partial.rename(target)
            log.info("Saved and verified %s (md5 of content %s)", target, file.md5)
            break
        else:
            raise DataFileError(
                f"Could not download {file.name}.gz from any mirror:\n  "
                + "\n  ".join(errors)
                + f"\nCopy the four MNIST files into {root.resolve()} by hand, or point "
                "data.root at a folder that has them."
            )


def load_mnist(root: str | Path, verify: bool = True) -> dict[str, np.ndarray]:
    """The four MNIST arrays from `root`: images uint8 (N, 28, 28), labels uint8 (N,)."""
    root = Path(root)
    arrays = {}
    for key, file in MNIST_FILES.items():
        path = _find(root, file)
        if path is None:
            raise DataFileError(
                f"{root.resolve()} has no {file.name}(.gz). Set data.download=true to fetch "
                "MNIST, or point data.root at a folder with the four IDX files."
            )
        content = _checked_content(path, file) if verify else read_bytes(path)
        arrays[key] = parse_idx(content, path)
    return arrays


def _to_float_images(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1]."""
    return torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)


class MNISTDataModule(pl.LightningDataModule):
    """MNIST with a seeded train/validation split of the 60,000 and a test slice.

    Every batch is (x, y, index): x float32 (B, 1, 28, 28) in [0, 1], y int64 (B,), and the
    image's index in its source file (training or test set), so per-sample results can name it.
    """

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 500,
        val_size: int = 5000,
        split_seed: int = 0,
        train_samples: int | None = None,
        test_samples: int | None = None,
        test_offset: int = 0,
        num_workers: int = 0,
        download: bool = True,
        verify: bool = True,
        class_balanced: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"data.{name}={value}: it must be at least 1.")
        if not 0 <= val_size < 60000:
            raise ValueError(f"data.val_size={val_size}: it must be in [0, 60000).")
        if not 0 <= test_offset < 10000:
            raise ValueError(f"data.test_offset={test_offset}: it must be in [0, 10000).")
        if test_samples is not None and test_samples < 1:
            raise ValueError(f"data.test_samples={test_samples}: give a positive count or null.")
        if test_samples is not None and test_offset + test_samples > 10000:
            raise ValueError(
                f"data.test_offset={test_offset} + data.test_samples={test_samples} passes the "
                "10,000 test images; lower one of them."
            )
        if train_samples is not None and train_samples < 1:
            raise ValueError(f"data.train_samples={train_samples}: give a positive count or null.")
        self.root = Path(root)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.train_samples = train_samples
        self.test_samples = test_samples
        self.test_offset = test_offset
        self.num_workers = num_workers
        self.download = download
        self.verify = verify
        self.class_balanced = class_balanced
        self._arrays: dict[str, np.ndarray] | None = None
        self._skip_test_indices: frozenset[int] = frozenset()

    def skip_test_indices(self, indices: set[int]) -> None:
        """Leave these test-file indices out of the test slice from the next `setup` on (the
        Trainer calls it): the samples a resumed evaluation has already finished."""
        self._skip_test_indices = frozenset(indices)

    def prepare_data(self) -> None:
        if self.download:
            download_mnist(self.root)

    def _load(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = load_mnist(self.root, verify=self.verify)
        return self._arrays

    def setup(self, stage: str | None = None) -> None:
        arrays = self._load()
        generator = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(len(arrays["train_labels"]), generator=generator)
        val_idx, train_idx = order[: self.val_size], order[self.val_size :]
        if self.train_samples is not None:
            train_idx = train_idx[: self.train_samples]
        self.train_set = self._dataset(arrays["train_images"], arrays["train_labels"], train_idx)
        self.val_set = self._dataset(arrays["train_images"], arrays["train_labels"], val_idx)
        stop = len(arrays["test_labels"])
        if self.test_samples is not None:
            stop = self.test_offset + self.test_samples
        test_idx = torch.arange(self.test_offset, stop)
        if self._skip_test_indices:
            keep = [i not in self._skip_test_indices for i in test_idx.tolist()]
            test_idx = test_idx[torch.tensor(keep, dtype=torch.bool)]
        self.test_set = self._dataset(arrays["test_images"], arrays["test_labels"], test_idx)

    @staticmethod
    def _dataset(images: np.ndarray, labels: np.ndarray, index: torch.Tensor) -> TensorDataset:
        np_index = index.numpy()
        x = _to_float_images(images[np_index])
        y = torch.from_numpy(labels[np_index].astype(np.int64))
        return TensorDataset(x, y, index.clone())

    def test_images(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        """Test images (N, 1, 28, 28) in [0, 1] by their index in the test file."""
        return _to_float_images(self._load()["test_images"][np.asarray(indices, dtype=np.int64)])

    def reference_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All 60,000 training images (N, 1, 28, 28) in [0, 1] and labels (N,): the 1-NN memory."""
        arrays = self._load()
        labels = torch.from_numpy(arrays["train_labels"].astype(np.int64))
        return _to_float_images(arrays["train_images"]), labels

    def _loader(
        self,
        dataset: TensorDataset,
        batch_size: int,
        shuffle: bool,
        sampler: ClassBalancedSampler | None = None,
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        sampler = ClassBalancedSampler(self.train_set.tensors[1]) if self.class_balanced else None
        return self._loader(
            self.train_set, self.batch_size, shuffle=sampler is None, sampler=sampler
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)


def first_test_images(root: str | Path, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first n test images (n, 1, 28, 28) in [0, 1], their labels (n,) and indices (n,),
    read from `root` without downloading: what benches and results scripts measure on."""
    data = MNISTDataModule(root=root, download=False, test_samples=n)
    data.setup("test")
    x, y, index = data.test_set.tensors
    return x, y, index
