"""Reading an .npz without trusting it: sizes are checked before a byte of array data is read.

``np.load`` believes the .npy header: a 100-byte file declaring shape (10**12,) asks for 8 TB, and a small
compressed member may inflate to gigabytes. :func:`load_npz_checked` reads each expected member's header
first, checks dtype kind, shape and total size against the caller's expectation and the member's declared
uncompressed size against the budget, and only then reads exactly the declared bytes.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from .errors import RunDirError
from .fsio import clip, file_kind, os_error

NPY_HEADER_MAX = 65_536  # bytes allowed for an .npy member's magic + header, on top of its data
_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what np.savez / savez_compressed write

Expect = dict[str, tuple[tuple[int | None, ...], str]]


class _Damaged(Exception):
    """Internal: what is wrong with the file, to become one RunDirError line."""


def load_npz_checked(path: str | os.PathLike[str], expect: Expect, *, max_bytes: int) -> dict[str, np.ndarray]:
    """The arrays named in ``expect`` from the .npz at ``path``.

    ``expect`` maps an array name to ``(shape, kinds)``: ``shape`` a tuple of exact ints or None (any
    length), ``kinds`` the accepted ``dtype.kind`` letters (e.g. ``"iuf"``). Before reading data, each
    member's .npy header is checked: no Python objects (pickles), dtype kind in ``kinds``, shape as
    expected, and the declared sizes of all expected arrays together at most ``max_bytes``; the zip
    member's declared uncompressed size must fit too (zip bombs). Other members are ignored.

    Raises :class:`RunDirError` ``'path' is damaged: ...`` (or ``does not exist``) in one line, and
    :class:`~icl_dynamics.errors.StorageError` when the OS refuses the read.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # O_NONBLOCK: a FIFO must not hang us
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise RunDirError(f"'{clip(p)}' does not exist") from None
        raise os_error(e, p, "read") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        os.close(fd)
        raise os_error(e, p, "read") from None
    if not stat.S_ISREG(mode):  # before fdopen, which refuses a folder with IsADirectoryError
        os.close(fd)
        raise RunDirError(f"'{clip(p)}' is damaged: it is a {file_kind(mode)}, not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            with zipfile.ZipFile(f) as zf:
                return _read_all(zf, expect, max_bytes)
        except _Damaged as e:
            raise RunDirError(f"'{clip(p)}' is damaged: {e}") from None
        except OSError as e:
            raise os_error(e, p, "read") from None
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, TypeError, zlib.error,
                NotImplementedError, KeyError, RuntimeError) as e:  # numpy's header parser and zipfile raise
            # these on garbage; RuntimeError: a member flagged as encrypted
            raise RunDirError(f"'{clip(p)}' is damaged: {clip(e) or type(e).__name__}") from None


def _read_all(zf: zipfile.ZipFile, expect: Expect, max_bytes: int) -> dict[str, np.ndarray]:
    members = {info.filename: info for info in zf.infolist()}
    plans = []
    total = 0
    for key, (want, kinds) in expect.items():
        info = members.get(f"{key}.npy")
        if info is None:
            raise _Damaged(f"missing array '{clip(key)}'")
        if info.compress_type not in _COMPRESSIONS:
            raise _Damaged(f"array '{clip(key)}' uses an unsupported compression")
        if info.file_size > max_bytes + NPY_HEADER_MAX:
            raise _Damaged(f"array '{clip(key)}' declares {info.file_size} bytes uncompressed "
                           f"(limit {max_bytes})")
        with zf.open(info) as fh:
            shape, fortran, dtype = _header(fh, key)
        _check(key, shape, dtype, want, kinds)
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow for absurd shapes
        total += nbytes
        if total > max_bytes:
            raise _Damaged(f"array '{clip(key)}' declares shape {shape} of {dtype.str}: the arrays would take "
                           f"{total} bytes (limit {max_bytes})")
        if nbytes > info.file_size:
            raise _Damaged(f"array '{clip(key)}' is truncated")
        plans.append((key, info, shape, fortran, dtype, nbytes))
    out = {}
    for key, info, shape, fortran, dtype, nbytes in plans:
        with zf.open(info) as fh:
            _header(fh, key)
            out[key] = _data(fh, key, shape, fortran, dtype, nbytes)
    return out


def _header(fh: IO[bytes], key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise _Damaged(f"array '{clip(key)}' has unsupported .npy version {version}")
    return shape, fortran, dtype


def _check(key: str, shape: tuple[int, ...], dtype: np.dtype, want: tuple[int | None, ...], kinds: str) -> None:
    if dtype.hasobject:
        raise _Damaged(f"array '{clip(key)}' holds Python objects (pickle); refused")
    if dtype.kind not in kinds:
        raise _Damaged(f"array '{clip(key)}' has dtype {dtype.str}, expected kind {kinds!r}")
    shown = tuple("any" if w is None else w for w in want)
    if len(shape) != len(want) or any(n < 0 or (w is not None and n != w) for n, w in zip(shape, want)):
        raise _Damaged(f"array '{clip(key)}' has shape {clip(shape)}, expected {shown}")


def _data(fh: IO[bytes], key: str, shape: tuple[int, ...], fortran: bool, dtype: np.dtype,
          nbytes: int) -> np.ndarray:
    buf = bytearray(nbytes)  # the size was checked against max_bytes; a bytearray keeps the array writable
    view = memoryview(buf)
    got = 0
    while got < nbytes:
        n = fh.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            raise _Damaged(f"array '{clip(key)}' is truncated")
        got += n
    if nbytes == 0:
        return np.zeros(shape, dtype=dtype)
    arr = np.frombuffer(buf, dtype=dtype)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
