"""python -m embed.info STORE: what a store's attributes and done-flags say about each group.

    python -m embed.info out/embeddings.zarr

It reads the attributes and the `shards_done` flags, not the rows: "marked done" means a
writer recorded the shard as written. `python -m embed.verify STORE` reads every chunk back.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from embed import store
from embed.store import store_exists
from msnpipe.remote import location


def describe(path: Path) -> list[str]:
    """One line per (encoder, split) group."""
    lines = []
    for encoder, split in store.list_groups(path):
        g = store.open_group(path, encoder, split)
        done = store.done_shards(g)
        a = g.attrs.asdict()
        n, d = g["embeddings"].shape
        state = (f"{int(done.sum())}/{len(done)} shards marked done" +
                 ("" if a.get("complete") else ", INCOMPLETE: rerun python -m embed"))
        extra = " RANDOM WEIGHTS" if a.get("random_weights") else ""
        drift = a.get("drift")
        drift_txt = f", drift min cos {drift['min_cos']:.5f}" if drift else ""
        lines.append(f"{encoder}/{split}: {n} x {d} {g['embeddings'].dtype}, {a.get('kind', '?')}, "
                     f"{a.get('precision', '?')}, {state}{drift_txt}{extra}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the store's groups; exit status 1 if there is no store."""
    p = argparse.ArgumentParser(prog="python -m embed.info", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=location, help="a Zarr store: a folder or a URL (s3://...)")
    a = p.parse_args(argv)
    if not store_exists(a.store):
        print(f"{a.store}: not a Zarr store", file=sys.stderr)
        return 1
    lines = describe(a.store)
    print("\n".join(lines) or f"{a.store}: empty")
    if lines:
        print("(flags and attributes only; python -m embed.verify reads every chunk back)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
