"""File-system primitives that refuse, in one line, what a hostile or unlucky environment throws at the CLI.

Every function here turns an ``OSError`` into :class:`~icl_dynamics.errors.StorageError` (exit 4: the machine
refused: no space, read-only, permission) or :class:`~icl_dynamics.errors.RunDirError` (exit 2: the path is
wrong: missing, through a file, a symlink loop, too long). Paths echoed in messages are clipped to
:data:`MAX_SHOWN` characters with control characters escaped, so a message is always one short line.

* :func:`atomic_write_bytes` writes via a temporary file + rename and never replaces a device, FIFO, folder
  or symlink, nor writes through a symlinked folder.
* :func:`safe_dir` makes ``figures/``, ``runs/``, ``rows/`` under a root without following symlinks.
* :func:`sanitize_name` turns data-derived text into a safe file name.
* :class:`DirLock` keeps two processes out of one output folder.
* Ownership markers and ``prepare_owned_dir`` live in :mod:`icl_dynamics.fsio_owned`, the checked .npz
  reader ``load_npz_checked`` in :mod:`icl_dynamics.fsio_npz` (split to keep modules short).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import stat
from pathlib import Path, PurePosixPath

from .errors import RunDirError, StorageError, UserError

MAX_SHOWN = 80  # characters of a path or user text echoed in a message
MAX_NAME = 100  # characters of a name from sanitize_name
LOCK_NAME = ".lock"

# errnos that mean "the machine refused" (exit 4), as opposed to "the path given is wrong" (exit 2)
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                            errno.EFBIG, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EBUSY, errno.ETXTBSY})

_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def clip(text: object, limit: int = MAX_SHOWN) -> str:
    """``text`` as one printable line of at most about ``limit`` characters: control and other non-printable
    characters are escaped (``\\n``, ``\\x1b``), the middle of a long text is replaced by ``...``."""
    s = os.fsdecode(text) if isinstance(text, (bytes, os.PathLike)) else str(text)
    if len(s) > 2 * limit:  # escape only what can be shown: a 1 MB text costs nothing
        s = s[:limit] + s[-limit:]
    s = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)
    if len(s) > limit:
        half = (limit - 3) // 2
        s = s[:half] + "..." + s[-half:]
    return s


def os_reason(e: OSError) -> str:
    """The operating system's short reason for ``e``, e.g. ``No space left on device``."""
    if e.errno:
        return os.strerror(e.errno)
    return clip(e.strerror or type(e).__name__)


def os_error_line(e: OSError, path: object, verb: str = "use") -> str:
    """One line: ``cannot {verb} '{path}': {reason}``, e.g. ``cannot write 'x/y': No space left on device``."""
    return f"cannot {verb} '{clip(path)}': {os_reason(e)}"


def os_error(e: OSError, path: object, verb: str = "use",
             user_error: type[UserError] = RunDirError) -> UserError | StorageError:
    """The exception to raise for ``e``: :class:`StorageError` when the machine refused (:data:`STORAGE_ERRNOS`),
    else ``user_error`` (the path itself is wrong). Raise it ``from None``."""
    cls = StorageError if e.errno in STORAGE_ERRNOS else user_error
    return cls(os_error_line(e, path, verb))


def check_path(path: object, user_error: type[UserError] = RunDirError) -> None:
    """Refuse a path with a NUL byte, which the OS calls would reject with ValueError, not OSError."""
    if "\0" in os.fsdecode(path):  # type: ignore[arg-type]
        raise user_error(f"'{clip(path)}' is not a valid path (it contains a NUL byte)")


def file_kind(mode: int) -> str:
    """A word for the file type in ``st_mode``, for messages."""
    for test, word in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return word
    return "special file"


def not_a_folder(path: object, what: str = "--out") -> UserError | StorageError:
    """The error for ``path`` existing as something other than a folder: a file, a device, a dangling
    symlink or a symlink loop, named as such (``makedirs`` only says "File exists")."""
    shown = clip(path)
    try:
        lst = os.lstat(path)  # type: ignore[arg-type]
    except OSError as e:
        return os_error(e, path, "use")
    if stat.S_ISLNK(lst.st_mode):
        try:
            st = os.stat(path)  # type: ignore[arg-type]
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR):
                how = "in a loop" if e.errno == errno.ELOOP else "to nothing"
                return RunDirError(f"{what} '{shown}' is a symlink that leads {how}; remove it or choose "
                                   f"another {what}")
            return os_error(e, path, "use")
        return RunDirError(f"{what} '{shown}' is a symlink to a {file_kind(st.st_mode)}, not a folder")
    return RunDirError(f"{what} '{shown}' exists and is a {file_kind(lst.st_mode)}, not a folder")


