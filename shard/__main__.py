"""python -m shard SRC OUT: an ImageFolder becomes validated WebDataset shards.

    python -m shard /data/imagenet out/shards                     # SRC/train, SRC/val
    python -m shard /data/imagenet out/shards --splits val        # only some splits
    python -m shard /data/pets out/shards --split train           # SRC is a class-folder tree
    python -m shard /data/imagenet out/shards --workers 8 --samples-per-shard 1000
    python -m shard /data/voc07 out/shards --split trainval --labels trainval.tsv  # multi-label

A killed run, started again with the same command, finishes the job; a finished split
is left alone. See README.md for the output format.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from shard.build import Settings, StrictError, report, shard_split
from shard.scan import ScanError, check_same_classes, find_classes, read_label_list, resolve_splits

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
    p.add_argument("out", type=Path, help="output folder; split S goes to OUT/S/")
    p.add_argument("--split", help="SRC is itself one class-folder tree; name the split")
    p.add_argument("--splits", help="comma-separated split folders of SRC (default: train,val found)")
    p.add_argument("--labels", type=Path, default=None,
                   help="multi-label list file (path<TAB>label,label per line, paths relative to "
                        "SRC); needs --split")
    p.add_argument("--samples-per-shard", type=_positive, default=1000, help="default 1000")
    p.add_argument("--workers", type=_positive, default=len(os.sched_getaffinity(0)),
                   help="decoding processes (default: all cores)")
    p.add_argument("--max-side", type=_positive, default=None,
                   help="shrink images whose longer side exceeds PX (off: it changes embeddings)")
    p.add_argument("--quality", type=_quality, default=95, help="JPEG quality of re-encoded images")
    p.add_argument("--strict", action="store_true",
                   help="fail before writing any shard if a file would be skipped")
    args = p.parse_args(argv)
    if args.split and args.splits:
        p.error("give --split (SRC is one split) or --splits (SRC holds split folders), not both")
    if args.labels and not args.split:
        p.error("--labels needs --split NAME (the list's paths are relative to SRC)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Shard every requested split; return the exit status."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("shard").setLevel(logging.INFO)
    args = parse_args(argv)
    settings = Settings(args.samples_per_shard, args.quality, args.max_side)
    try:
        splits = resolve_splits(args.src, args.split, args.splits and args.splits.split(","))
        listed = None
        if args.labels:
            names, listed = read_label_list(args.labels)
            classes = {args.split: names}
        else:
            classes = {name: find_classes(d) for name, d in splits.items()}
        check_same_classes(classes)
        log.info("splits %s, %d classes%s, settings %s, %d workers", ", ".join(splits),
                 len(next(iter(classes.values()))), " (multi-label)" if listed else "", settings,
                 args.workers)
        summaries = [
            shard_split(name, d, args.out, classes[name], settings, args.workers, args.strict, listed)
            for name, d in splits.items()
        ]
    except (ScanError, StrictError, ValueError, RuntimeError) as e:
        log.error("%s", e)
        return 1
    log.info("done:\n%s", report(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
