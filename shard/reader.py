"""Read a finished shard split: the manifest, the shard files, and samples.tsv.

This is the one module the next stage imports from shard/:

    from shard.reader import open_split
    split = open_split("out/shards", "val")      # error unless the split is complete
    split.tar_paths(), split.idx_paths()          # for fn.readers.webdataset
    split.labels(), split.paths()                 # [N] int32, N relative paths
    read_index(split.idx_paths()[0])              # [(key, ext, offset, size)] of shard 0's members
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from msnpipe.files import plain_name
from msnpipe.runtime import UserError
from shard import FORMAT

if TYPE_CHECKING:  # numpy is imported where labels are read, not by every worker
    import numpy as np

MANIFEST = "manifest.json"
SAMPLES = "samples.tsv"
SAMPLES_HEADER = ("index", "label", "path")


class ShardFormatError(UserError):
    """A shard split is missing, incomplete, or not in the format this version reads."""



def shard_span(shard: int, samples_per_shard: int, num_samples: int) -> range:
    """The sample indices (and store rows) of `shard`, every shard but the last holding
    samples_per_shard: the one formula between shards and rows, for tars and store groups alike."""
    start = shard * samples_per_shard
    return range(start, min(num_samples, start + samples_per_shard))


def shard_of(index: int, samples_per_shard: int) -> tuple[int, int]:
    """(shard, place in it) of sample `index`: shard_span's inverse."""
    return divmod(int(index), samples_per_shard)


