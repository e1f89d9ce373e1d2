"""python -m shard SRC OUT: an ImageFolder becomes validated WebDataset shards.

    python -m shard /data/imagenet out/shards                     # SRC/train, SRC/val
    python -m shard /data/imagenet out/shards --splits val        # only some splits
    python -m shard /data/pets out/shards --split train           # SRC is a class-folder tree
    python -m shard /data/imagenet out/shards --workers 8 --samples-per-shard 1000
    python -m shard /data/voc07 out/shards --split trainval --labels trainval.tsv  # multi-label
    python -m shard /data/sub out/shards --split val --classes-from train  # val lacks classes

A killed run, started again with the same command, finishes the job; a finished split
is left alone. See docs/formats.md for the output format.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path

from msnpipe import remote
from msnpipe.files import plain_name, writable_dir
from msnpipe.pool import worker_pool
from msnpipe.runtime import UserError, command, difference
from shard.build import Settings, report, shard_split
from shard.images import VALIDATE
from shard.reader import MANIFEST, default_cache, list_splits, read_manifest
from shard.scan import (
    Candidate,
    ScanError,
    check_same_classes,
    check_subset,
    find_classes,
    read_label_list,
    resolve_splits,
)

log = logging.getLogger("shard")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be a whole number >= 1")
    return value


def _quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text}: JPEG quality must be in 1..100")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of `python -m shard`."""
    p = argparse.ArgumentParser(prog="python -m shard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="ImageFolder root holding train/ and/or val/")
    p.add_argument("out", help="output folder, or a URL (s3://bucket/prefix); split S goes to OUT/S/")
    p.add_argument("--stage", type=Path, default=None,
                   help="with a URL OUT: the local folder where shards are built before their upload "
                        "(default: $MSNPIPE_CACHE or ~/.cache/msnpipe, then the URL's path, then .stage)")
    p.add_argument("--split", help="SRC is itself one class-folder tree; name the split")
    p.add_argument("--splits", help="comma-separated split folders of SRC (default: train,val found)")
    p.add_argument("--labels", type=Path, default=None,
                   help="multi-label list file (path<TAB>label,label per line, paths relative to "
                        "SRC); needs --split")
    p.add_argument("--classes-from", metavar="SPLIT", default=None,
                   help="number labels by the class list of SPLIT, already sharded in OUT (for a "
                        "split that lacks some classes)")
    p.add_argument("--samples-per-shard", type=_positive, default=1000, help="default 1000")
    p.add_argument("--workers", type=_positive, default=len(os.sched_getaffinity(0)) + 1,
                   help="worker processes (default: cores + 1, so one works while another waits for "
                        "its shard's fsync)")
    p.add_argument("--max-side", type=_positive, default=None,
                   help="shrink images whose longer side exceeds PX (off: it changes embeddings)")
    p.add_argument("--quality", type=_quality, default=95, help="JPEG quality of re-encoded images")
    p.add_argument("--validate", choices=VALIDATE, default="fast",
                   help="fast (default): a JPEG that passes the structural check (what every embed "
                        "decoder reads) is kept on it alone, anything else is decoded by PIL; full: "
                        "decode every file with PIL too")
    p.add_argument("--strict", action="store_true",
                   help="fail before writing any shard if a file would be skipped")
    args = p.parse_args(argv)
    if args.split and args.splits:
        p.error("give --split (SRC is one split) or --splits (SRC holds split folders), not both")
    if args.labels and not args.split:
        p.error("--labels needs --split NAME (the list's paths are relative to SRC)")
    return args


def check_nesting(src: Path, out: Path) -> None:
    """OUT inside SRC would become a class (or images) of a later run; SRC inside OUT mixes
    inputs with outputs. Both are refused."""
    s, o = src.resolve(), out.resolve()
    if o == s or s in o.parents:
        raise UserError(f"OUT {out} is inside the source {src}: a later run would take the shards "
                        "for images or classes; put OUT outside SRC")
    if o in s.parents:
        raise UserError(f"OUT {out} contains the source {src}; put OUT beside SRC, not above it")


def _finished_classes(out: str, skip: set[str]) -> dict[str, list[str]]:
    """Class lists of the splits already complete in OUT (a folder or a URL), other than `skip`."""
    if remote.is_url(out):
        def manifest(s: str) -> dict:
            url = remote.join(out, s, MANIFEST)
            return read_manifest(url, remote.read_bytes(url))
        return {s: manifest(s)["classes"] for s in list_splits(out) if s not in skip}
    if not remote.local(out).is_dir():
        return {}
    return {s: read_manifest(remote.local(out) / s / MANIFEST)["classes"] for s in list_splits(out)
            if s not in skip}


def class_lists(args: argparse.Namespace, splits: dict[str, Path]
                ) -> tuple[dict[str, list[str]], list[Candidate] | None]:
    """The class list of each split (and the multi-label candidates), checked against the
    splits already in OUT: one list for all, or the one --classes-from names."""
    done = _finished_classes(args.out, set(splits))
    reference = None
    if args.classes_from:
        if args.classes_from not in done:
            raise UserError(f"--classes-from {args.classes_from}: no finished split of that name in "
                            f"{args.out} (it holds: {', '.join(done) or 'none'})")
        reference = done[args.classes_from]
    listed = None
    if args.labels:
        names, listed = read_label_list(args.labels, reference)
        classes = {args.split: names}
    else:
        classes = {name: find_classes(d) for name, d in splits.items()}
    if reference is not None:
        for name, found in classes.items():
            check_subset(name, found, args.classes_from, reference=reference)
        return {name: reference for name in classes}, listed
    check_same_classes(classes)
    mine, first = next(iter(classes.items()))
    for other, theirs in done.items():
        if theirs != first:
            raise ScanError(f"{mine} has classes other than {other} already in {args.out}: "
                            f"{difference(other, theirs, mine, b=first)}; if {mine} legitimately "
                            f"lacks classes, shard it with --classes-from {other}")
    return classes, listed


def run(args: argparse.Namespace) -> list:
    """Shard every requested split; return their summaries."""
    settings = Settings(args.samples_per_shard, args.quality, args.max_side, args.validate)
    splits = resolve_splits(args.src, args.split, args.splits and args.splits.split(","))
    if args.classes_from:
        plain_name(args.classes_from, "--classes-from")
    if remote.is_url(args.out):  # built in a local stage, published shard by shard
        remote.check(args.out, write=True)
        root, publish_to = args.stage or default_cache(args.out) / ".stage", args.out
    else:
        root, publish_to = remote.local(args.out), None
    check_nesting(args.src, root)
    writable_dir(root, "--stage" if publish_to else "OUT")
    classes, listed = class_lists(args, splits)
    log.info("splits %s, %d classes%s, settings %s, %d workers", ", ".join(splits),
             len(next(iter(classes.values()))), " (multi-label)" if listed else "", settings,
             args.workers)
    # fork: workers start with this process's imports (no CUDA here, no threads yet)
    with worker_pool(args.workers, method="fork") if args.workers > 1 else nullcontext() as pool:
        return [shard_split(name, d, root, classes=classes[name], settings=settings, pool=pool,
                            strict=args.strict, listed=listed, publish_to=publish_to)
                for name, d in splits.items()]


def main(argv: list[str] | None = None) -> int:
    """Shard every requested split; return the exit status."""
    return command(parse_args, run, argv, logger="shard",
                   done=lambda _, summaries: log.info("done:\n%s", report(summaries)))


if __name__ == "__main__":
    sys.exit(main())
