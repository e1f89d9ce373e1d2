"""python -m probe.msn STORE --encoder E --subset FILE: the MSN paper's low-shot protocol.

    make subsets    # the official subset files, e.g. subsets/imagenet_subsets1/5imgs_class.txt
    python -m probe.msn out/embeddings.zarr --encoder vits16_800ep \
        --subset subsets/imagenet_subsets1/5imgs_class.txt --out out/probe

FILE lists training image file names, one per line (`n04235860_14959.JPEG`), as MSN's
`imagenet_subsets*/` files do. As in MSN's logistic_eval.py (cyanure), each row is centered
(its mean over features subtracted) and L2-normalized, then a multinomial logistic
regression without intercept is fit with the L2 weight lambd / n on the mean loss, which is
scikit-learn's C = 1 / lambd on the summed loss (default lambd 0.00025). Reports top-1 on
the test split and appends it to DIR/msn.csv.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path, PurePosixPath

import numpy as np

from embed.store import EmbeddingSet, StoreError, open_embeddings
from probe.backends import BACKENDS, fit_predict, resolve
from probe.fewshot import score
from probe.results import append_csv

log = logging.getLogger("probe")
LAMBD = 0.00025


def subset_indices(train: EmbeddingSet, names: list[str], source: Path) -> np.ndarray:
    """Store rows of the listed file names; every name must be there."""
    by_name = {PurePosixPath(p).name: i for i, p in enumerate(train.paths)}
    missing = [n for n in names if n not in by_name]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{source}: {len(missing)} of {len(names)} names are not in "
                         f"{train.encoder}/{train.split} (e.g. {shown})")
    return np.array([by_name[n] for n in names])


def center_normalize(x: np.ndarray) -> np.ndarray:
    """Rows [n, D] minus their own mean, scaled to unit L2 norm (cyanure's preprocess)."""
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def run_subset(train: EmbeddingSet, test: EmbeddingSet, subset: Path, *, lambd: float = LAMBD,
               max_iter: int = 1000, backend: str = "sklearn") -> dict:
    """Fit on the subset's rows, score top-1 on the whole test split."""
    names = [line.strip() for line in subset.read_text().splitlines() if line.strip()]
    idx = subset_indices(train, names, subset)
    order = np.argsort(idx)
    x = np.empty((len(idx), train.shape[1]), dtype=np.float32)
    x[order] = train.embeddings.get_orthogonal_selection((idx[order], slice(None)))
    test_x = np.concatenate([b for _, b in test.row_blocks()])
    t = time.perf_counter()
    probs, classes = fit_predict(backend, center_normalize(x), train.labels[idx],
                                 center_normalize(test_x), C=1.0 / lambd, max_iter=max_iter,
                                 fit_intercept=False)
    top1, _ = score(probs, classes, test.labels.astype(np.int64))
    return {"encoder": train.encoder, "subset": subset.name, "images": len(idx), "lambd": lambd,
            "top1": top1, "backend": backend, "fit_seconds": round(time.perf_counter() - t, 3)}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("probe").setLevel(logging.INFO)
    p = argparse.ArgumentParser(prog="python -m probe.msn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=Path)
    p.add_argument("--encoder", required=True)
    p.add_argument("--subset", type=Path, required=True, nargs="+", help="one or more subset files")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="val")
    p.add_argument("--lambd", type=float, default=LAMBD, help="L2 weight, default 0.00025")
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--out", type=Path, default=None, help="append results to OUT/msn.csv")
    a = p.parse_args(argv)
    try:
        backend = resolve(a.backend)
        train = open_embeddings(a.store, a.encoder, a.train_split)
        test = open_embeddings(a.store, a.encoder, a.test_split)
        rows = [run_subset(train, test, s, lambd=a.lambd, max_iter=a.max_iter, backend=backend)
                for s in a.subset]
    except (StoreError, ValueError, RuntimeError, OSError) as e:
        log.error("%s", e)
        return 1
    for r in rows:
        print(f"{r['encoder']} {r['subset']} ({r['images']} images): top-1 {100 * r['top1']:.2f}%")
    if a.out:
        append_csv(a.out / "msn.csv", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
