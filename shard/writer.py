"""Write one WebDataset shard (tar + DALI index) deterministically and atomically.

Members are `<key>.jpg` then `<key>.cls` for each sample, in index order, with fixed
headers (mtime 0, uid/gid 0, no user names, mode 0444, ustar format), so the same
samples always give the same bytes. The tar and index are written under `.tmp`
names, fsynced, and renamed into place: a file under its final name is always whole.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from msnpipe.files import fsync_rename, write_atomic

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


def write_shard(tar_path: Path, samples: Iterable[tuple[str, bytes, int]]) -> ShardFile:
    """Write (key, jpeg bytes, label) samples to `tar_path` and its `.idx`; return the record."""
    idx_path = tar_path.with_suffix(".idx")
    tmp = tar_path.with_name(tar_path.name + ".tmp")
    members, count = [], 0
    with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, jpg, label in samples:
            for ext, data in (("jpg", jpg), ("cls", str(label).encode("ascii"))):
                info = _tarinfo(f"{key}.{ext}", len(data))
                data_offset = tar.offset + len(info.tobuf(tar.format, tar.encoding, tar.errors))
                tar.addfile(info, io.BytesIO(data))
                members.append(Member(ext, data_offset, info.size, info.name))
            count += 1
    write_atomic(idx_path, dali_index(members).encode("ascii"))
    with open(tmp, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    fsync_rename(tmp, tar_path)
    return ShardFile(tar_path.name, idx_path.name, count, tar_path.stat().st_size, digest)
