"""Hostile file systems for the writers (issue 14): devices, symlinks, full and read-only disks, two writers
on one folder. Ownership markers are tested in test_fsio_owned.py, the .npz reader in test_fsio_npz.py.

Each refusal is checked to be the right exception (RunDirError for a bad path, StorageError for an OS
refusal) with one line under 300 characters naming the path.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import one_line
from hypothesis import given, settings
from hypothesis import strategies as st

from icl_dynamics.errors import RunDirError, StorageError
from icl_dynamics.fsio import (LOCK_NAME, MAX_NAME, DirLock, atomic_write_bytes, clip, os_error, os_error_line,
                               safe_dir, sanitize_name)
from icl_dynamics.fsio_owned import prepare_owned_dir
from icl_dynamics.storage import atomic_write_text


def temps(folder: Path) -> list[str]:
    """Leftover temporaries of atomic_write_bytes in ``folder``."""
    return [n for n in os.listdir(folder) if re.fullmatch(r"\..+\.[0-9a-f]{12}\.tmp", n)]


# ---- messages ---------------------------------------------------------------------------------------

def test_os_error_line_and_class() -> None:
    """ENOSPC is the machine's fault (StorageError, exit 4); ENOTDIR is the path's (RunDirError, exit 2);
    control characters and long paths are escaped and clipped."""
    e = OSError(errno.ENOSPC, "x")
    assert os_error_line(e, "x/y", "write") == "cannot write 'x/y': No space left on device"
    assert isinstance(os_error(e, "x/y"), StorageError)
    assert isinstance(os_error(OSError(errno.ENOTDIR, "x"), "a/b"), RunDirError)
    shown = clip("a\nb\x1b" + "z" * 500)
    assert "\n" not in shown and "\\n" in shown and "\\x1b" in shown and len(shown) <= 80


# ---- atomic_write_bytes -----------------------------------------------------------------------------

def test_atomic_write_writes_with_umask_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    """The file gets the content and the mode of a plain open() (0666 less umask); no temporary remains."""
    target = tmp_path / "summary.json"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert temps(tmp_path) == []


def test_dev_null_target_is_refused_and_stays_a_device() -> None:
    """plot-sweep --out /dev/null replaced the device with a regular file: now refused, device intact."""
    with pytest.raises(RunDirError) as err:
        atomic_write_bytes("/dev/null", b"x")
    one_line(err, "'/dev/null'", "character device")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert temps(Path("/dev")) == []


@pytest.mark.parametrize("kind", ["fifo", "dir", "symlink"])
def test_non_regular_targets_are_refused(tmp_path: Path, kind: str) -> None:
    """A FIFO, a folder or a symlink at the target is never replaced; a symlink's target is untouched."""
    target = tmp_path / "out.png"
    outside = tmp_path / "outside.txt"
    outside.write_text("mine")
    {"fifo": lambda: os.mkfifo(target), "dir": target.mkdir, "symlink": lambda: target.symlink_to(outside)}[kind]()
    with pytest.raises(RunDirError) as err:
        atomic_write_bytes(target, b"x")
    one_line(err, "out.png", {"fifo": "FIFO", "dir": "directory", "symlink": "symlink"}[kind])
    assert outside.read_text() == "mine" and temps(tmp_path) == []


def test_symlinked_folder_is_refused_unless_the_user_named_the_file(tmp_path: Path) -> None:
    """A planted figures/ -> elsewhere was followed; a folder the user chose for --out fig.png may be one."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "figures").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunDirError) as err:
        atomic_write_bytes(tmp_path / "figures" / "a.png", b"x")
    one_line(err, "figures", "symlink")
    assert os.listdir(tmp_path / "elsewhere") == []
    atomic_write_bytes(tmp_path / "figures" / "a.png", b"x", user_path=True)
    assert (tmp_path / "elsewhere" / "a.png").read_bytes() == b"x"


def test_write_through_a_file_is_a_run_dir_error(tmp_path: Path) -> None:
    """A path through a file (afile/x.yaml) is bad input, exit 2, named in one line."""
    (tmp_path / "afile").write_text("")
    with pytest.raises(RunDirError) as err:
        atomic_write_bytes(tmp_path / "afile" / "x.yaml", b"x")
    one_line(err, "afile", "regular file, not a folder")


def _mount(where: Path, *options: str) -> None:
    try:
        done = subprocess.run(["mount", *options, str(where)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot run mount here: {e}")
    if done.returncode != 0:
        pytest.skip(f"mount {' '.join(options)} is not allowed here: {done.stderr.strip()[:120]}")


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A 64 KiB tmpfs (needs root and mount rights; skipped with the reason otherwise), unmounted after."""
    where = tmp_path / "mnt"
    where.mkdir()
    _mount(where, "-t", "tmpfs", "-o", "size=64k", "tmpfs")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def test_full_disk_is_a_storage_error_and_leaves_no_temp(tiny_tmpfs: Path) -> None:
    """No space left: StorageError (exit 4) naming the file and the OS reason; the temp file is removed."""
    with pytest.raises(StorageError) as err:
        atomic_write_bytes(tiny_tmpfs / "trajectory.npz", b"\0" * 300_000)
    one_line(err, "trajectory.npz", "No space left on device")
    assert temps(tiny_tmpfs) == [] and not (tiny_tmpfs / "trajectory.npz").exists()


