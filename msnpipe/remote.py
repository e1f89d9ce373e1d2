"""Object storage through fsspec: a URL wherever a path goes (`s3://bucket/prefix`, `gs://...`,
any protocol an fsspec package installs; `file://` and plain paths stay local).

    is_url("s3://bucket/shards")            # True
    check("s3://bucket/shards", write=True) # one line now (missing bucket, bad credentials), not later
    put_file(Path("x.tar"), "s3://bucket/shards/val/x.tar")   # whole object or none, retried
    with RemoteLock("s3://bucket/shards/val/.lock", "split s3://bucket/shards/val"): ...

The endpoint and credentials come from the standard places (for S3, botocore's chain:
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_ENDPOINT_URL, ~/.aws); nothing
is passed on a command line, written to a file or logged but the URL.

Object stores have no rename: an object appears whole when its upload completes (a multipart
upload included) or not at all. What a stage publishes is therefore committed by writing its
record last (a split's manifest, a shard's done flag), and readers trust only what the
record lists. Transient failures (a connection refused or reset, a timeout, throttling) are
retried with backoff; one that outlasts the retries is a RemoteError naming the object.
One writer per output is enforced with a lock object created by a conditional put
(If-None-Match: *); a lock left by a killed process on this host is taken over, one left by
another host must be removed by hand (the error says which object).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from msnpipe.files import Busy, holder_record
from msnpipe.runtime import UserError

log = logging.getLogger("msnpipe")
ATTEMPTS = 5  # tries of one operation before it is an error
BACKOFF_S = 0.5  # the first wait; doubled each time
ENV_HINT = ("the endpoint and credentials come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")


class RemoteError(UserError):
    """An object store refused or could not be reached; the message names the object."""


def is_url(target: str | os.PathLike) -> bool:
    """Whether `target` names remote storage (a URL other than file://)."""
    text = str(target)
    return "://" in text and not text.startswith("file://")


def location(text: str) -> Path | str:
    """An argparse type: a URL as given, anything else a local Path."""
    return text if is_url(text) else local(text)


def local_only(text: str) -> Path:
    """An argparse type for outputs kept on this machine (probe results, plots): a URL is refused
    (argparse's Path would fold `s3://b/x` into a local folder `s3:/b/x`)."""
    if is_url(text):
        import argparse

        raise argparse.ArgumentTypeError(f"{text}: a local folder or file (results are small: copy them "
                                         "to object storage afterwards)")
    return local(text)


def local(target: str | os.PathLike) -> Path:
    """A local target as a Path (`file://` stripped)."""
    text = str(target)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def join(url: str, *parts: str) -> str:
    """`url/part/...` (remote URLs join with '/')."""
    return "/".join([str(url).rstrip("/"), *parts])


def filesystem(url: str) -> tuple[Any, str]:
    """(the fsspec filesystem of `url`, the path in it)."""
    import fsspec

    # aiohttp leaves a task's error unretrieved when a connection drops mid-upload; the upload's own
    # error is retried and reported here, so asyncio's traceback of the same error is noise
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise RemoteError(f"{url}: no file system for it ({e}); install the fsspec package of its "
                          "protocol (s3fs for s3://, gcsfs for gs://)") from None


def _said(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _final(e: BaseException) -> bool:
    """An error that retrying cannot mend: a permission, a missing object or bucket, a conflict,
    or a bug (raised as it is)."""
    return isinstance(e, (PermissionError, FileNotFoundError, FileExistsError, IsADirectoryError,
                          NotADirectoryError, UserError, TypeError, AttributeError, NameError,
                          AssertionError))


def retried(what: str, fn: Callable[[], Any], *, attempts: int = ATTEMPTS) -> Any:
    """fn(), tried again after transient failures; a RemoteError naming `what` when they last, or
    at once for a permission, a missing object or bucket."""
    wait = BACKOFF_S
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:
            if isinstance(e, PermissionError):
                raise RemoteError(f"{what}: access denied ({_said(e)}); {ENV_HINT}") from None
            if _final(e) or attempt == attempts:
                if _final(e):
                    raise
                raise RemoteError(f"{what}: {_said(e)}, {attempts} times; nothing unfinished was "
                                  "published: rerun the same command to go on") from None
            log.warning("%s: %s; trying again in %.1f s", what, _said(e), wait)
            time.sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def check(url: str, *, write: bool) -> None:
    """Before any work: the bucket exists and the credentials reach it (and may write, with
    `write`: a probe object is put and removed); else one RemoteError naming the URL."""
    fs, path = filesystem(url)
    bucket = path.split("/", 1)[0]
    try:
        retried(url, lambda: fs.ls(bucket, detail=False), attempts=3)
    except FileNotFoundError:
        raise RemoteError(f"{url}: the bucket {bucket!r} does not exist (or these credentials cannot see "
                          f"it); create it, or check the URL; {ENV_HINT}") from None
    if write:
        probe = join(path, f".msnpipe-write-check-{socket.gethostname()}-{os.getpid()}")
        retried(url, lambda: fs.pipe_file(probe, b"ok"), attempts=3)
        retried(url, lambda: fs.rm_file(probe), attempts=3)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return bool(retried(url, lambda: fs.exists(path)))


def size(url: str) -> int:
    """The bytes of one object (FileNotFoundError when it is absent)."""
    fs, path = filesystem(url)
    return int(retried(url, lambda: fs.info(path, refresh=True))["size"])


def sizes(url: str) -> dict[str, int]:
    """{name: bytes} of the objects directly under prefix `url` (one listing)."""
    fs, path = filesystem(url)
    try:
        listing = retried(url, lambda: fs.ls(path, detail=True, refresh=True))
    except FileNotFoundError:
        return {}
    return {item["name"].rsplit("/", 1)[-1]: int(item.get("size") or 0) for item in listing
            if item.get("type") == "file"}


def read_bytes(url: str, start: int | None = None, end: int | None = None) -> bytes:
    fs, path = filesystem(url)
    return retried(url, lambda: fs.cat_file(path, start=start, end=end))


def write_bytes(url: str, data: bytes) -> None:
    """One whole object (a single PUT, or a multipart upload completed at once)."""
    fs, path = filesystem(url)
    retried(url, lambda: fs.pipe_file(path, data))


def put_file(source: Path, url: str) -> None:
    """Upload a local file as one whole object."""
    fs, path = filesystem(url)
    retried(url, lambda: fs.put_file(str(source), path))


def get_file(url: str, dest: Path) -> None:
    """Download an object to `dest` through `dest.part` and a rename: `dest` is whole or absent."""
    fs, path = filesystem(url)
    part = dest.with_name(dest.name + ".part")
    retried(url, lambda: fs.get_file(path, str(part)))
    os.replace(part, dest)


def remove(url: str, *, recursive: bool = False) -> None:
    fs, path = filesystem(url)
    try:
        retried(url, lambda: fs.rm(path, recursive=recursive))
    except FileNotFoundError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RemoteLock:
    """Hold the lock object at `url` while the block runs: created only if absent (a conditional
    put), holding a record of this process; a second writer gets Busy naming the holder. A lock
    of a dead process of this host is taken over; removed on leaving."""

    def __init__(self, url: str, what: str):
        self.url, self.what = url, what
        self.record = json.dumps({"holder": holder_record(), "host": socket.gethostname(),
                                  "pid": os.getpid()})

    def _create(self) -> bool:
        fs, path = filesystem(self.url)
        try:
            retried(self.url, lambda: fs.pipe_file(path, self.record.encode(), mode="create"))
            return True
        except FileExistsError:
            return False

    def __enter__(self) -> RemoteLock:
        for _ in range(2):
            if self._create():
                return self
            try:
                held = json.loads(read_bytes(self.url))
            except (FileNotFoundError, ValueError):
                held = {}
            if held.get("host") == socket.gethostname() and held.get("pid") and not _alive(int(held["pid"])):
                log.warning("%s: taking over the lock of a process that is gone (%s)", self.url,
                            held.get("holder"))
                remove(self.url)
                continue
            who = held.get("holder", "another process")
            raise Busy(f"{self.what} is being written by {who}; wait for it to finish or stop it (lock "
                       f"object {self.url}: remove it if that process is gone)")
        raise Busy(f"{self.what}: the lock object {self.url} was taken again while taking it over")

    def __exit__(self, kind, *_) -> None:
        try:
            if read_bytes(self.url).decode() == self.record:
                remove(self.url)
        except FileNotFoundError:
            pass
        except RemoteError as e:
            if kind is None:
                raise
            # leaving on an error already (the store gone, say): that error is the one to report;
            # the lock names this process, so a rerun on this host takes it over
            log.warning("could not remove the lock object: %s", e)