@dataclass(frozen=True)
class ShardEntry:
    """One tar of a split, as listed in its manifest."""

    tar: str
    idx: str
    num_samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Split:
    """A complete split: where it lives and what its manifest says."""

    dir: Path
    name: str
    classes: list[str]
    num_samples: int
    samples_per_shard: int
    key_digits: int
    shards: list[ShardEntry]
    skipped: list[dict] = field(default_factory=list)
    repaired: list[dict] = field(default_factory=list)
    manifest_sha256: str = ""
    multilabel: bool = False
    samples_sha256: str | None = None  # None: a manifest of an older version, which did not record it
    url: str | None = None  # a remote split: where it lives; `dir` is then its local cache

    def where(self, i: int) -> str:
        """Where tar `i` lives, for messages: its URL for a remote split, else its path."""
        return f"{self.url}/{self.shards[i].tar}" if self.url else str(self.dir / self.shards[i].tar)

    def tar_paths(self) -> list[Path]:
        """Absolute paths of the tars, in shard order."""
        return [self.dir / s.tar for s in self.shards]

    def idx_paths(self) -> list[Path]:
        """Absolute paths of the DALI indexes, in shard order."""
        return [self.dir / s.idx for s in self.shards]

    def shard_range(self, i: int) -> range:
        """Sample indices held by shard `i`."""
        return shard_span(i, self.samples_per_shard, self.num_samples)

    def key(self, index: int) -> str:
        """The WebDataset key of sample `index`."""
        return f"{index:0{self.key_digits}d}"

    def tar_problem(self, i: int, *, content: bool = False) -> str | None:
        """Why tar `i` is not the one the manifest lists, or None: missing, another size, a first
        member other than the shard's first sample (one stat and one 512-byte read), and with
        `content` a sha256 other than the manifest's (one read of the whole tar)."""
        entry, path = self.shards[i], self.dir / self.shards[i].tar
        if self.url and not path.exists():
            return self._remote_problem(i)
        try:
            with open(path, "rb") as f:
                size, head = os.fstat(f.fileno()).st_size, f.read(512)
                if size == entry.bytes and content:
                    f.seek(0)
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as e:
            return f"{path}: missing" if e.errno == errno.ENOENT else f"{path}: cannot be read ({e.strerror})"
        if size != entry.bytes:
            return f"{path}: {size} bytes, the manifest says {entry.bytes}"
        first = f"{self.key(self.shard_range(i).start)}.jpg"
        name = head[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if entry.num_samples and name != first:
            return f"{path}: its first member is {name!r}, not {first!r}"
        if content and digest != entry.sha256:
            return f"{path}: sha256 {digest[:12]}…, the manifest says {entry.sha256[:12]}…"
        return None

    def _remote_problem(self, i: int) -> str | None:
        """tar_problem of a remote tar not in the cache: its size and first header, read remotely."""
        from msnpipe import remote

        entry, url = self.shards[i], self.where(i)
        try:
            size, head = remote.size(url), remote.read_bytes(url, 0, 512)
        except FileNotFoundError:
            return f"{url}: missing"
        if size != entry.bytes:
            return f"{url}: {size} bytes, the manifest says {entry.bytes}"
        name = head[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        first = f"{self.key(self.shard_range(i).start)}.jpg"
        if entry.num_samples and name != first:
            return f"{url}: its first member is {name!r}, not {first!r}"
        return None

    def labels(self) -> np.ndarray:
        """Class index of every sample, `[N]` int32; for a multi-label split, multi-hot `[N, C]`
        int8. From samples.tsv."""
        import numpy as np

        texts = self.label_texts()
        if not self.multilabel:
            return np.array([int(t) for t in texts], dtype=np.int32)
        hot = np.zeros((len(texts), len(self.classes)), dtype=np.int8)
        for i, t in enumerate(texts):
            hot[i, [int(x) for x in t.split(",")]] = 1
        return hot

    def label_texts(self) -> list[str]:
        """The label column of samples.tsv as written in `<key>.cls` ("17", or "3,17")."""
        return [row[1] for row in self._rows]

    def paths(self) -> list[str]:
        """Source path (relative to the split folder) of every sample, from samples.tsv."""
        return [row[2] for row in self._rows]

    @cached_property
    def _rows(self) -> list[list[str]]:
        """samples.tsv, read and checked once per Split (ImageNet train: 1.28M rows): its sha256
        against the manifest's, and each sample's class folder against its label."""
        rows = _read_tsv(self.dir, self.num_samples, self.samples_sha256)
        if not self.multilabel:
            _check_folders(self.dir / SAMPLES, rows, self.classes)
        return rows


def _check_folders(path: Path, rows: list[list[str]], classes: list[str]) -> None:
    """Each sample lies in the folder of its class (ImageFolder splits): swapped class names, or an
    edited label, would name other classes."""
    for i, (_, label, rel) in enumerate(rows):
        folder = rel.split("/", 1)[0]
        c = int(label) if label.isdigit() else -1
        if not 0 <= c < len(classes) or classes[c] != folder:
            named = f"class {classes[c]!r}" if 0 <= c < len(classes) else f"not one of {len(classes)} classes"
            raise ShardFormatError(f"{path}: sample {i} ({rel}) has label {label}, {named}, not its "
                                   f"folder {folder!r}; the manifest or samples.tsv was edited: shard "
                                   "the split again")


def _read_tsv(split_dir: Path, num_samples: int, sha256: str | None) -> list[list[str]]:
    path = split_dir / SAMPLES
    try:
        raw = path.read_bytes()
        if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
            raise ShardFormatError(f"{path}: changed after the split was made (its sha256 is not the "
                                   "manifest's); shard the split again")
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline=""), delimiter="\t",
                               quoting=csv.QUOTE_NONE))
    except (OSError, UnicodeDecodeError) as e:
        raise ShardFormatError(f"{path}: cannot be read ({e})") from None
    if not rows or tuple(rows[0]) != SAMPLES_HEADER:
        raise ShardFormatError(f"{path}: expected the header line index<TAB>label<TAB>path")
    for i, row in enumerate(rows[1:]):
        if len(row) != 3 or row[0] != str(i):
            raise ShardFormatError(f"{path}: line {i + 2} is not '{i}<TAB>label<TAB>path'")
    if len(rows) - 1 != num_samples:
        raise ShardFormatError(f"{path}: {len(rows) - 1} samples, the manifest says {num_samples}; "
                               "the split is damaged: shard it again")
    return rows[1:]


def read_manifest(path: Path | str, raw: bytes | None = None) -> dict:
    """A manifest.json (or its bytes `raw`, read from `path`, a file or a URL) as a dict; a
    ShardFormatError naming the file if it is not valid JSON."""
    try:
        m = json.loads(Path(path).read_bytes() if raw is None else raw)
    except (OSError, ValueError) as e:
        raise ShardFormatError(f"{path}: not valid JSON ({e}); the split is damaged: remove "
                               f"{str(path).rsplit('/', 1)[0]} and shard it again") from None
    if not isinstance(m, dict):
        raise ShardFormatError(f"{path}: not a manifest (a JSON object expected)")
    return m


def default_cache(url: str) -> Path:
    """Where a remote split is cached on this machine: $MSNPIPE_CACHE (else ~/.cache/msnpipe)
    / the URL's scheme, bucket and prefix."""
    base = Path(os.environ.get("MSNPIPE_CACHE") or Path.home() / ".cache" / "msnpipe")
    scheme, _, rest = url.partition("://")
    return base / scheme / rest.strip("/")