def test_read_only_disk_is_a_storage_error(tiny_tmpfs: Path) -> None:
    """A read-only file system: writing, creating an output folder or marking one is a StorageError."""
    (tiny_tmpfs / "empty").mkdir()
    _mount(tiny_tmpfs, "-o", "remount,ro")
    with pytest.raises(StorageError) as err:
        atomic_write_bytes(tiny_tmpfs / "summary.json", b"{}")
    one_line(err, "summary.json", "Read-only file system")
    with pytest.raises(StorageError) as err:
        prepare_owned_dir(tiny_tmpfs / "run", "run", False, [])
    one_line(err, "run", "Read-only file system")
    with pytest.raises(StorageError) as err:
        prepare_owned_dir(tiny_tmpfs / "empty", "run", False, [])
    one_line(err, "empty", "Read-only file system")


# ---- safe_dir and sanitize_name ---------------------------------------------------------------------

def test_safe_dir_creates_real_folders_and_refuses_symlinks(tmp_path: Path) -> None:
    """figures/ planted as a symlink (or a symlink higher up, or a file) is refused by name; nothing is
    created on the other side."""
    assert safe_dir(tmp_path, "runs/abc") == tmp_path / "runs" / "abc" and (tmp_path / "runs" / "abc").is_dir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "figures").symlink_to(elsewhere)
    (tmp_path / "rows").symlink_to(elsewhere)
    (tmp_path / "afile").write_text("")
    for rel, name in (("figures", "figures"), ("rows/sub", "rows"), ("afile/x", "afile")):
        with pytest.raises(RunDirError) as err:
            safe_dir(tmp_path, rel)
        one_line(err, name, "symlink" if name != "afile" else "regular file")
    assert os.listdir(elsewhere) == []


def test_safe_dir_follows_a_symlinked_root(tmp_path: Path) -> None:
    """The root is the user's choice (--out may be a link); only folders below it must be real."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    safe_dir(tmp_path / "link", "figures")
    assert (tmp_path / "real" / "figures").is_dir()


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_sanitize_name_is_always_a_safe_file_name(text: str) -> None:
    """Column names become file names: only [A-Za-z0-9._-], no leading dot or dash, no '..', short, never
    empty; a changed name carries a hash so 'a/b' and 'a_b' do not collide."""
    name = sanitize_name(text)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", name) and not name.startswith((".", "-")) and ".." not in name
    assert 0 < len(name) <= MAX_NAME
    assert sanitize_name(text + "/") != name


def test_sanitize_name_keeps_safe_names() -> None:
    """A name that is already safe is unchanged; unsafe ones differ from each other."""
    assert sanitize_name("loss_feature-1.5") == "loss_feature-1.5"
    assert sanitize_name("a/b") != sanitize_name("a_b") and sanitize_name("..") not in ("", ".", "..")


# ---- DirLock ----------------------------------------------------------------------------------------

def test_second_lock_in_the_same_process_names_the_holder(tmp_path: Path) -> None:
    """Two writers on one --out both succeeded; the second now fails naming the first's pid; after release
    the lock can be taken again and no .lock is left."""
    with DirLock(tmp_path / "out"):
        with pytest.raises(RunDirError) as err:
            with DirLock(tmp_path / "out"):
                pass
        one_line(err, "out", f"in use by another icl-dynamics process (pid {os.getpid()})", "use another --out")
    with DirLock(tmp_path / "out"):
        assert (tmp_path / "out" / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_lock_file_planted_as_symlink_is_refused(tmp_path: Path) -> None:
    """The lock is opened without following links: a planted .lock symlink cannot redirect the pid write."""
    (tmp_path / "target").write_text("keep")
    (tmp_path / LOCK_NAME).symlink_to(tmp_path / "target")
    with pytest.raises(RunDirError) as err:
        with DirLock(tmp_path):
            pass
    one_line(err, LOCK_NAME, "symlink")
    assert (tmp_path / "target").read_text() == "keep"


HOLDER = "import sys, time\nfrom icl_dynamics.fsio import DirLock\nwith DirLock(sys.argv[1]):\n    time.sleep(120)\n"


@pytest.fixture
def holder(tmp_path: Path):
    """A second process holding DirLock on tmp_path/out (started, waited for, and killed after)."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if (out / LOCK_NAME).read_text().strip() == str(proc.pid):
                    break
            except OSError:
                pass
            time.sleep(0.05)
        assert proc.poll() is None, "the holder process died before taking the lock"
        yield out, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def test_lock_held_by_another_process_names_its_pid(holder: tuple[Path, subprocess.Popen[bytes]]) -> None:
    """The second writer on one --out is another process: refused, naming that process's pid."""
    out, proc = holder
    with pytest.raises(RunDirError) as err:
        with DirLock(out):
            pass
    one_line(err, f"(pid {proc.pid})")


def test_sigkilled_holder_releases_the_lock(holder: tuple[Path, subprocess.Popen[bytes]]) -> None:
    """kill -9 leaves a stale .lock with a dead pid; the kernel dropped the flock, so it blocks nobody."""
    out, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert (out / LOCK_NAME).read_text().strip() == str(proc.pid), "the stale file should still be there"
    with DirLock(out):
        assert (out / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o640
