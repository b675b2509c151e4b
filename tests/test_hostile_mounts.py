"""Issue 14, finding 11 through the CLI: a full disk (a small tmpfs) and a read-only file system (tmpfs
remounted read-only) under `train`, `plot`, `phases`, `sweep` and `plot-sweep`.

Each command ends in one line naming the path and the OS reason with exit code 4 (the machine refused;
bad input is 2), and a run that fails on a full disk never keeps "status": "running". Needs root and the
right to mount: skipped with the mount error as the reason where that is not allowed. Every mount is
unmounted in teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from test_hostile import S, SWEEP, call, one_line, snapshot, tiny_run, tiny_sweep  # noqa: F401 (fixtures)

pytestmark = pytest.mark.user_defaults


def _mount(*args: str) -> None:
    try:
        done = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot run mount here: {e}")
    if done.returncode != 0:
        pytest.skip(f"mount {' '.join(args[:-1])} is not allowed here: {done.stderr.strip()[:160]}")


@pytest.fixture
def mounted(tmp_path):
    """mounted(size) -> a fresh tmpfs of that size under tmp_path; all are unmounted at teardown."""
    points: list[Path] = []

    def make(size: str) -> Path:
        where = tmp_path / f"mnt{len(points)}"
        where.mkdir()
        _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where))
        points.append(where)
        return where

    try:
        yield make
    finally:
        for where in reversed(points):
            if subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def fill(where: Path, leave: int) -> Path:
    """A user's file taking all but ``leave`` bytes of the file system."""
    st = os.statvfs(where)
    filler = where / "users_data.bin"
    with open(filler, "wb") as f:
        f.write(b"u" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def status(run: Path) -> str | None:
    try:
        return json.loads((run / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize("free_kb", [0, 4, 8, 12, 24])
def test_f11_full_disk_train(mounted, free_kb):
    """train on a disk with 0 to 24 kB free fails at a different write each time: exit 4, one line naming the
    file and "No space left on device", never "running" left behind, the user's file untouched."""
    disk = mounted("256k")
    filler = fill(disk, free_kb * 1024)
    before = snapshot(filler)
    out = disk / "run"
    one_line(call(["train", "--quiet", *S, "--out", out]), 4, disk.name, "No space left on device")
    assert status(out) in (None, "failed"), (out / "summary.json").read_text()
    assert snapshot(filler) == before
    leftovers = [p.name for p in out.iterdir()] if out.is_dir() else []
    assert not [n for n in leftovers if n.endswith(".tmp")], leftovers


def test_f11_full_disk_sweep_plot_and_plot_sweep(mounted, tmp_path, tiny_run, tiny_sweep):
    """sweep, plot --out and plot-sweep --out on a full disk: exit 4 and one line each."""
    disk = mounted("256k")
    filler = fill(disk, 8 * 1024)
    before = snapshot(filler)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SWEEP))
    one_line(call(["sweep", tmp_path / "s.yaml", "--out", disk / "sw", "--workers", "1", "--quiet"]), 4,
             "No space left on device")
    one_line(call(["plot", tiny_run, "--out", disk / "figs"]), 4, "No space left on device")
    one_line(call(["plot-sweep", tiny_sweep, "--x", "data.dominant_prob", "--value", "final_loss", "--out",
                   disk / "x.png"]), 4, "x.png", "No space left on device")
    assert snapshot(filler) == before


@pytest.fixture
def read_only(mounted, tiny_run, tiny_sweep):
    """A read-only file system holding a finished run and a finished sweep."""
    disk = mounted("8m")
    shutil.copytree(tiny_run, disk / "run", ignore=shutil.ignore_patterns(".lock", "figures"))
    shutil.copytree(tiny_sweep, disk / "sw", ignore=shutil.ignore_patterns(".lock", "figures"))
    (disk / "empty").mkdir()
    _mount("-o", "remount,ro", str(disk))
    return disk


RO = "Read-only file system"


def test_f11_read_only_train_phases_sweep_plot_sweep(read_only, tmp_path, tiny_run):
    """train (new --out, --overwrite, --resume), phases, sweep (new and resumed) and plot-sweep (default and
    --out) on a read-only file system: exit 4 and one line naming the path and the reason."""
    before = snapshot(read_only)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SWEEP))
    spec = tmp_path / "s.yaml"
    cases = [
        ["train", "--quiet", *S, "--out", read_only / "new"],
        ["train", "--quiet", *S, "--out", read_only / "run", "--overwrite"],
        ["train", "--quiet", *S, "--out", read_only / "empty"],
        ["train", "--resume", read_only / "run"],
        ["phases", read_only / "run"],
        ["sweep", spec, "--out", read_only / "sw", "--workers", "1", "--quiet"],
        ["sweep", spec, "--out", read_only / "sw2", "--workers", "1", "--quiet"],
        ["plot-sweep", read_only / "sw", "--x", "data.dominant_prob", "--value", "final_loss"],
        ["plot-sweep", read_only / "sw", "--x", "data.dominant_prob", "--value", "final_loss", "--out",
         read_only / "x.png"],
    ]
    for argv in cases:
        one_line(call(argv), 4, read_only.name, RO)
    assert snapshot(read_only) == before


def test_f11_read_only_plot(read_only, tiny_run):
    """plot of a run on a read-only file system, and plot --out into one: exit 4, one line."""
    for argv in (["plot", read_only / "run"], ["plot", tiny_run, "--out", read_only / "figs"]):
        one_line(call(argv), 4, read_only.name, RO)
