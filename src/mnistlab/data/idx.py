"""Read and write the IDX format of the MNIST files (big-endian header, then raw uint8 data)."""

import math
import struct
from pathlib import Path

import numpy as np

from mnistlab.lab import UserError

_UINT8 = 0x08


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes of a uint8 array: magic (0, 0, dtype, ndim), one big-endian uint32 per dim."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, _UINT8, array.ndim, *array.shape)
    return header + array.tobytes()


def decode_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """The uint8 array held in IDX bytes; `source` names the file in errors."""
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != _UINT8:
        raise UserError(f"{source}: not an uint8 IDX file (bad magic number)")
    ndim = data[3]
    start = 4 + 4 * ndim
    if len(data) < start:
        raise UserError(f"{source}: IDX header cut short ({len(data)} bytes for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:start])
    if len(data) - start != math.prod(shape):  # Python ints: a huge declared size cannot wrap
        raise UserError(
            f"{source}: IDX header says {shape} but holds {len(data) - start} bytes of data"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=start).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    return decode_idx(Path(path).read_bytes(), str(path))
