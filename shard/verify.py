"""python -m shard.verify OUT: re-read finished shard splits and check every byte.

    python -m shard.verify out/shards                # every complete split under OUT
    python -m shard.verify out/shards --splits val --decode
    python -m shard.verify out/shards --decoders libjpeg-turbo,dali-cpu --workers 8

Checks, per split: each tar's size and sha256 against the manifest; the member names,
order and labels of each tar against samples.tsv (this catches a tar cut short between
two members, which tar readers accept silently); each .idx against an index rebuilt from
its tar; and that the `webdataset` package and DALI's `fn.readers.webdataset` (CPU, when
DALI is installed) both read every sample with the right key and label. `--decode` also
decodes every JPEG with every decoder of the embed stage that can run here (msnpipe.decoders:
libjpeg-turbo, DALI and nvImageCodec on the CPU; nvJPEG, DALI mixed and nvImageCodec on a
GPU), each in worker processes, so a decoder that crashes names the sample instead of ending
the run; `--decoders` names the ones to use. Exit status 1 and one line per problem (for a
sample: shard, key, source path, decoder and its message) on any mismatch.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
import sys
import tarfile
from pathlib import Path

import numpy as np

from msnpipe import remote
from msnpipe.decoders import DECODERS, Sample, failures, usable
from msnpipe.remote import location
from msnpipe.runtime import UserError, command
from shard.reader import ShardFormatError, Split, list_splits, open_split, read_index
from shard.writer import index_of_tar

log = logging.getLogger("shard.verify")


def check_files(split: Split) -> list[str]:
    """Size, first header and sha256 of every tar against the manifest."""
    return [p for i in range(len(split.shards)) if (p := split.tar_problem(i, content=True)) is not None]


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


def check_dali(split: Split, labels: list[str], *, batch: int = 64) -> list[str]:
    """Read every sample through DALI's webdataset reader on the CPU."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=batch, num_threads=2, device_id=None, exec_dynamic=True)
    def pipe():
        jpg, cls = fn.readers.webdataset(
            paths=[str(p) for p in split.tar_paths()], index_paths=[str(p) for p in split.idx_paths()],
            ext=["jpg", "cls"], missing_component_behavior="error", pad_last_batch=True, name="r")
        return cls, fn.get_property(jpg, key="source_info")

    p = pipe()
    p.build()
    keys, got = [], []
    try:
        for _ in range(-(-split.num_samples // batch)):
            cls, info = p.run()
            keys += [bytes(np.asarray(t)).decode().rsplit(":", 1)[1].split(".")[0] for t in info]
            got += [bytes(np.asarray(t)).decode() for t in cls]
    except RuntimeError as e:
        return [f"DALI's reader: {str(e).splitlines()[0]}"]
    n = split.num_samples
    return _compare("DALI", split, labels, keys=keys[:n], got=got[:n])


def shard_samples(split: Split) -> list[list[Sample]]:
    """The JPEG members of every shard, as the decoders read them (through the .idx)."""
    return [[Sample(key, str(tar), offset, size) for key, ext, offset, size in read_index(idx)
             if ext == "jpg"] for tar, idx in zip(split.tar_paths(), split.idx_paths())]


def check_decodes(split: Split, decoders: list[str], *, workers: int) -> list[str]:
    """Decode every JPEG of the split with each decoder; one line per sample one cannot decode."""
    problems, paths = [], split.paths()
    for decoder in decoders:
        try:
            for _, bad in failures(decoder, shard_samples(split), workers=workers):
                for s, message in bad:
                    where = paths[int(s.key)] if int(s.key) < len(paths) else "?"
                    problems.append(f"{Path(s.path).name}: sample {s.key} ({where}): {decoder}: {message}")
        except RuntimeError as e:
            problems.append(str(e))
    return problems


def verify_split(split: Split, decoders: list[str] = (), *, workers: int = 1) -> list[str]:
    """Every problem found in one split, as one line each (empty when all is well); with
    `decoders`, every JPEG is also decoded by each."""
    problems = check_files(split)
    labels = split.label_texts()
    if len(labels) != split.num_samples:
        problems.append(f"{split.dir}/samples.tsv: {len(labels)} rows, manifest says {split.num_samples}")
        return problems
    problems += check_members(split, labels)
    if problems or split.num_samples == 0:
        return problems
    problems += check_webdataset(split, labels)
    if importlib.util.find_spec("nvidia.dali") is not None:
        problems += check_dali(split, labels)
    return problems + (check_decodes(split, list(decoders), workers=workers) if decoders else [])


def chosen_decoders(decode: bool, names: str | None) -> list[str]:
    """The decoders to decode with: those named, or with --decode all that can run here."""
    can, missing = usable()
    if names is None:
        if decode:
            others = "".join(f"; not {d}: {why}" for d, why in missing.items())
            log.info("decoding with %s%s", ", ".join(can), others)
        return can if decode else []
    asked = [n.strip() for n in names.split(",") if n.strip()]
    for n in asked:
        if n not in DECODERS:
            raise UserError(f"--decoders {n!r}: one of {', '.join(DECODERS)}")
        if n in missing:
            raise UserError(f"--decoders {n}: cannot run here ({missing[n]}); these can: {', '.join(can)}")
    return asked


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m shard.verify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=location, help="the OUT given to python -m shard: a folder or a URL")
    p.add_argument("--splits", help="comma-separated splits (default: every complete split)")
    p.add_argument("--decode", action="store_true",
                   help="also decode every JPEG with every decoder that can run here")
    p.add_argument("--decoders", default=None, help=f"decode with these instead, of: {', '.join(DECODERS)}")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                   help="decoding processes (default: all cores)")
    return p.parse_args(argv)


def _opened(out: Path | str, name: str) -> Split:
    """The split to verify; a remote one copied whole into its cache first (every object the
    manifest lists), where the checks then read it."""
    split = open_split(out, name)
    if split.url is None:
        return split
    log.info("%s: copying its %d shards (%.1f MB) to %s to read them", split.url, len(split.shards),
             sum(s.bytes for s in split.shards) / 1e6, split.dir)
    for s in split.shards:
        for item in (s.idx, s.tar):
            try:
                remote.get_file(remote.join(split.url, item), split.dir / item)
            except FileNotFoundError:
                where = remote.join(split.url, item)
                raise ShardFormatError(f"{where}: missing (the manifest lists it)") from None
    return dataclasses.replace(split, url=None)


def run(a: argparse.Namespace) -> int:
    """Verify the requested splits; return the exit status."""
    decoders = chosen_decoders(a.decode, a.decoders)
    names = a.splits.split(",") if a.splits else list_splits(a.out)
    if not names:
        raise UserError(f"{a.out}: no complete split (no */manifest.json) found")
    failed = False
    for name in names:
        try:
            problems = verify_split(_opened(a.out, name), decoders, workers=max(1, a.workers))
        except ShardFormatError as e:
            problems = [str(e)]
        for line in problems:
            log.error("%s", line)
        how = f", every JPEG decoded by {', '.join(decoders)}" if decoders and not problems else ""
        log.info("%s: %s%s", name, f"{len(problems)} problem(s)" if problems else "ok", how)
        failed |= bool(problems)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Verify the requested splits; exit status 1 on any problem."""
    return command(_parse, run, argv, logger="shard")


if __name__ == "__main__":
    sys.exit(main())
