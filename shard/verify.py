"""python -m shard.verify OUT: re-read finished shard splits and check every byte.

    python -m shard.verify out/shards                # every complete split under OUT
    python -m shard.verify out/shards --splits val --decode

Checks, per split: each tar's size and sha256 against the manifest; the member names,
order and labels of each tar against samples.tsv (this catches a tar cut short between
two members, which tar readers accept silently); each .idx against an index rebuilt from
its tar; and that the `webdataset` package and DALI's `fn.readers.webdataset` (CPU) both
read every sample with the right key and label. `--decode` also decodes every JPEG with
DALI. Exit status 1 and one line per problem on any mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import tarfile
from pathlib import Path

import numpy as np

from msnpipe.runtime import setup_logging
from shard.reader import ShardFormatError, Split, list_splits, open_split
from shard.writer import index_of_tar

log = logging.getLogger("shard.verify")


def check_files(split: Split) -> list[str]:
    """Size and sha256 of every tar against the manifest."""
    problems = []
    for entry, path in zip(split.shards, split.tar_paths()):
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        if size != entry.bytes:
            problems.append(f"{path}: {size} bytes, the manifest says {entry.bytes}")
            continue
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != entry.sha256:
            problems.append(f"{path}: sha256 {digest[:12]}…, the manifest says {entry.sha256[:12]}…")
    return problems


def _expected(split: Split, shard: int, labels: list[str]) -> list[tuple[str, bytes | None]]:
    out: list[tuple[str, bytes | None]] = []
    for i in split.shard_range(shard):
        out += [(f"{split.key(i)}.jpg", None), (f"{split.key(i)}.cls", labels[i].encode())]
    return out


def check_members(split: Split, labels: list[str]) -> list[str]:
    """Member names, order and .cls contents (the label texts of samples.tsv) of every tar, and
    its .idx against its headers."""
    problems = []
    for s, (tar_path, idx_path) in enumerate(zip(split.tar_paths(), split.idx_paths())):
        try:
            with tarfile.open(tar_path, "r:") as tar:
                found = [(m.name, tar.extractfile(m).read() if m.name.endswith(".cls") else None)
                         for m in tar if m.isfile()]
        except (tarfile.TarError, OSError) as e:
            problems.append(f"{tar_path}: cannot be read as a tar: {e}")
            continue
        want = _expected(split, s, labels)
        if found != want:
            bad = next((w, f) for w, f in zip(want + [None] * len(found), found + [None] * len(want))
                       if w != f)
            problems.append(f"{tar_path}: {len(found) // 2} samples, expected {len(want) // 2}; "
                            f"first difference: found {bad[1]}, expected {bad[0]}")
        elif not idx_path.is_file() or idx_path.read_text() != index_of_tar(tar_path):
            problems.append(f"{idx_path}: missing or does not match the offsets in {tar_path.name}")
    return problems


def check_webdataset(split: Split, labels: list[str]) -> list[str]:
    """Read every sample through the `webdataset` package."""
    import webdataset as wds

    urls = [str(p) for p in split.tar_paths()]
    keys, got = [], []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        keys.append(sample["__key__"])
        got.append(sample["cls"].decode())
        if not sample.get("jpg"):
            return [f"webdataset: sample {sample['__key__']} has no jpg"]
    return _compare("webdataset", split, labels, keys=keys, got=got)


def _compare(reader: str, split: Split, labels: list[str], *, keys: list, got: list) -> list[str]:
    want_keys = [split.key(i) for i in range(split.num_samples)]
    if keys != want_keys:
        return [f"{reader}: read {len(keys)} samples with keys that differ from the manifest's "
                f"{split.num_samples} (first read: {keys[:3]})"]
    if got != labels:
        first = next(i for i, (a, b) in enumerate(zip(got, labels)) if a != b)
        return [f"{reader}: sample {want_keys[first]} has label {got[first]}, expected {labels[first]}"]
    return []


def check_dali(split: Split, labels: list[str], decode: bool, *, batch: int = 64) -> list[str]:
    """Read every sample through DALI's webdataset reader on the CPU (and decode it)."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=batch, num_threads=2, device_id=None, exec_dynamic=True)
    def pipe():
        jpg, cls = fn.readers.webdataset(
            paths=[str(p) for p in split.tar_paths()], index_paths=[str(p) for p in split.idx_paths()],
            ext=["jpg", "cls"], missing_component_behavior="error", pad_last_batch=True, name="r")
        info = fn.get_property(jpg, key="source_info")
        return (fn.decoders.image(jpg, device="cpu") if decode else jpg), cls, info

    p = pipe()
    p.build()
    keys, got = [], []
    try:
        for _ in range(-(-split.num_samples // batch)):
            _, cls, info = p.run()
            keys += [bytes(np.asarray(t)).decode().rsplit(":", 1)[1].split(".")[0] for t in info]
            got += [bytes(np.asarray(t)).decode() for t in cls]
    except RuntimeError as e:
        return [f"DALI: {str(e).splitlines()[0]}"]
    n = split.num_samples
    return _compare("DALI", split, labels, keys=keys[:n], got=got[:n])


def verify_split(split: Split, decode: bool = False) -> list[str]:
    """Every problem found in one split, as one line each (empty when all is well)."""
    problems = check_files(split)
    labels = split.label_texts()
    if len(labels) != split.num_samples:
        problems.append(f"{split.dir}/samples.tsv: {len(labels)} rows, manifest says {split.num_samples}")
        return problems
    problems += check_members(split, labels)
    if problems or split.num_samples == 0:
        return problems
    return check_webdataset(split, labels) + check_dali(split, labels, decode)


def main(argv: list[str] | None = None) -> int:
    """Verify the requested splits; exit status 1 on any problem."""
    setup_logging()
    p = argparse.ArgumentParser(prog="python -m shard.verify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="the OUT folder given to python -m shard")
    p.add_argument("--splits", help="comma-separated splits (default: every complete split)")
    p.add_argument("--decode", action="store_true", help="also decode every JPEG with DALI")
    args = p.parse_args(argv)
    names = args.splits.split(",") if args.splits else list_splits(args.out)
    if not names:
        log.error("%s: no complete split (no */manifest.json) found", args.out)
        return 1
    failed = False
    for name in names:
        try:
            problems = verify_split(open_split(args.out, name), args.decode)
        except ShardFormatError as e:
            problems = [str(e)]
        for line in problems:
            log.error("%s", line)
        log.info("%s: %s", name, f"{len(problems)} problem(s)" if problems else "ok")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
