"""Encode tiles as WebDataset samples: `.npy` payloads and JSON metadata wrapped in POSIX ustar tar members.

Ingest writes thousands of small members per second, so headers are built from a fixed template instead of
`tarfile.TarInfo` (which costs more per tile than normalizing it). The bytes are exactly what `tarfile` would
write for the same name, size, mode 0644, owner 0/0 and mtime 0; the tests read them back with `tarfile` and
`webdataset`.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np

BLOCK = 512
_MAX_NAME = 100


def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode() + b"\0"


def _header_template() -> bytearray:
    header = bytearray(BLOCK)
    header[100:108] = _octal(0o644, 8)  # mode
    header[108:116] = _octal(0, 8)  # uid
    header[116:124] = _octal(0, 8)  # gid
    header[136:148] = _octal(0, 12)  # mtime
    header[156:157] = tarfile.REGTYPE
    header[257:265] = tarfile.POSIX_MAGIC  # "ustar\0" + version "00"
    return header


_TEMPLATE = _header_template()
# The checksum is the byte sum of the header with its own field as spaces; name and size are the only fields
# that vary, and they are zero in the template, so their byte sums simply add on.
_TEMPLATE_SUM = sum(_TEMPLATE) + 8 * ord(" ")


def tar_member(name: str, payload: bytes) -> bytes:
    """One regular-file tar member: header block, payload, zero padding to a whole block."""
    encoded = name.encode()
    if len(encoded) > _MAX_NAME or "/" in name:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(payload), 0o644, 0
        header = info.tobuf(format=tarfile.PAX_FORMAT)  # a pax extended header carries the long name
    else:
        size_field = _octal(len(payload), 12)
        block = bytearray(_TEMPLATE)
        block[0 : len(encoded)] = encoded
        block[124:136] = size_field
        block[148:156] = f"{_TEMPLATE_SUM + sum(encoded) + sum(size_field):06o}".encode() + b"\0 "
        header = bytes(block)
    padding = b"\0" * (-len(payload) % BLOCK)
    return header + payload + padding


def end_of_archive(size_so_far: int) -> bytes:
    """Two zero blocks, then zeros up to tarfile's 10 KiB record size, as `tarfile` closes an archive."""
    tail = 2 * BLOCK
    return b"\0" * (tail + (-(size_so_far + tail) % tarfile.RECORDSIZE))


class NpyEncoder:
    """`.npy` bytes for many arrays of one dtype and shape: the header is built once."""

    def __init__(self, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        )
        self.header = buffer.getvalue()
        self.dtype, self.shape = np.dtype(dtype), shape

    def encode(self, array: np.ndarray) -> bytes:
        if array.dtype != self.dtype or array.shape != self.shape:
            raise ValueError(f"expected {self.dtype} {self.shape}, got {array.dtype} {array.shape}")
        return self.header + np.ascontiguousarray(array).tobytes()


def encode_sample(key: str, members: dict[str, bytes]) -> bytes:
    """All members of one sample (`<key>.<suffix>`), in the given order."""
    return b"".join(tar_member(f"{key}.{suffix}", payload) for suffix, payload in members.items())
