"""Decide what each image becomes in a shard, and produce the JPEG bytes that go in.

`check_image` reads a file once (in a worker process) and returns a `Verdict`: keep the
bytes as they are (RGB or grayscale JPEG), repair (decode by content, convert to RGB as PIL's
`convert('RGB')` does, re-encode as JPEG), or skip with a reason. A usual, whole JPEG is kept
on the structural check of `shard.jpeg` alone (`validate="fast"`, the default); every other
file, and every file with `validate="full"`, is fully decoded by PIL. `jpeg_payload` then
turns a verdict into the bytes written to the tar.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from shard.jpeg import sound_jpeg

KEEP, REPAIR, SKIP = "keep", "repair", "skip"
VALIDATE = ("fast", "full")
# Formats whose bytes DALI and nvJPEG decode as they are; MPO is a JPEG with extra frames after it.
JPEG_FORMATS = ("JPEG", "MPO")
JPEG_MODES = ("RGB", "L")


@dataclass(frozen=True)
class Verdict:
    """What happens to one file: status KEEP/REPAIR/SKIP and the action or reason, in words."""

    status: str
    detail: str = ""


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


def check_image(path: str, max_side: int | None = None, validate: str = "fast") -> Verdict:
    """Say whether to keep, repair or skip `path`, and why: a usual, whole JPEG on its structure
    (with validate "fast"), anything else by decoding it fully."""
    try:
        data = read_regular(path)
    except SpecialFile as e:
        return Verdict(SKIP, str(e))
    except OSError as e:
        return Verdict(SKIP, f"unreadable: {e.strerror or e}")
    if not data:
        return Verdict(SKIP, "empty file: 0 bytes")
    if validate == "fast" and sound_jpeg(data, max_pixels=Image.MAX_IMAGE_PIXELS, max_side=max_side):
        return Verdict(KEEP)
    try:
        fmt, mode, size = _decode(data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return Verdict(SKIP, f"decompression bomb: {e}")
    except UnidentifiedImageError:
        return Verdict(SKIP, "not an image: PIL cannot identify the content")
    except Exception as e:  # any decoder failure means DALI would fail on it too
        return Verdict(SKIP, f"truncated or corrupt: {type(e).__name__}: {e}")
    actions = []
    if fmt not in JPEG_FORMATS or mode not in JPEG_MODES:
        actions.append(f"{fmt} {mode} converted to RGB JPEG")
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
