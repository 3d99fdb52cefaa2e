"""IDX parsing, MNIST verification and download, and the datamodule's splits."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch

from abslab.data.idx import DataFileError, parse_idx, read_idx
from abslab.data.mnist import MNIST_FILES, MNISTDataModule, download_mnist, load_mnist
from conftest import MNIST_ROOT


def test_idx_known_values(mnist_arrays):
    assert mnist_arrays["train_labels"][:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist_arrays["test_labels"][:5].tolist() == [7, 2, 1, 0, 4]
    assert mnist_arrays["train_images"].shape == (60000, 28, 28)
    assert mnist_arrays["test_images"].shape == (10000, 28, 28)
    assert mnist_arrays["train_images"].dtype == np.uint8
    assert np.bincount(mnist_arrays["test_labels"]).tolist()[:3] == [980, 1135, 1032]
    assert (
        mnist_arrays["train_images"][0].max() == 255 and mnist_arrays["train_images"][0, 0, 0] == 0
    )


def test_raw_and_gzip_read_the_same(tmp_path):
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    raw.write_bytes(gzip.decompress((MNIST_ROOT / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    assert np.array_equal(read_idx(raw), read_idx(MNIST_ROOT / "t10k-labels-idx1-ubyte.gz"))


def test_idx_rejects_bad_magic_and_truncation():
    header = bytes([0, 0, 0x08, 1]) + (4).to_bytes(4, "big")
    assert parse_idx(header + b"\x01\x02\x03\x04").tolist() == [1, 2, 3, 4]
    with pytest.raises(DataFileError, match="truncated"):
        parse_idx(header + b"\x01\x02")
    with pytest.raises(DataFileError, match="magic"):
        parse_idx(b"PK\x03\x04" + b"\x00" * 8)


def _copy_mnist(target):
    target.mkdir()
    for path in MNIST_ROOT.glob("*.gz"):
        shutil.copy(path, target / path.name)
    return target


def test_truncated_gzip_names_the_file(tmp_path):
    root = _copy_mnist(tmp_path / "mnist")
    victim = root / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(DataFileError, match=r"train-labels-idx1-ubyte\.gz.*Delete it"):
        load_mnist(root)


def test_corrupt_content_fails_the_checksum(tmp_path):
    root = _copy_mnist(tmp_path / "mnist")
    victim = root / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(victim.read_bytes()))
    content[100] = (content[100] + 1) % 10  # label 92: a valid digit, but the wrong one
    victim.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataFileError, match="t10k-labels-idx1-ubyte.*md5"):
        load_mnist(root)
    # Without verification the file parses and serves the wrong label: what the check prevents.
    assert load_mnist(root, verify=False)["test_labels"][92] == content[100]


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DataFileError, match="data.download=true"):
        load_mnist(tmp_path)


def test_download_tries_mirrors_in_turn_and_verifies(tmp_path):
    good = _copy_mnist(tmp_path / "good")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not a gzip file")
    target = tmp_path / "data"
    download_mnist(target, mirrors=(bad.as_uri() + "/", good.as_uri() + "/"))
    assert sorted(p.name for p in target.iterdir()) == sorted(
        f"{f.name}.gz" for f in MNIST_FILES.values()
    )
    assert load_mnist(target)["train_labels"][:5].tolist() == [5, 0, 4, 1, 9]


def test_download_failure_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataFileError, match="Could not download train-images"):
        download_mnist(tmp_path / "data", mirrors=((tmp_path / "nowhere").as_uri() + "/",))


def test_datamodule_split_is_seeded_and_disjoint():
    dm = MNISTDataModule(root=str(MNIST_ROOT), download=False, val_size=5000, split_seed=3)
    dm.setup("fit")
    train_index = dm.train_set.tensors[2]
    val_index = dm.val_set.tensors[2]
    assert len(train_index) == 55000 and len(val_index) == 5000
    assert len(set(train_index.tolist()) & set(val_index.tolist())) == 0
    again = MNISTDataModule(root=str(MNIST_ROOT), download=False, val_size=5000, split_seed=3)
    again.setup("fit")
    assert torch.equal(again.val_set.tensors[2], val_index)
    x, y, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and y.dtype == torch.int64


def test_test_slice_and_offset(mnist_arrays):
    dm = MNISTDataModule(root=str(MNIST_ROOT), download=False, test_samples=100, test_offset=250)
    dm.setup("test")
    x, y, index = dm.test_set.tensors
    assert index.tolist() == list(range(250, 350))
    assert torch.equal(y, torch.from_numpy(mnist_arrays["test_labels"][250:350].astype(np.int64)))
    expected = torch.from_numpy(mnist_arrays["test_images"][250].astype(np.float32) / 255)
    assert torch.equal(x[0, 0], expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "data.batch_size=0"),
        ({"test_offset": 10000}, "data.test_offset"),
        ({"test_samples": 0}, "data.test_samples"),
        ({"val_size": 60000}, "data.val_size"),
        ({"test_offset": 9990, "test_samples": 20}, "test_offset=9990 .* passes the 10,000"),
    ],
)
def test_datamodule_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MNISTDataModule(root=str(MNIST_ROOT), **kwargs)
