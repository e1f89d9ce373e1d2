"""The reference few-shot protocol, exactly, and fast.

For each seed: rng = default_rng(seed); for n = 1, 2, ... (every n up to the largest asked
for, so draws match the reference even when only some n are fitted): draw n per class,
fit L2 logistic regression on the train-standardized rows, score on the test split.
Rows are appended to fewshot.csv as they finish; a rerun skips rows already there.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import log_loss

from embed.store import EmbeddingSet
from probe.backends import fit_predict
from probe.data import ClassSampler, Standardized, read_rows

log = logging.getLogger("probe")
COLUMNS = ("encoder", "seed", "n_per_class", "n_labels", "test_acc", "test_loglik", "C", "backend",
           "fit_seconds")


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


def done_rows(path: Path) -> set[tuple[str, int, int, float]]:
    """(encoder, seed, n_per_class, C) already in the CSV; a cut last line is cut off."""
    if not path.exists():
        return set()
    text = path.read_text()
    if text and not text.endswith("\n"):
        path.write_text(text[: text.rfind("\n") + 1])
    with open(path, newline="") as f:
        return {(r["encoder"], int(r["seed"]), int(r["n_per_class"]), float(r["C"]))
                for r in csv.DictReader(f)}


def run_curve(train: EmbeddingSet, test: Standardized, mean: np.ndarray, std: np.ndarray,
              proto: Protocol, csv_path: Path, sampler: ClassSampler) -> list[dict]:
    """Fit every (seed, n, C) not yet in `csv_path`; append each row as it finishes."""
    skip = done_rows(csv_path)
    new = not csv_path.exists()
    rows = []
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        if new:
            w.writeheader()
        for seed in proto.seeds:
            rows += _one_seed(train, test, mean, std, proto, sampler, seed, skip, w, f)
    return rows


def _fit_score(backend: str, x: np.ndarray, y: np.ndarray, test: Standardized, C: float,
               max_iter: int, threads: int | None) -> tuple[float, float, float]:
    """(accuracy, log-likelihood, seconds) of one fit; `threads` caps BLAS threads in a worker."""
    from threadpoolctl import threadpool_limits

    t = time.perf_counter()
    with threadpool_limits(threads):
        probs, classes = fit_predict(backend, x, y, test.x, C=C, max_iter=max_iter)
    acc, loglik = score(probs, classes, test.y)
    return acc, loglik, round(time.perf_counter() - t, 4)


def _one_seed(train, test, mean, std, proto, sampler, seed, skip, writer, f) -> list[dict]:
    todo = [(n, inds) for n, inds in draws(sampler, seed, proto.per_class)
            if any((train.encoder, seed, n, C) not in skip for C in proto.Cs)]
    if not todo:
        return []
    union = np.concatenate([inds for _, inds in todo])
    x_all = read_rows(train, union, mean, std)  # [sum n*K, D], one read per seed
    y_all = train.labels[union]
    tasks, offset = [], 0
    for n, inds in todo:
        x, y = x_all[offset : offset + len(inds)], y_all[offset : offset + len(inds)]
        offset += len(inds)
        tasks += [(n, len(inds), C, x, y) for C in proto.Cs if (train.encoder, seed, n, C) not in skip]
    rows = []
    for (n, n_labels, C, _, _), (acc, loglik, secs) in zip(tasks, _fits(tasks, test, proto)):
        row = {"encoder": train.encoder, "seed": seed, "n_per_class": n, "n_labels": n_labels,
               "test_acc": acc, "test_loglik": loglik, "C": C, "backend": proto.backend,
               "fit_seconds": secs}
        writer.writerow(row)
        f.flush()
        rows.append(row)
        log.debug("seed %d, %d labels, C %g: acc %.4f, loglik %.4f (%.2f s)", seed, n_labels, C,
                  acc, loglik, secs)
    log.info("seed %d: %d fits, accuracy %s", seed, len(rows), " ".join(f"{r['test_acc']:.3f}" for r in rows))
    return rows


def _fits(tasks: list[tuple], test: Standardized, proto: Protocol):
    """Results of the tasks in order, as they finish: in this process, or `jobs` workers."""
    if proto.jobs <= 1 or proto.backend != "sklearn" or len(tasks) == 1:
        for _, _, C, x, y in tasks:
            yield _fit_score(proto.backend, x, y, test, C, proto.max_iter, None)
        return
    from joblib import Parallel, delayed

    run = Parallel(n_jobs=proto.jobs, return_as="generator")
    yield from run(delayed(_fit_score)(proto.backend, x, y, test, C, proto.max_iter, 1)
                   for _, _, C, x, y in tasks)


def write_seed_layout(csv_path: Path, out: Path) -> list[Path]:
    """The reference's <encoder>[_C<c>]/testing_seedNN.csv files, from fewshot.csv."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
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
