"""The reference few-shot protocol, exactly, and fast.

For each seed: rng = default_rng(seed); for n = 1, 2, ... (every n up to the largest asked
for, so draws match the reference even when only some n are fitted): draw n per class,
fit L2 logistic regression on the train-standardized rows, score on the test split.
Rows are appended to fewshot.csv as they finish; a rerun skips rows already there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import log_loss

from embed.store import EmbeddingSet
from msnpipe.pool import ordered_map, worker_pool
from probe.backends import fit_predict
from probe.data import ClassSampler, Standardized, read_rows
from probe.results import ResultFile, read_results

log = logging.getLogger("probe")


@dataclass(frozen=True)
class Protocol:
    """What to fit: label counts, seeds, C values, iterations, backend."""

    per_class: tuple[int, ...] = tuple(range(1, 11))
    seeds: tuple[int, ...] = tuple(range(20))
    Cs: tuple[float, ...] = (1.0,)
    max_iter: int = 1000
    backend: str = "sklearn"
    jobs: int = 1  # fits run at once, each in its own process with one BLAS thread (sklearn)


def draws(sampler: ClassSampler, seed: int, per_class: tuple[int, ...]) -> Iterator[tuple[int, np.ndarray]]:
    """(n, indices) for every n in `per_class`, consuming the rng as the reference does."""
    rng = np.random.default_rng(seed)
    wanted = set(per_class)
    for n in range(1, max(per_class) + 1):
        inds = sampler.draw(n, rng)
        if n in wanted:
            yield n, inds


def score(probs: np.ndarray, classes: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, log-likelihood = minus log loss) of test probabilities [N, K]."""
    acc = float(np.mean(classes[probs.argmax(1)] == y))
    return acc, float(-log_loss(y, probs, labels=classes))


def run_curve(train: EmbeddingSet, test: Standardized, mean: np.ndarray, std: np.ndarray,
              proto: Protocol, results: ResultFile, sampler: ClassSampler) -> list[dict]:
    """Fit every (seed, n, C) not yet in `results`; append each row as it finishes."""
    parallel = proto.jobs > 1 and proto.backend == "sklearn"
    with worker_pool(proto.jobs, _one_blas_thread) if parallel else nullcontext() as pool:
        return [row for seed in proto.seeds
                for row in _one_seed(train=train, test=test, mean=mean, std=std, proto=proto,
                                     sampler=sampler, seed=seed, results=results, pool=pool)]


def _one_blas_thread() -> None:
    """Worker initializer: fits run side by side, one BLAS thread each."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _fit_score(task: tuple) -> tuple[float, float, float]:
    """(accuracy, log-likelihood, seconds) of one fit (backend, x, y, test, C, max_iter)."""
    backend, x, y, test, C, max_iter = task
    t = time.perf_counter()
    probs, classes = fit_predict(backend, x, y, test.x, C=C, max_iter=max_iter)
    acc, loglik = score(probs, classes, test.y)
    return acc, loglik, round(time.perf_counter() - t, 4)


def _key_row(encoder: str, seed: int, n: int, C: float) -> dict:
    return {"encoder": encoder, "seed": seed, "n_per_class": n, "C": C}


def _one_seed(*, train: EmbeddingSet, test: Standardized, mean: np.ndarray, std: np.ndarray,
              proto: Protocol, sampler: ClassSampler, seed: int, results: ResultFile,
              pool: ProcessPoolExecutor | None) -> list[dict]:
    """Every fit of one seed that `results` lacks, rows read in one sorted selection."""
    todo = [(n, inds) for n, inds in draws(sampler, seed, proto.per_class)
            if any(not results.has(_key_row(train.encoder, seed, n, C)) for C in proto.Cs)]
    if not todo:
        return []
    union = np.concatenate([inds for _, inds in todo])
    x_all = read_rows(train, union, mean, std)  # [sum n*K, D], one read per seed
    y_all = train.labels[union]
    tasks, offset = [], 0
    for n, inds in todo:
        x, y = x_all[offset : offset + len(inds)], y_all[offset : offset + len(inds)]
        offset += len(inds)
        tasks += [(n, len(inds), C, x, y) for C in proto.Cs
                  if not results.has(_key_row(train.encoder, seed, n, C))]
    fits = [(proto.backend, x, y, test, C, proto.max_iter) for _, _, C, x, y in tasks]
    rows = []
    for (n, n_labels, C, _, _), (acc, loglik, secs) in zip(tasks, ordered_map(pool, _fit_score, fits)):
        row = _key_row(train.encoder, seed, n, C) | {
            "n_labels": n_labels, "test_acc": acc, "test_loglik": loglik, "backend": proto.backend,
            "fit_seconds": secs}
        results.append(row)
        rows.append(row)
        log.debug("seed %d, %d labels, C %g: acc %.4f, loglik %.4f (%.2f s)", seed, n_labels, C,
                  acc, loglik, secs)
    log.info("seed %d: %d fits, accuracy %s", seed, len(rows), " ".join(f"{r['test_acc']:.3f}" for r in rows))
    return rows


def write_seed_layout(csv_path: Path, out: Path) -> list[Path]:
    """The reference's <encoder>[_C<c>]/testing_seedNN.csv files, from fewshot.csv."""
    rows = read_results(csv_path)
    Cs = sorted({float(r["C"]) for r in rows})
    groups: dict[tuple[str, float, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["encoder"], float(r["C"]), int(r["seed"])), []).append(r)
    written = []
    for (encoder, C, seed), rs in sorted(groups.items()):
        folder = out / (encoder if len(Cs) == 1 else f"{encoder}_C{C:g}")
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["n_labels,test_acc,test_loglik"] + [
            f"{int(r['n_labels']):03},{float(r['test_acc']):.4f},{float(r['test_loglik']):.4f}"
            for r in sorted(rs, key=lambda r: int(r["n_labels"]))]
        path = folder / f"testing_seed{seed:02}.csv"
        path.write_text("\n".join(lines) + "\n")
        written.append(path)
    return written
