"""Files every stage writes the same way: one writer at a time, whole lines, atomic replaces.

    with exclusive(out / ".lock", f"{out}"):     # a second writer is refused, naming this one
        lines = whole_lines(out / "journal.tsv")  # a line cut by a kill is cut off, not parsed
        write_atomic(out / "manifest.json", data) # readers see the old file or the new one

Locks are `flock`s on a file that names its holder (pid, host, start, command); the kernel
drops them when the holder dies, so a killed run never leaves a stale lock behind. A flock
belongs to the open file, which a fork shares: forked workers let go of their copies
(`forget_inherited_locks`, run by msnpipe.pool), so the lock dies with its holder alone. A lock
file is opened without following a link (O_NOFOLLOW) and rewritten only when it is a regular
file of one link, empty or holding a holder's record: a link or file planted where a lock goes
(a shared folder) is refused, never written through. Names the command line turns into paths
(split, encoder) must be plain names (`plain_name`).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
import re
import socket
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from msnpipe.runtime import UserError


class Busy(UserError):
    """Another process is writing the same output."""


_HELD: set[int] = set()  # descriptors of the locks this process holds


def forget_inherited_locks() -> None:
    """In a forked child: point its copies of the parent's lock descriptors at /dev/null (the
    numbers stay taken, so nothing closes a reused one), so that only the parent holds them."""
    if not _HELD:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    for fd in _HELD:
        os.dup2(null, fd)
    os.close(null)
    _HELD.clear()


def writable_dir(path: Path, what: str) -> Path:
    """Create folder `path` if needed; a UserError if it is a file or cannot be written."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path}: is a file, expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{what} {path}: cannot be created ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: not writable by this user")
    return path


def holder_record() -> str:
    """Who holds a lock: pid, host, start and command (what Busy names)."""
    now = datetime.datetime.now().isoformat(timespec="seconds")
    cmd = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:200]
    return f"pid {os.getpid()} on {socket.gethostname()} since {now} ({cmd})"


HOLDER = re.compile(r"pid \d+ on \S+ since ")  # how holder_record begins


def _lock_file(lock_path: Path):
    """The lock file opened for reading and writing, created if absent, refused if it is a link,
    a file of several links, or not a regular file."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"{lock_path}: is a symbolic link, not a lock file; remove it (msnpipe never "
                            "writes through a link)") from None
        raise UserError(f"{lock_path}: cannot be opened as a lock file ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise UserError(f"{lock_path}: not a lock file msnpipe made (a hard link or not a regular file); "
                        "remove it")
    return os.fdopen(fd, "r+")


@contextmanager
def exclusive(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` while the block runs; if another process holds it,
    raise Busy naming that process."""
    f = _lock_file(lock_path)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read(400).strip() or "another process"
        f.close()
        raise Busy(f"{what} is being written by {holder}; wait for it to finish or stop it "
                   f"(lock file {lock_path})") from None
    _HELD.add(f.fileno())
    try:
        f.seek(0)
        old = f.read(400)
        if old and not HOLDER.match(old):
            raise UserError(f"{lock_path}: not a lock file msnpipe made (it holds other text); remove it")
        f.seek(0)
        f.truncate()
        f.write(holder_record() + "\n")
        f.flush()
        yield
    finally:
        _HELD.discard(f.fileno())
        f.close()  # releases the lock; the file stays (removing it would race a new holder)


def plain_name(name: str, what: str) -> str:
    """`name` itself when it can be a folder or file name as it is (no separator, not . or .., not
    hidden, no control characters); a UserError naming `what` otherwise."""
    if (not name or "/" in name or "\\" in name or name.startswith(".") or len(name) > 200
            or any(ord(c) < 32 for c in name)):
        raise UserError(f"{what} {name!r}: not a plain name (it becomes a folder or file name: letters, "
                        "digits and -_. , no '/', not starting with '.')")
    return name


def whole_lines(path: Path) -> list[str]:
    """The complete lines of an append-only file (without line ends). A last line cut short by a
    kill is removed from the file, so the next append starts on a fresh line."""
    if not path.exists():
        return []
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        os.truncate(path, len(whole))
    return whole.decode("utf-8").split("\n")[:-1]


@contextmanager
def naming(path: Path | str) -> Iterator[None]:
    """OSErrors raised in the block name `path` when they name no file (a failed write rarely
    says which file it was writing)."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def fsync_rename(tmp: Path, final: Path) -> None:
    """Flush `tmp` to disk and rename it to `final` (atomic on POSIX file systems)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    with naming(tmp):
        tmp.write_bytes(data)
        fsync_rename(tmp, path)
