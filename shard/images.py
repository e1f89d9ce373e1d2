"""Decide what each image becomes in a shard, and produce the JPEG bytes that go in.

`check_image` reads a file once (in a worker process) and returns a `Verdict`: keep the
bytes as they are (an RGB or grayscale JPEG that passes the structural check of `shard.jpeg`,
so that every decoder of the embed stage reads it), repair (decode by content with PIL,
convert to RGB as PIL's `convert('RGB')` does, re-encode as JPEG: other formats, CMYK, and
JPEGs that only a lenient decoder reads, with the reason), skip with a reason, or retry (the
file could not be read this time: a rerun reads it again). With `validate="fast"`, the default,
a JPEG that passes the structural check is kept on it alone; every other file, and every file
with `validate="full"`, is fully decoded by PIL. `jpeg_payload` then turns a verdict into the
bytes written to the tar.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from shard.jpeg import inspect

KEEP, REPAIR, SKIP, RETRY = "keep", "repair", "skip", "retry"
VALIDATE = ("fast", "full")
# Formats whose bytes DALI and nvJPEG decode as they are; MPO is a JPEG with extra frames after it.
JPEG_FORMATS = ("JPEG", "MPO")
JPEG_MODES = ("RGB", "L")
# read errors that say something of the path, not of the moment: the file is skipped (and
# never journaled: once fixed, a rerun of an unfinished split sees it); any other read error is
# taken for a passing fault (EIO, a stale NFS handle, ENOMEM) and the file is read again on rerun
PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.EPERM, errno.EISDIR,
               errno.ENAMETOOLONG}


@dataclass(frozen=True)
class Verdict:
    """What happens to one file: status KEEP/REPAIR/SKIP/RETRY and the action or reason, in words.
    `journal`: whether it is a verdict on the file's content, which a rerun may reuse while the
    file is unchanged (a read error is not: it is for this run alone)."""

    status: str
    detail: str = ""
    journal: bool = True


def _decode(data: bytes) -> tuple[str, str, tuple[int, int]]:
    """Fully decode `data`; return (format, mode, (width, height)). Raises on any defect."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.format or "unknown", img.mode, img.size


def _scaled(size: tuple[int, int], max_side: int | None) -> tuple[int, int] | None:
    """New (w, h) with the longer side at `max_side`, or None when no resize is needed."""
    w, h = size
    if max_side is None or max(w, h) <= max_side:
        return None
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def not_regular(mode: int) -> str | None:
    """Why a file of this st_mode cannot be an image (a FIFO would block its reader), or None."""
    if stat.S_ISREG(mode):
        return None
    kind = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
            stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}.get(stat.S_IFMT(mode), "special")
    return f"not a regular file: {kind}"


class SpecialFile(OSError):
    """A path that is not a regular file (its message says what it is)."""


def read_regular(path: str) -> bytes:
    """The bytes of regular file `path`: one open, fstat and read (half the time of
    Path.read_bytes on a cached 70 kB JPEG, and every file is read twice). A FIFO or device is
    opened without blocking and refused with SpecialFile."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if (why := not_regular(st.st_mode)) is not None:
            raise SpecialFile(why)
        parts = [os.read(fd, st.st_size + 1)]  # + 1: a file that grew since is read whole too
        while parts[-1]:
            parts.append(os.read(fd, 1 << 20))
        return parts[0] if len(parts) == 2 else b"".join(parts)
    finally:
        os.close(fd)


def _unreadable(e: OSError) -> Verdict:
    why = f"unreadable: {e.strerror or e}"
    if e.errno in PATH_ERRNOS:
        return Verdict(SKIP, why, journal=False)
    return Verdict(RETRY, f"{why} (read again on rerun)", journal=False)


def _within(size: tuple[int, int], max_side: int | None) -> bool:
    """A size the fast path may keep: no decompression bomb, nothing to shrink."""
    return size[0] * size[1] <= Image.MAX_IMAGE_PIXELS and (max_side is None or max(size) <= max_side)


def check_image(path: str, max_side: int | None = None, validate: str = "fast") -> Verdict:
    """Say whether to keep, repair, skip or retry `path`, and why: a sound JPEG on its structure
    (with validate "fast"), anything else by decoding it fully."""
    try:
        data = read_regular(path)
    except SpecialFile as e:
        return Verdict(SKIP, str(e))
    except OSError as e:
        return _unreadable(e)
    if not data:
        return Verdict(SKIP, "empty file: 0 bytes")
    size, problem = inspect(data) if data[:2] == b"\xff\xd8" else (None, None)
    if validate == "fast" and size is not None and _within(size, max_side):
        return Verdict(KEEP)
    return _decoded(data, max_side, problem)


def _decoded(data: bytes, max_side: int | None, problem: str | None) -> Verdict:
    """The verdict of PIL's full decode; `problem`: why the structural check refused a JPEG."""
    what = f" ({problem})" if problem else ""
    try:
        fmt, mode, size = _decode(data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return Verdict(SKIP, f"decompression bomb: {e}")
    except UnidentifiedImageError:
        if problem:
            return Verdict(SKIP, f"unsupported JPEG{what}: PIL cannot decode it to re-encode it")
        return Verdict(SKIP, "not an image: PIL cannot identify the content")
    except MemoryError:
        return Verdict(RETRY, "out of memory decoding it (decoded again on rerun)", journal=False)
    except Exception as e:  # any decoder failure means DALI would fail on it too
        return Verdict(SKIP, f"truncated or corrupt{what}: {type(e).__name__}: {e}")
    actions = []
    if fmt not in JPEG_FORMATS or mode not in JPEG_MODES:
        actions.append(f"{fmt} {mode} converted to RGB JPEG")
    elif problem:  # only a lenient decoder (PIL's libjpeg) reads it as it is
        actions.append(f"lenient JPEG: {problem}; re-encoded")
    new_size = _scaled(size, max_side)
    if new_size is not None:
        actions.append(f"resized {size[0]}x{size[1]} to {new_size[0]}x{new_size[1]}")
    return Verdict(REPAIR, "; ".join(actions)) if actions else Verdict(KEEP)


def jpeg_payload(path: str, verdict: Verdict, quality: int, *, max_side: int | None) -> bytes:
    """The bytes a sample stores: the file itself when kept, a fresh RGB JPEG when repaired."""
    if verdict.status not in (KEEP, REPAIR):
        raise ValueError(f"{path}: a skipped file has no payload ({verdict.detail})")
    data = read_regular(path)
    if verdict.status == KEEP:
        return data
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    new_size = _scaled(rgb.size, max_side)
    if new_size is not None:
        rgb = rgb.resize(new_size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    # 4:4:4 keeps full chroma, so a repaired image stays as close as JPEG allows to the original.
    rgb.save(out, format="JPEG", quality=quality, subsampling=0)
    return out.getvalue()
