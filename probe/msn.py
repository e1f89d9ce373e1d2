"""python -m probe.msn STORE --encoder E --subset FILE: the MSN paper's low-shot protocol.

    make subsets    # the official subset files, e.g. subsets/imagenet_subsets1/5imgs_class.txt
    python -m probe.msn out/embeddings.zarr --encoder vits16_800ep \
        --subset subsets/imagenet_subsets1/5imgs_class.txt --out out/probe

FILE lists training image file names, one per line (`n04235860_14959.JPEG`), as MSN's
`imagenet_subsets*/` files do. As in MSN's logistic_eval.py (cyanure), each row is centered
(its mean over features subtracted) and L2-normalized, then a multinomial logistic
regression without intercept is fit with the L2 weight lambd / n on the mean loss, which is
scikit-learn's C = 1 / lambd on the summed loss (default lambd 0.00025). Reports top-1 on
the test split and, with --out, appends it to DIR/msn.csv (a subset already there is not fit
again; DIR/msn.json records the settings). A name that matches files of two classes is an
error, as is a name not in the store.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path, PurePosixPath

import numpy as np

from embed.store import EmbeddingSet
from msnpipe.remote import local_only, location
from msnpipe.runtime import UserError, command, few, pick_device
from probe.args import at_least, positive_float
from probe.backends import CHOICES, convergence, fit, resolve, score
from probe.data import open_pair
from probe.results import ResultFile, group_identity

log = logging.getLogger("probe")
LAMBD = 0.00025


def subset_name(path: Path) -> str:
    """How results name a subset file: with its folder, since MSN's imagenet_subsets1/, 2/ and 3/
    hold files of the same names."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def read_subset(path: Path) -> list[str]:
    """The image names of a subset file, one per line; an error if there are none."""
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read ({e})") from None
    if not names:
        raise UserError(f"{path}: no image names in it (expected one file name per line)")
    return names


def subset_indices(train: EmbeddingSet, names: list[str], source: Path) -> np.ndarray:
    """Store rows of the listed file names; every name must be there, once."""
    if train.paths is None:
        raise UserError(f"{train.encoder}/{train.split} holds no source paths (imported without "
                        f"filepaths_{train.split}.txt), so subset files cannot name its rows")
    by_name: dict[str, list[int]] = {}
    for i, p in enumerate(train.paths):
        by_name.setdefault(PurePosixPath(p).name, []).append(i)
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UserError(f"{source}: {len(missing)} of {len(names)} names are not in "
                        f"{train.encoder}/{train.split} (e.g. {few(missing)})")
    paths = train.paths
    several = [f"{n} ({', '.join(paths[i] for i in by_name[n])})" for n in dict.fromkeys(names)
               if len(by_name[n]) > 1]
    if several:
        raise UserError(f"{source}: {len(several)} names match several files of {train.encoder}/"
                        f"{train.split}: {few(several, 3)}; a subset must name each image once")
    return np.array([by_name[n][0] for n in names])


def center_normalize(x: np.ndarray) -> np.ndarray:
    """Rows [n, D] minus their own mean, scaled to unit L2 norm (cyanure's preprocess)."""
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def run_subset(train: EmbeddingSet, test: EmbeddingSet, subset: Path, *, lambd: float = LAMBD,
               max_iter: int = 1000, backend: str = "sklearn", device: str = "cpu") -> dict:
    """Fit on the subset's rows, score top-1 on the whole test split."""
    idx = subset_indices(train, read_subset(subset), subset)
    x = train.rows(idx)  # [n, D]
    test_x = np.concatenate([b for _, b in test.row_blocks()])
    t = time.perf_counter()
    head = fit(backend, center_normalize(x), train.labels[idx], C=1.0 / lambd, max_iter=max_iter,
               fit_intercept=False, device=device)
    top1, _ = score(head, center_normalize(test_x), test.labels.astype(np.int64))
    return {"encoder": train.encoder, "subset": subset_name(subset), "images": len(idx), "lambd": lambd,
            "top1": top1, "backend": backend, "fit_seconds": round(time.perf_counter() - t, 3),
            "n_iter": head.n_iter} | convergence(head)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m probe.msn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=location, help="a Zarr store: a folder or a URL (s3://...)")
    p.add_argument("--encoder", required=True)
    p.add_argument("--subset", type=Path, required=True, nargs="+", help="one or more subset files")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="val")
    p.add_argument("--lambd", type=positive_float, default=LAMBD, help="L2 weight, default 0.00025")
    p.add_argument("--max-iter", type=at_least(1), default=1000)
    p.add_argument("--backend", choices=CHOICES, default="auto",
                   help="auto: torch on a GPU, else numpy (scikit-learn's solve, faster)")
    p.add_argument("--device", default="auto", help="where the torch backend runs: auto, cpu, cuda[:N]")
    p.add_argument("--out", type=local_only, default=None, help="append results to OUT/msn.csv")
    return p.parse_args(argv)


def run(a: argparse.Namespace) -> list[dict]:
    """Fit every subset (those not in OUT/msn.csv yet) and record it."""
    backend = resolve(a.backend)
    device = str(pick_device(a.device)) if backend == "torch" else "cpu"
    train, test = open_pair(a.store, a.encoder, a.train_split, test_split=a.test_split)
    train.require_finite()  # subsets read a few rows: check them all before anything is fit
    fit = lambda s: run_subset(train, test, s, lambd=a.lambd, max_iter=a.max_iter,  # noqa: E731
                               backend=backend, device=device)
    if a.out is None:
        return [fit(s) for s in a.subset]
    ident = group_identity(train, test, lambd=a.lambd, max_iter=a.max_iter, solve="optimum", backend=backend)
    rows = []
    with ResultFile.open(a.out, "msn", ident, settings=vars(a)) as results:
        for s in a.subset:
            if not results.has({"encoder": a.encoder, "subset": subset_name(s)}):
                rows.append(fit(s))
                results.append(rows[-1])
    return rows


def _show(a: argparse.Namespace, rows: list[dict]) -> None:
    for r in rows:
        print(f"{r['encoder']} {r['subset']} ({r['images']} images): top-1 {100 * r['top1']:.2f}%")


def main(argv: list[str] | None = None) -> int:
    return command(_parse, run, argv, logger="probe", done=_show)


if __name__ == "__main__":
    sys.exit(main())
