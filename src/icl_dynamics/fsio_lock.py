"""One writer per output folder: an flock on FOLDER/.lock, released by the kernel when its process dies."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from pathlib import Path
from types import TracebackType

from .errors import RunDirError, StorageError, UserError
from .fsio import LOCK_NAME, check_path, clip, file_kind, not_a_folder, os_error


class DirLock:
    """``with DirLock(folder):`` holds an exclusive ``flock`` on ``folder/.lock`` (created, ``folder`` too if
    ``create``), so two icl-dynamics processes never write one output folder. The holder's pid is written
    into the file; a second holder, another process or another open in this process, gets a
    :class:`RunDirError` naming that pid. The kernel drops the lock when its process dies, so a ``.lock``
    left by ``kill -9`` blocks nobody. Take the lock before :func:`icl_dynamics.fsio_owned.prepare_owned_dir`.
    """

    def __init__(self, directory: str | os.PathLike[str], what: str = "--out", *, create: bool = True) -> None:
        self.directory = Path(directory)
        self.what = what
        self.create = create
        self._fd: int | None = None
        self._created = False

    @property
    def path(self) -> Path:
        """The lock file."""
        return self.directory / LOCK_NAME

    def __enter__(self) -> DirLock:
        check_path(self.directory)
        if self.create:
            try:
                os.makedirs(self.directory, exist_ok=True)
            except FileExistsError:  # something that is not a folder: say what, not "File exists"
                raise not_a_folder(self.directory, self.what) from None
            except OSError as e:
                raise os_error(e, self.directory, "create") from None
        for _ in range(10):  # retried only while a previous holder unlinks the file between our open and flock
            fd = self._open()
            try:
                if self._lock(fd):
                    self._fd = fd
                    return self
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise RunDirError(f"cannot lock '{clip(self.directory)}': its {LOCK_NAME} keeps being replaced")

    def _open(self) -> int:
        """The lock file, opened read-write without following a link; ``self._created`` says whether this
        call created it (O_EXCL), so that a ``.lock`` someone else left is never truncated unchecked."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            try:
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o666)
                self._created = True
            except FileExistsError:
                fd = os.open(self.path, flags)
                self._created = False
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise RunDirError(f"'{clip(self.path)}' is a symlink; remove it") from None
            raise os_error(e, self.path, "open") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise RunDirError(f"'{clip(self.path)}' is a {file_kind(mode)}; remove it")
        return fd

    def _adoptable(self, fd: int) -> bool:
        """A ``.lock`` this process did not create may be taken over only when it is ours: the folder carries
        an icl-dynamics marker, or holds nothing but a ``.lock`` with a pid in it (a holder killed before it
        marked the folder). A user's own ``.lock`` in their folder is never truncated or removed."""
        from .fsio_owned import marker_kind  # fsio_owned imports this module

        try:
            if marker_kind(self.directory) is not None:
                return True
            alone = set(os.listdir(self.directory)) <= {LOCK_NAME}
            raw = os.pread(fd, 64, 0)
        except (OSError, UserError, StorageError):
            return False
        return alone and re.fullmatch(rb"[0-9]{1,10}\n?", raw) is not None

    def _lock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                raw = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            except OSError:
                raw = ""
            pid = f" (pid {raw})" if raw.isdigit() else ""
            raise RunDirError(f"'{clip(self.directory)}' is in use by another icl-dynamics process{pid}; "
                              f"wait for it or use another {self.what}") from None
        except OSError as e:
            raise os_error(e, self.path, "lock") from None
        mine = os.fstat(fd)
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            return False
        if not self._created and not self._adoptable(fd):
            raise RunDirError(f"'{clip(self.path)}' exists in a folder icl-dynamics did not make (no marker); it "
                              f"may be someone else's file: remove it or use another {self.what}")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            raise os_error(e, self.path, "write") from None
        return True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            mine, now = os.fstat(fd), os.stat(self.path, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                os.unlink(self.path)  # while still locked: a waiter on this inode sees it gone and retries
        except OSError:
            pass
        finally:
            os.close(fd)
