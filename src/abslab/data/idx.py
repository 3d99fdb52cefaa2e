"""Reading IDX files (the MNIST format), gzip-compressed or raw, with errors that name the file."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

# IDX type codes (third byte of the magic number) -> numpy dtype, big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DataFileError(RuntimeError):
    """A data file is missing, truncated or corrupt; the message names the file and the fix."""


def read_bytes(path: Path) -> bytes:
    """The decompressed content of `path` (gzip if it starts with the gzip magic, else raw)."""
    raw = Path(path).read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise DataFileError(
            f"{path} is not a valid gzip file ({err}); it is probably truncated or corrupt. "
            "Delete it and run with data.download=true to fetch it afresh, or copy a good one in "
            "its place."
        ) from err


def parse_idx(content: bytes, source: str | Path = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array of the shape its header declares."""
    if len(content) < 4 or content[0] != 0 or content[1] != 0 or content[2] not in _IDX_DTYPES:
        raise DataFileError(
            f"{source} does not start with an IDX magic number (got {content[:4]!r}); "
            "it is not an MNIST IDX file. Replace it with the original file."
        )
    dtype = _IDX_DTYPES[content[2]]
    ndim = content[3]
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DataFileError(f"{source} is truncated inside its IDX header. Replace the file.")
    shape = tuple(int(d) for d in np.frombuffer(content, ">u4", count=ndim, offset=4))
    expected = header_size + int(np.prod(shape)) * dtype.itemsize
    if len(content) != expected:
        raise DataFileError(
            f"{source} holds {len(content)} bytes but its IDX header (shape {shape}) needs "
            f"{expected}: the file is truncated or corrupt. Delete it and download it again."
        )
    data = np.frombuffer(content, dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip or raw) into a numpy array."""
    path = Path(path)
    return parse_idx(read_bytes(path), path)
