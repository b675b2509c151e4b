"""Ownership markers: ``--overwrite`` only ever removes what icl-dynamics itself wrote.

A folder the tool makes (a run, a sweep, a report, a figures folder) gets a small JSON file :data:`MARKER`
naming its kind. :func:`prepare_owned_dir` takes an output folder: it creates or adopts an empty one,
refuses a non-empty one without our marker even with ``--overwrite`` (it may be the user's), and on
``--overwrite`` deletes only the listed files of a marked one, never following a symlink.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
import shutil
import stat
from pathlib import Path

from .errors import RunDirError
from .fsio import LOCK_NAME, atomic_write_bytes, check_path, clip, file_kind, os_error, split_rel

MARKER = ".icl-dynamics"
KINDS = ("run", "sweep", "report", "figures")
_MARKER_MAX = 4096  # bytes read from a marker; ours is about 60
_TMP = re.compile(r"\.(.+)\.[0-9a-f]{12}\.tmp")  # atomic_write_bytes's temporaries: .NAME.<12 hex>.tmp
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)  # "not there, or not a real folder": nothing of ours


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}; expected one of {KINDS}")


def mark_owned(directory: str | os.PathLike[str], kind: str) -> None:
    """Write the marker saying icl-dynamics made ``directory`` as a ``kind`` (one of :data:`KINDS`)."""
    _check_kind(kind)
    body = json.dumps({"tool": "icl-dynamics", "kind": kind, "format": 1}) + "\n"
    atomic_write_bytes(Path(directory) / MARKER, body.encode())


def _marker_at(dir_fd: int, shown: object) -> str | None:
    """The kind in the marker of the open folder ``dir_fd``; None when absent, a symlink, or not ours."""
    try:
        fd = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise os_error(e, Path(os.fsdecode(shown)) / MARKER, "read") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        raw = os.read(fd, _MARKER_MAX)
    except OSError as e:
        raise os_error(e, Path(os.fsdecode(shown)) / MARKER, "read") from None
    finally:
        os.close(fd)
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if isinstance(obj, dict) and obj.get("tool") == "icl-dynamics" and obj.get("kind") in KINDS:
        return str(obj["kind"])
    return None


def marker_kind(directory: str | os.PathLike[str]) -> str | None:
    """The kind icl-dynamics marked ``directory`` with, or None (no folder, no marker, not ours)."""
    try:
        fd = os.open(directory, _DIR)
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise os_error(e, directory, "open folder") from None
    try:
        return _marker_at(fd, directory)
    finally:
        os.close(fd)


def is_owned(directory: str | os.PathLike[str], kind: str) -> bool:
    """True when ``directory`` carries our marker of this ``kind``."""
    _check_kind(kind)
    return marker_kind(directory) == kind


def prepare_owned_dir(path: str | os.PathLike[str], kind: str, overwrite: bool, owned: list[str]) -> Path:
    """Make ``path`` an output folder of ``kind`` and return the folder to write into.

    * missing: created (parents too) and marked; an existing empty folder is adopted and marked;
    * not empty and without our marker of ``kind``: refused even with ``overwrite``; it may be the user's;
    * ours and not ``overwrite``: refused, asking for ``--overwrite``;
    * ours and ``overwrite``: deletes only the ``owned`` entries (relative paths; the last component may be
      a glob such as ``rows/*.parquet``) and their leftover ``.NAME.*.tmp`` temporaries. Files are unlinked
      (a symlink itself, never its target); a folder only when it carries our marker (``runs/*``); a symlink
      on the way is not followed. Everything else stays.

    ``path`` may be a symlink the user chose: it is followed once and the real folder is returned, so later
    writes never go through a symlink. :data:`LOCK_NAME` (from :class:`~icl_dynamics.fsio.DirLock`, which
    should be held around this call) does not count as content. Raises :class:`RunDirError` for a bad path
    (not a folder, a loop, through a file) and :class:`~icl_dynamics.errors.StorageError` for OS refusals.
    """
    _check_kind(kind)
    check_path(path)
    given = Path(path)
    shown = clip(given)
    try:
        try:
            lst = os.lstat(given)
        except FileNotFoundError:
            os.makedirs(given, exist_ok=True)  # exist_ok: another process may create it at the same time
            lst = os.lstat(given)
        st = os.stat(given) if stat.S_ISLNK(lst.st_mode) else lst  # ELOOP for a loop, ENOENT if dangling
    except OSError as e:
        raise os_error(e, given, "use") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RunDirError(f"'{shown}' exists and is a {file_kind(st.st_mode)}, not a folder")
    real = Path(os.path.realpath(given)) if stat.S_ISLNK(lst.st_mode) else given
    try:
        content = set(os.listdir(real)) - {LOCK_NAME, MARKER}
    except OSError as e:
        raise os_error(e, given, "list") from None
    if content:
        have = marker_kind(real)
        if have is None:
            raise RunDirError(f"'{shown}' is not empty and was not made by icl-dynamics (no marker); "
                              f"choose a new --out")
        if have != kind:
            raise RunDirError(f"'{shown}' holds an icl-dynamics {have}, not a {kind}; choose a new --out")
        if not overwrite:
            raise RunDirError(f"'{shown}' exists; pass --overwrite to replace its {kind}")
        for rel in owned:
            _remove_owned(real, rel)
    mark_owned(real, kind)
    return real


def _remove_owned(root: Path, rel: str) -> None:
    """Delete ``root/rel`` (glob in the last component) and its temporaries, walking by folder descriptors
    opened with O_NOFOLLOW, so a planted symlink on the way is never followed."""
    parts = split_rel(rel)
    where = root
    try:
        fd = os.open(root, _DIR)
    except OSError as e:
        raise os_error(e, root, "open folder") from None
    try:
        for name in parts[:-1]:
            where = where / name
            try:
                sub = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                if e.errno in _GONE:
                    return  # missing, a file, or a symlink: nothing of ours below it
                raise os_error(e, where, "open folder") from None
            os.close(fd)
            fd = sub
        try:
            names = os.listdir(fd)
        except OSError as e:
            raise os_error(e, where, "list") from None
        pattern = parts[-1]
        for name in names:
            tmp = _TMP.fullmatch(name)
            if fnmatch.fnmatchcase(name, pattern) and name not in (MARKER, LOCK_NAME):
                _remove_entry(fd, name, where / name, temp=False)
            elif tmp and fnmatch.fnmatchcase(tmp.group(1), pattern):
                _remove_entry(fd, name, where / name, temp=True)
    finally:
        os.close(fd)


def _remove_entry(dir_fd: int, name: str, shown: Path, temp: bool) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            if temp:
                return
            try:
                sub = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError as e:
                if e.errno in _GONE:
                    return
                raise
            try:
                ours = _marker_at(sub, shown) is not None
            finally:
                os.close(sub)
            if ours:
                shutil.rmtree(name, dir_fd=dir_fd)  # fd-based in CPython: symlinks inside are unlinked, not followed
        elif not temp or stat.S_ISREG(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as e:
        raise os_error(e, shown, "remove") from None
