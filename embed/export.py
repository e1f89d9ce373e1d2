"""python -m embed.export STORE --encoder E --split S --out DIR: the reference's file layout.

    python -m embed.export out/embeddings.zarr --encoder vits16_800ep --split val --out data/

writes DIR/embeddings_<E>_<S>.npy (float32 [N, D]), DIR/labels_<S>.npy (int64 [N], as the
reference's torch labels) and DIR/filepaths_<S>.txt (one `<class>/<file>` per line), so the
reference's evaluate_embeddings.py and other scripts read msnpipe output unchanged.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from embed.store import open_embeddings
from msnpipe.runtime import command

log = logging.getLogger("embed.export")


def export(store: Path, encoder: str, split: str, *, out: Path) -> list[Path]:
    """Write the three reference files for (encoder, split); return their paths."""
    e = open_embeddings(store, encoder, split)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"embeddings_{encoder}_{split}.npy", out / f"labels_{split}.npy",
             out / f"filepaths_{split}.txt"]
    rows = np.lib.format.open_memmap(paths[0], mode="w+", dtype=np.float32, shape=e.shape)
    for start, block in e.row_blocks():
        rows[start : start + len(block)] = block  # [b, D], never the whole array in memory
    rows.flush()
    np.save(paths[1], e.labels.astype(np.int64))
    paths[2].write_text("".join(p + "\n" for p in e.paths), encoding="utf-8")
    return paths


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m embed.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=Path)
    p.add_argument("--encoder", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Export one (encoder, split); exit status 1 with a clear message on a bad store."""
    return command(_parse, lambda a: export(a.store, a.encoder, a.split, out=a.out), argv, logger="embed",
                   done=lambda _, written: log.info("wrote %s", ", ".join(map(str, written))))


if __name__ == "__main__":
    sys.exit(main())
