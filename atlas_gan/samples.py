"""Encode tiles as WebDataset samples: `.npy` payloads and JSON metadata wrapped in POSIX ustar tar members.

Ingest writes thousands of small members per second, so headers are built from a fixed template instead of
`tarfile.TarInfo` (which costs more per tile than normalizing it). The bytes are exactly what `tarfile` would
write for the same name, size, mode 0644, owner 0/0 and mtime 0; the tests read them back with `tarfile` and
`webdataset`.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from functools import lru_cache
from typing import BinaryIO

import numpy as np

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
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


_TEMPLATE = bytes(_header_template())
# The checksum is the byte sum of the header with its own field as spaces; name and size are the only fields
# that vary, and they are zero in the template, so their byte sums simply add on.
_TEMPLATE_SUM = sum(_TEMPLATE) + 8 * ord(" ")
_AFTER_CHECKSUM = _TEMPLATE[156:]


@lru_cache(maxsize=1024)
def _middle(size: int) -> tuple[bytes, int]:
    """Header bytes 100-147 (mode to mtime) for a payload of `size` bytes, and the checksum without the name."""
    size_field = _octal(size, 12)
    return _TEMPLATE[100:124] + size_field + _TEMPLATE[136:148], _TEMPLATE_SUM + sum(size_field)


def _is_short(name: str, encoded: bytes) -> bool:
    """Whether the name fits the ustar header itself (else a pax extended header carries it)."""
    return len(encoded) <= _MAX_NAME and "/" not in name


def _header(name: str, size: int) -> bytes:
    """The header block(s) of a regular-file member `name` of `size` bytes."""
    encoded = name.encode()
    if not _is_short(name, encoded):
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        return info.tobuf(format=tarfile.PAX_FORMAT)
    middle, checksum = _middle(size)
    checksum_field = f"{checksum + sum(encoded):06o}".encode() + b"\0 "
    return b"".join((encoded.ljust(_MAX_NAME, b"\0"), middle, checksum_field, _AFTER_CHECKSUM))


def member_parts(name: str, payload: bytes | memoryview) -> tuple[bytes, bytes | memoryview, bytes]:
    """One regular-file tar member as (header block, payload, zero padding to a whole block): joined once by the
    caller, so the payload is copied once."""
    size = len(payload)
    return _header(name, size), payload, _ZERO_BLOCK[: -size % BLOCK]


def member_size(name: str, size: int) -> int:
    """Bytes `member_parts` makes of a member `name` with a `size`-byte payload, without building it."""
    header = BLOCK if _is_short(name, name.encode()) else len(_header(name, size))
    return header + size + (-size % BLOCK)


def tar_member(name: str, payload: bytes | memoryview) -> bytes:
    """One regular-file tar member: header block, payload, zero padding to a whole block."""
    return b"".join(member_parts(name, payload))


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
        self.encoded_size = len(self.header) + int(np.prod(shape)) * self.dtype.itemsize  # bytes of every encoding

    def encode(self, array: np.ndarray) -> bytes:
        if array.dtype != self.dtype or array.shape != self.shape:
            raise ValueError(f"expected {self.dtype} {self.shape}, got {array.dtype} {array.shape}")
        return self.header + memoryview(np.ascontiguousarray(array)).cast("B")  # one copy, not tobytes' two


def encode_sample(key: str, members: dict[str, bytes | memoryview]) -> bytes:
    """All members of one sample (`<key>.<suffix>`), in the given order."""
    return b"".join([part for suffix, payload in members.items() for part in member_parts(f"{key}.{suffix}", payload)])


class TarFormatError(ValueError):
    """A shard that is not a whole, well-formed tar archive."""


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    while len(data) < size:  # network streams may return less than asked
        more = stream.read(size - len(data))
        if not more:
            break
        data += more
    return data


def _field(header: bytes, start: int, end: int) -> bytes:
    return header[start:end].split(b"\0", 1)[0]


def _pax_path(payload: bytes) -> str | None:
    """The `path` record of a pax extended header ("<len> path=<name>\\n" records)."""
    for record in payload.decode("utf-8", "replace").splitlines():
        _, _, assignment = record.partition(" ")
        key, _, value = assignment.partition("=")
        if key == "path":
            return value
    return None


def read_members(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, payload) of each regular file in a tar stream, in order, parsing the headers directly: the trainer's
    hot loop, several times faster than `tarfile` on thousands of small members. ustar headers as ingest writes them
    and pax long names are read; other member types are skipped. Raises TarFormatError on a bad checksum or a
    truncated archive."""
    long_name: str | None = None
    while True:
        header = _read_exact(stream, BLOCK)
        if not header or header == _ZERO_BLOCK:
            return
        if len(header) < BLOCK:
            raise TarFormatError("truncated: the archive ends inside a member header")
        stored = int(_field(header, 148, 156).strip() or b"0", 8)
        if stored != sum(header[:148]) + 8 * ord(" ") + sum(header[156:]):
            raise TarFormatError("a member header fails its checksum (corrupt or not a tar archive)")
        size = int(_field(header, 124, 136).strip() or b"0", 8)
        padded = size + (-size % BLOCK)
        data = _read_exact(stream, padded)
        if len(data) < padded:
            raise TarFormatError(f"truncated: a {size}-byte member is cut short")
        kind = header[156:157]
        if kind == b"x":
            long_name = _pax_path(data[:size])
            continue
        if kind not in (b"0", b"\0"):
            long_name = None
            continue
        name = long_name or _ustar_name(header)
        long_name = None
        yield name, data[:size]


def _ustar_name(header: bytes) -> str:
    name = _field(header, 0, 100).decode()
    prefix = _field(header, 345, 500).decode() if header[257:262] == b"ustar" else ""
    return f"{prefix}/{name}" if prefix else name


class NpyDecoder:
    """`.npy` bytes -> array without copying, parsing each distinct header once (a shard's tiles share one)."""

    def __init__(self) -> None:
        self._headers: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}

    def decode(self, payload: bytes) -> np.ndarray:
        if payload[6:8] != b"\x01\x00":  # only version 1.0 headers have the 2-byte length read below
            return np.load(io.BytesIO(payload))
        end = 10 + int.from_bytes(payload[8:10], "little")
        known = self._headers.get(payload[:end])
        if known is None:
            stream = io.BytesIO(payload[:end])
            np.lib.format.read_magic(stream)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
            if fortran or dtype.hasobject:
                return np.load(io.BytesIO(payload))
            known = self._headers[payload[:end]] = (dtype, shape, end)
        dtype, shape, offset = known
        return np.frombuffer(payload, dtype=dtype, offset=offset).reshape(shape)
