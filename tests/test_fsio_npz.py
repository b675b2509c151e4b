"""load_npz_checked (issue 14): an .npy header declaring shape (10**12,) gave MemoryError and a 12 MB .npz
inflating to 12 GB was read into memory. Sizes are now checked from headers before any data is read.
"""

from __future__ import annotations

import io
import os
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers import one_line

from icl_dynamics.errors import RunDirError
from icl_dynamics.fsio_npz import load_npz_checked


EXPECT = {"steps": ((None,), "iu"), "scores": ((None, 3), "f")}


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_round_trip_and_unknown_members_ignored(tmp_path: Path) -> None:
    """A good file loads exactly (C and Fortran order, compressed too); members not asked for are ignored."""
    scores = np.asfortranarray(np.arange(12.0).reshape(4, 3))
    for save in (np.savez, np.savez_compressed):
        save(tmp_path / "t.npz", steps=np.arange(4), scores=scores, extra=np.zeros(2))
        got = load_npz_checked(tmp_path / "t.npz", EXPECT, max_bytes=10_000)
        assert set(got) == {"steps", "scores"}
        assert np.array_equal(got["steps"], np.arange(4)) and np.array_equal(got["scores"], scores)
        got["scores"][0, 0] = 1.0  # writable, like np.load's arrays


def _forged_header_npz(path: Path, shape: tuple[int, ...]) -> Path:
    """An .npz whose steps.npy header declares ``shape`` of float64 but holds only 64 bytes of data."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("steps.npy", head.getvalue() + b"\0" * 64)
    return path


def test_npy_header_declaring_a_terabyte_is_refused_without_allocating(tmp_path: Path) -> None:
    """A header declaring shape (10**12,) gave MemoryError: refused from the header alone, fast, no memory."""
    p = _forged_header_npz(tmp_path / "t.npz", (10**12,))
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(RunDirError) as err:
            load_npz_checked(p, {"steps": ((None,), "f")}, max_bytes=10**8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line(err, "t.npz", "is damaged", "steps", "8000000000000 bytes")
    assert peak < 5_000_000 and time.monotonic() - t0 < 2.0


def test_zip_member_declaring_a_huge_size_is_refused(tmp_path: Path) -> None:
    """A small compressed member that inflates to gigabytes is refused by its declared uncompressed size."""
    p = _npz(tmp_path / "t.npz", steps=np.arange(4))
    raw = bytearray(p.read_bytes())
    central = raw.index(b"PK\x01\x02")
    raw[central + 24:central + 28] = (0xFFFFFFF0).to_bytes(4, "little")  # central directory: uncompressed size
    p.write_bytes(bytes(raw))
    with pytest.raises(RunDirError) as err:
        load_npz_checked(p, {"steps": ((None,), "i")}, max_bytes=1_000_000)
    one_line(err, "t.npz", "steps", "4294967280 bytes uncompressed")
    np.savez_compressed(p, steps=np.zeros(2_000_000))  # a real 16 MB member in a file of about 16 kB
    with pytest.raises(RunDirError) as err:
        load_npz_checked(p, {"steps": ((None,), "f")}, max_bytes=1_000_000)
    one_line(err, "steps", "uncompressed")


@pytest.mark.parametrize("arrays, expect, names", [
    ({"steps": np.array([{}], dtype=object)}, {"steps": ((None,), "O")}, ["Python objects"]),
    ({"steps": np.arange(3.0)}, {"steps": ((None,), "iu")}, ["steps", "dtype <f8"]),
    ({"steps": np.arange(3)}, {"steps": ((4,), "i")}, ["steps", "shape (3,)"]),
    ({"steps": np.arange(3)}, {"scores": ((None,), "f")}, ["missing array 'scores'"]),
])
def test_npz_bad_members_are_refused(tmp_path: Path, arrays: dict[str, np.ndarray],
                                     expect: dict[str, tuple[tuple[int | None, ...], str]], names: list[str]) -> None:
    """Pickles, wrong dtype kind, wrong shape and missing arrays: '... is damaged: <what>', before reading."""
    p = _npz(tmp_path / "t.npz", **arrays)
    with pytest.raises(RunDirError) as err:
        load_npz_checked(p, expect, max_bytes=10_000)
    one_line(err, "t.npz", "is damaged", *names)


def test_npz_not_a_zip_missing_or_fifo(tmp_path: Path) -> None:
    """Garbage, a missing file and a FIFO are one RunDirError line each, without blocking."""
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    os.mkfifo(tmp_path / "fifo.npz")
    for name, words in (("junk.npz", "is damaged"), ("nope.npz", "does not exist"),
                        ("fifo.npz", "not a regular file")):
        with pytest.raises(RunDirError) as err:
            load_npz_checked(tmp_path / name, EXPECT, max_bytes=10_000)
        one_line(err, name, words)


def test_npz_with_lying_sizes_is_damaged_not_a_crash(tmp_path: Path) -> None:
    """A member whose declared size is smaller than its header claims is truncated: one line."""
    p = _npz(tmp_path / "t.npz", steps=np.arange(100))
    raw = bytearray(p.read_bytes())
    central = raw.index(b"PK\x01\x02")
    raw[central + 24:central + 28] = (200).to_bytes(4, "little")
    p.write_bytes(bytes(raw))
    with pytest.raises(RunDirError) as err:
        load_npz_checked(p, {"steps": ((None,), "i")}, max_bytes=10_000)
    one_line(err, "t.npz", "is damaged")
