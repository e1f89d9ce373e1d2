"""Write one WebDataset shard (tar + DALI index) deterministically and atomically.

Members are `<key>.jpg` then `<key>.cls` for each sample, in index order, with fixed
headers (mtime 0, uid/gid 0, no user names, mode 0444, ustar format), so the same
samples always give the same bytes. A shard is assembled in memory from `tarfile`'s own
headers (the bytes `tarfile` would write, which a test checks), hashed as it is assembled,
written once under a `.tmp` name, fsynced and renamed into place, as is its index: a file
under its final name is always whole.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from msnpipe.files import fsync_rename, naming, write_atomic

DALI_INDEX_VERSION = "v1.2"
TAR_MTIME = 0


@dataclass(frozen=True)
class Member:
    """One tar member as the DALI index lists it: extension, data offset, size, name."""

    ext: str
    offset: int
    size: int
    name: str


def split_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key ends at the first dot of the base name."""
    base = name.rsplit("/", 1)[-1]
    dot = base.find(".")
    prefix = name[: len(name) - len(base)]
    return prefix + base[:dot], base[dot + 1 :]


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, TAR_MTIME, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _tarfile_header(name: str, size: int) -> bytes:
    return _tarinfo(name, size).tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")


_TEMPLATE = _tarfile_header("", 0)  # the fields every member shares
_MAX_USTAR_SIZE = 8**11  # 11 octal digits


def ustar_header(name: str, size: int) -> bytes:
    """tarfile's ustar header of a regular member, from its template with the name, size and
    checksum filled in (3 us where tarfile takes 19; a shard has two members per image). A name
    tarfile would split or encode goes to tarfile itself."""
    if not (name.isascii() and 0 < len(name) <= 100 and size < _MAX_USTAR_SIZE):
        return _tarfile_header(name, size)
    buf = bytearray(_TEMPLATE)
    buf[: len(name)] = name.encode("ascii")
    buf[124:136] = b"%011o\0" % size
    buf[148:156] = b" " * 8  # the checksum counts its own field as spaces
    buf[148:155] = b"%06o\0" % sum(buf)
    return bytes(buf)


def dali_index(members: Iterable[Member]) -> str:
    """The text of a DALI webdataset index (what `wds2idx.py` writes) for these members."""
    samples: list[list[Member]] = []
    last_key = None
    for m in members:
        key, _ = split_name(m.name)
        if key != last_key:
            samples.append([])
            last_key = key
        samples[-1].append(m)
    lines = [" ".join(f"{m.ext} {m.offset} {m.size} {m.name}" for m in s) for s in samples]
    return f"{DALI_INDEX_VERSION} {len(samples)}\n" + "".join(line + "\n" for line in lines)


def index_of_tar(tar_path: Path) -> str:
    """Rebuild the DALI index of an existing tar from its headers."""
    with tarfile.open(tar_path, "r:") as tar:
        members = [
            Member(split_name(m.name)[1], m.offset_data, m.size, m.name)
            for m in tar
            if m.isfile() and not split_name(m.name)[0].rsplit("/", 1)[-1].startswith(".")
        ]
    return dali_index(members)


@dataclass(frozen=True)
class ShardFile:
    """What the manifest records for one written shard."""

    tar: str
    idx: str
    num_samples: int
    bytes: int
    sha256: str


def tar_bytes(files: Iterable[tuple[str, bytes]]) -> tuple[list[bytes], list[Member]]:
    """The pieces of a ustar archive of (name, data) files, as `tarfile` writes it (each header,
    the data padded to 512 bytes, two zero blocks, padding to a 10240-byte record), and where
    each member's data starts."""
    pieces, members, offset = [], [], 0
    for name, data in files:
        header = ustar_header(name, len(data))
        pad = -len(data) % tarfile.BLOCKSIZE
        pieces += [header, data, b"\0" * pad]
        members.append(Member(split_name(name)[1], offset + len(header), len(data), name))
        offset += len(header) + len(data) + pad
    end = 2 * tarfile.BLOCKSIZE
    end += -(offset + end) % tarfile.RECORDSIZE
    pieces.append(b"\0" * end)
    return pieces, members


def write_tar(tar_path: Path, samples: Iterable[tuple[str, bytes, int]]) -> ShardFile:
    """Write (key, jpeg bytes, label) samples to `tar_path` and its `.idx`; return the record."""
    idx_path = tar_path.with_suffix(".idx")
    tmp = tar_path.with_name(tar_path.name + ".tmp")
    files, count = [], 0
    for key, jpg, label in samples:
        files += [(f"{key}.jpg", jpg), (f"{key}.cls", str(label).encode("ascii"))]
        count += 1
    pieces, members = tar_bytes(files)
    digest, size = hashlib.sha256(), 0
    with naming(tmp), open(tmp, "wb") as f:
        for piece in pieces:
            digest.update(piece)
            size += len(piece)
        f.writelines(pieces)
    write_atomic(idx_path, dali_index(members).encode("ascii"))
    fsync_rename(tmp, tar_path)
    return ShardFile(tar_path.name, idx_path.name, count, size, digest.hexdigest())