def _check_write_target(path: Path, user_path: bool) -> None:
    parent = path.parent
    try:
        pst = os.lstat(parent)
        if stat.S_ISLNK(pst.st_mode):
            if not user_path:
                raise RunDirError(f"folder '{clip(parent)}' is a symlink; refusing to write through it")
            pst = os.stat(parent)
    except OSError as e:
        raise os_error(e, parent, "write into") from None
    if not stat.S_ISDIR(pst.st_mode):
        raise RunDirError(f"'{clip(parent)}' is a {file_kind(pst.st_mode)}, not a folder")
    regular_or_absent(path, "write", "; refusing to replace it")


def regular_or_absent(path: Path, verb: str, what: str) -> None:
    """Nothing at ``path`` (not a symlink either), or a regular file; else one line: "'path' ... is a <kind>"
    followed by ``what`` (the consequence, said by the caller)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise os_error(e, path, verb) from None
    if not stat.S_ISREG(st.st_mode):
        raise RunDirError(f"'{clip(path)}' exists and is a {file_kind(st.st_mode)}{what}")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, user_path: bool = False) -> None:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one, never half of it.

    A temporary ``.NAME.<12 hex>.tmp`` is created in the same folder (O_EXCL, mode 0666 less the umask),
    fsynced and renamed over ``path``; then the folder is fsynced. Refused (:class:`RunDirError`) when
    ``path`` exists and is not a regular file (device, FIFO, folder, symlink), or when its folder is a
    symlink: folders the tool writes into come from :func:`safe_dir` or
    :func:`icl_dynamics.fsio_owned.prepare_owned_dir` and are never symlinks. Pass ``user_path=True`` for a file
    the user named outright (``--out fig.png``), whose folder may be a symlink they chose.
    An ``OSError`` becomes :func:`os_error`; the temporary file is removed on any failure.
    """
    check_path(path)
    path = Path(path)
    _check_write_target(path, user_path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    created = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        created = True
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        if created:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise os_error(e, path, "write") from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # makes the rename durable; some file systems refuse fsync on a folder, and the data is already safe
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def split_rel(rel: str | os.PathLike[str]) -> tuple[str, ...]:
    """The components of a relative path; ``ValueError`` (a programming error) for an absolute one or ``..``."""
    parts = PurePosixPath(os.fspath(rel)).parts
    if not parts or parts[0] == "/" or any(p in (".", "..") for p in parts):
        raise ValueError(f"not a plain relative path: {os.fspath(rel)!r}")
    return parts


def safe_dir(root: str | os.PathLike[str], rel: str | os.PathLike[str]) -> Path:
    """``root/rel``, creating each folder of ``rel`` as needed, without ever following a symlink below
    ``root``: a component that is a symlink or not a folder is refused (:class:`RunDirError`) by name.
    ``root`` itself may be a symlink (the user named it). Used for ``figures/``, ``runs/``, ``rows/``."""
    parts = split_rel(rel)
    here = Path(root)
    try:
        fd = os.open(here, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise os_error(e, here, "open folder") from None
    try:
        for name in parts:
            here = here / name
            try:
                os.mkdir(name, 0o777, dir_fd=fd)
            except FileExistsError:
                pass
            except OSError as e:
                raise os_error(e, here, "create folder") from None
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise RunDirError(f"'{clip(here)}' is a {file_kind(st.st_mode)}, not a folder; "
                                      f"refusing to write through it")
                sub = os.open(name, _NOFOLLOW_DIR, dir_fd=fd)  # fails if swapped for a symlink since the stat
            except OSError as e:
                raise os_error(e, here, "open folder") from None
            os.close(fd)
            fd = sub
    finally:
        os.close(fd)
    return here


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_name(text: object) -> str:
    """A file name made from data-derived text (e.g. a column name): only ``[A-Za-z0-9._-]``, no leading
    ``.`` or ``-``, no ``..``, at most :data:`MAX_NAME` characters, never empty. A safe text is returned
    unchanged; any other gets ``-`` and 8 hex digits of its SHA-256, so two texts never share a file."""
    raw = str(text)
    name = re.sub(r"\.{2,}", ".", _UNSAFE.sub("_", raw)).lstrip(".-")
    if name == raw and 0 < len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    base = name[:MAX_NAME - 9]
    return f"{base}-{digest}" if base else digest


from .fsio_lock import DirLock  # noqa: E402,F401  (re-exported: one import place for callers)