def _fetch_metadata(root: str, name: str, cache: Path) -> Path:
    """A remote split's manifest.json and samples.tsv copied into `cache/name` (the manifest, the
    commit record, first: a split whose manifest is absent is unfinished); that folder."""
    from msnpipe import remote

    url, local = remote.join(root, name), cache / name
    local.mkdir(parents=True, exist_ok=True)
    try:
        remote.get_file(remote.join(url, MANIFEST), local / MANIFEST)
    except FileNotFoundError:
        raise ShardFormatError(f"{url}/{MANIFEST}: not found (the split is unfinished, or no such split: "
                               "rerun python -m shard)") from None
    try:
        remote.get_file(remote.join(url, SAMPLES), local / SAMPLES)
    except FileNotFoundError:
        raise ShardFormatError(f"{url}/{SAMPLES}: not found beside its manifest; the split is damaged: "
                               "shard it again") from None
    return local


def open_split(root: Path | str, name: str, *, cache: Path | None = None) -> Split:
    """The complete split `root/name`; a clear error if it is missing or unfinished. A remote
    root (a URL) has its manifest and samples.tsv read into `cache` (default_cache), and its
    tars are fetched there as they are needed (embed.source.RemoteShards)."""
    from msnpipe import remote

    plain_name(name, "--split")
    if remote.is_url(root):
        url = remote.join(str(root), name)
        split = open_split(_fetch_metadata(str(root), name, cache or default_cache(str(root))).parent, name)
        return dataclasses.replace(split, url=url)
    split_dir = remote.local(root) / name
    path = split_dir / MANIFEST
    if not path.is_file():
        hint = "it is unfinished: rerun python -m shard" if split_dir.is_dir() else "no such split"
        raise ShardFormatError(f"{path}: not found ({hint})")
    raw = path.read_bytes()
    m = read_manifest(path, raw)
    if m.get("format") != FORMAT:
        raise ShardFormatError(f"{path}: format {m.get('format')!r}, this version reads {FORMAT!r}")
    try:
        split = _split(split_dir, m, hashlib.sha256(raw).hexdigest())
    except (KeyError, TypeError) as e:
        raise ShardFormatError(f"{path}: not a complete manifest (missing or malformed {e})") from None
    if split.classes != sorted(set(split.classes)):
        raise ShardFormatError(f"{path}: its classes are not sorted and distinct, as the shard stage writes "
                               "them: the manifest was edited; shard the split again")
    counted = sum(s.num_samples for s in split.shards)
    if counted != split.num_samples:
        raise ShardFormatError(f"{path}: num_samples is {split.num_samples} but its shards hold "
                               f"{counted}; the split is damaged: shard it again")
    return split


def _split(split_dir: Path, m: dict, sha256: str) -> Split:
    return Split(
        dir=split_dir.resolve(),
        name=m["split"],
        classes=m["classes"],
        num_samples=m["num_samples"],
        samples_per_shard=m["samples_per_shard"],
        key_digits=m["key_digits"],
        shards=[ShardEntry(**s) for s in m["shards"]],
        skipped=m["skipped"],
        repaired=m["repaired"],
        manifest_sha256=sha256,
        multilabel=m.get("multilabel", False),
        samples_sha256=m.get("samples_sha256"),
    )


def read_index(idx_path: Path) -> list[tuple[str, str, int, int]]:
    """(key, ext, data offset, size) of every member listed in a DALI webdataset index, in tar
    order, so a reader can fetch a member with one seek and one read."""
    lines = Path(idx_path).read_text().splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or not head[0].startswith("v1.") or int(head[1]) != len(lines) - 1:
        raise ShardFormatError(f"{idx_path}: not a DALI webdataset index (header {lines[:1]})")
    members = []
    for line in lines[1:]:
        fields = line.split()
        for j in range(0, len(fields), 4):
            ext, offset, size, name = fields[j : j + 4]
            members.append((name.rsplit("/", 1)[-1].split(".", 1)[0], ext, int(offset), int(size)))
    return members


def list_splits(root: Path | str) -> list[str]:
    """Names of the complete splits under `root` (folders, or prefixes, holding a manifest)."""
    from msnpipe import remote

    if remote.is_url(root):
        fs, path = remote.filesystem(str(root))
        found = remote.retried(str(root), lambda: fs.glob(f"{path.rstrip('/')}/*/{MANIFEST}"))
        return sorted(p.rsplit("/", 2)[-2] for p in found)
    return sorted(p.parent.name for p in remote.local(root).glob(f"*/{MANIFEST}"))
