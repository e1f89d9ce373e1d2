"""Multi-label transfer: one-vs-rest logistic regression on frozen embeddings, mean average
precision, as in the VOC07 evaluation of seed 004 (MV-MR).

    python -m shard /data/VOC2007 out/shards --split trainval --labels trainval.tsv
    python -m shard /data/VOC2007 out/shards --split test --labels test.tsv
    python -m embed out/shards --split trainval ... ; python -m embed out/shards --split test ...
    python -m probe out/embeddings.zarr --encoder E --multilabel --train-split trainval \
        --test-split test --C 0.01,0.1,1,10 --out out/voc07

Features are standardized with the train split's statistics; one binary L2 logistic
regression per class (scikit-learn, or cuML on a GPU) for each C. Reports mAP (mean over
classes of scikit-learn's `average_precision_score`) and the VOC07 11-point interpolated mAP, in
DIR/multilabel.csv. The whole train split is read (multi-label transfer sets are small).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from embed.store import EmbeddingSet
from msnpipe.runtime import UserError
from probe.backends import fit, predict_proba
from probe.data import load_standardized, mean_std
from probe.results import ResultFile, group_identity

log = logging.getLogger("probe")


def voc07_average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """PASCAL VOC 2007's 11-point interpolated AP: mean over recall r in {0, .1, ..., 1} of
    the best precision at recall >= r."""
    order = np.argsort(-scores, kind="stable")
    hits = positive[order].astype(bool)
    tp = np.cumsum(hits)
    recall, precision = tp / max(1, hits.sum()), tp / np.arange(1, len(hits) + 1)
    return float(np.mean([precision[recall >= r].max() if (recall >= r).any() else 0.0
                          for r in np.linspace(0, 1, 11)]))


def one_vs_rest(backend: str, x: np.ndarray, y: np.ndarray, *, x_test: np.ndarray, C: float,
                max_iter: int, device: str = "cpu") -> np.ndarray:
    """Scores [N_test, C]: P(class c) from one binary logistic regression per class."""
    scores = np.zeros((len(x_test), y.shape[1]), dtype=np.float64)
    for c in range(y.shape[1]):
        if y[:, c].min() == y[:, c].max():  # a class with no positives (or no negatives) in train
            scores[:, c] = float(y[0, c])
            continue
        head = fit(backend, x, y[:, c], C=C, max_iter=max_iter, device=device)
        scores[:, c] = predict_proba(head, x_test)[:, list(head.classes).index(1)]
    return scores


def run_multilabel(train: EmbeddingSet, test: EmbeddingSet, *, Cs: tuple[float, ...], max_iter: int,
                   backend: str, out: Path, device: str = "cpu") -> list[dict]:
    """mAP and VOC07 mAP of one-vs-rest fits for each C; rows appended to out/multilabel.csv."""
    from sklearn.metrics import average_precision_score

    if train.labels.ndim != 2 or test.labels.ndim != 2:
        raise UserError(f"{train.encoder}: --multilabel needs multi-hot labels [N, C] in both splits "
                         "(shard them with --labels FILE)")
    mean, std = mean_std(train)
    tr, te = load_standardized(train, mean, std), load_standardized(test, mean, std)
    y, y_test = train.labels, test.labels
    ident = group_identity(train, test, max_iter=max_iter, solve="optimum", backend=backend)
    rows = []
    with ResultFile.open(out, "multilabel", ident) as results:
        for C in (C for C in Cs if not results.has({"encoder": train.encoder, "C": C})):
            t = time.perf_counter()
            scores = one_vs_rest(backend, tr.x, y, x_test=te.x, C=C, max_iter=max_iter, device=device)
            present = [c for c in range(y_test.shape[1]) if y_test[:, c].any()]
            row = {"encoder": train.encoder, "C": C,
                   "mAP": float(np.mean([average_precision_score(y_test[:, c], scores[:, c])
                                         for c in present])),
                   "voc07_mAP": float(np.mean([voc07_average_precision(scores[:, c], y_test[:, c])
                                               for c in present])),
                   "classes": len(present), "train": len(y), "test": len(y_test), "backend": backend,
                   "fit_seconds": round(time.perf_counter() - t, 3)}
            log.info("C %g: mAP %.4f, VOC07 mAP %.4f", C, row["mAP"], row["voc07_mAP"])
            results.append(row)
            rows.append(row)
    return rows
