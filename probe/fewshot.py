"""The reference few-shot protocol, exactly, and fast.

For each seed: rng = default_rng(seed); for n = 1, 2, ... (every n up to the largest asked
for, so draws match the reference even when only some n are fitted): draw n per class,
fit L2 logistic regression on the train-standardized rows, score on the test split.
Rows are appended to fewshot.csv as they finish; a rerun skips rows already there.

scikit-learn, numpy and cuML fit one problem at a time. The CPU backends (scikit-learn, numpy)
fit in this process with one BLAS thread (measured: a 1000-class scikit-learn fit ran 2.3x
faster than with two); once the fits done here have taken POOL_AFTER_S, the rest go to up to
`jobs` worker processes (one thread each) when that saves more than starting them costs
(POOL_START_S), so small curves never pay for a pool. torch fits every seed and C of one label
count as one batched problem (probe.torch_lr).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embed.store import EmbeddingSet
from msnpipe.pool import ordered_map, worker_pool
from probe import backends
from probe.backends import POOLED_BACKENDS, one_blas_thread, torch_dtype
from probe.data import ClassSampler, Standardized, read_rows
from probe.results import ResultFile, read_results

log = logging.getLogger("probe")
POOL_AFTER_S = 3.0  # in-process fit time before the fits' cost is known well enough to decide
POOL_START_S = 1.5  # starting the workers (measured: 1.05 s for 2 that import scikit-learn)


@dataclass(frozen=True)
class Protocol:
    """What to fit: label counts, seeds, C values, iterations, backend."""

    per_class: tuple[int, ...] = tuple(range(1, 11))
    seeds: tuple[int, ...] = tuple(range(20))
    Cs: tuple[float, ...] = (1.0,)
    max_iter: int = 1000
    backend: str = "sklearn"
    jobs: int = 1  # fits run at once, each in its own process with one BLAS thread (sklearn, numpy)
    device: str = "cpu"  # where the torch backend runs
    tol: float = 1e-4  # stop at max |gradient| <= tol (scikit-learn's default)
    solver_dtype: str = "auto"  # float32 | float64 | auto: float64 for torch, the rows' own for the others


@dataclass(frozen=True)
class Task:
    """One fit of the curve: seed, labels per class, C, and the train rows drawn."""

    seed: int
    n: int
    C: float
    indices: np.ndarray


def draws(sampler: ClassSampler, seed: int, per_class: tuple[int, ...]) -> Iterator[tuple[int, np.ndarray]]:
    """(n, indices) for every n in `per_class`, consuming the rng as the reference does."""
    rng = np.random.default_rng(seed)
    wanted = set(per_class)
    for n in range(1, max(per_class) + 1):
        inds = sampler.draw(n, rng)
        if n in wanted:
            yield n, inds


def _key(encoder: str, t: Task) -> dict:
    return {"encoder": encoder, "seed": t.seed, "n_per_class": t.n, "C": t.C}


def plan(encoder: str, sampler: ClassSampler, proto: Protocol, *, results: ResultFile) -> list[Task]:
    """Every (seed, n, C) that `results` lacks, seed by seed, n by n."""
    return [Task(seed, n, C, inds) for seed in proto.seeds
            for n, inds in draws(sampler, seed, proto.per_class)
            for C in proto.Cs if not results.has(_key(encoder, Task(seed, n, C, inds)))]


def run_curve(train: EmbeddingSet, test: Standardized, mean: np.ndarray, *, std: np.ndarray,
              proto: Protocol, results: ResultFile, sampler: ClassSampler) -> list[dict]:
    """Fit every (seed, n, C) not yet in `results`; append each row as it finishes."""
    tasks = plan(train.encoder, sampler, proto, results=results)
    if proto.backend == "torch":
        return _batched(train, test, mean, std=std, proto=proto, results=results, tasks=tasks,
                        classes=sampler.classes)
    return _one_by_one(train, test, mean, std=std, proto=proto, results=results, tasks=tasks)


def _row(encoder: str, t: Task, acc: float, *, loglik: float, backend: str, seconds: float,
         n_iter: int | None) -> dict:
    return _key(encoder, t) | {"n_labels": len(t.indices), "test_acc": acc, "test_loglik": loglik,
                               "backend": backend, "fit_seconds": round(seconds, 4), "n_iter": n_iter}


_TEST: Standardized | None = None  # in a worker process: the test split, sent once by _worker


def _worker(test: Standardized) -> None:
    """Worker initializer: fits run side by side, one BLAS and one OpenMP thread each; the test
    split comes once per worker (ImageNet val at D=1024 is 205 MB), not with every fit."""
    global _TEST
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    _TEST = test


def _fit_score(task: tuple, test: Standardized | None = None) -> tuple[float, float, float, int | None]:
    """(accuracy, log-likelihood, seconds, iterations) of one fit (backend, x, y, C, max_iter, tol,
    solver_dtype), scored on `test` (in a worker: the one _worker was given)."""
    import warnings

    backend, x, y, C, max_iter, tol, dtype = task
    test = test if test is not None else _TEST
    t = time.perf_counter()
    with warnings.catch_warnings(), one_blas_thread():
        # one label per class is a few-shot curve's point, not a regression problem
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        head = backends.fit(backend, x, y, C=C, max_iter=max_iter, tol=tol, solver_dtype=dtype)
    x_test = test.x if backend == "torch" or dtype == "auto" else test.x.astype(dtype)
    acc, loglik = backends.score(head, x_test, test.y)
    return acc, loglik, time.perf_counter() - t, head.n_iter


def _fits(train: EmbeddingSet, mean: np.ndarray, *, std: np.ndarray, proto: Protocol,
          tasks: list[Task]) -> Iterator[tuple]:
    """The arguments of every fit, a seed's rows read in one sorted selection when reached."""
    for seed in dict.fromkeys(t.seed for t in tasks):
        mine = [t for t in tasks if t.seed == seed]
        union = np.concatenate([t.indices for t in mine])
        x_all, y_all, offset = read_rows(train, union, mean, std=std), train.labels[union], 0  # [sum n*K, D]
        for t in mine:
            part = slice(offset, offset + len(t.indices))
            offset += len(t.indices)
            yield proto.backend, x_all[part], y_all[part], t.C, proto.max_iter, proto.tol, proto.solver_dtype


def pool_workers(*, spent: float, done: int, left: int, jobs: int) -> int:
    """How many worker processes the `left` remaining fits should go to, given `done` fits here
    took `spent` seconds (0: keep fitting here): as many as there are fits, up to `jobs`, once
    POOL_AFTER_S has passed and the time they save exceeds POOL_START_S."""
    if jobs < 2 or left < 2 or spent <= POOL_AFTER_S:
        return 0
    workers, each = min(jobs, left), spent / done
    saved = each * (left - math.ceil(left / workers))
    return workers if saved > POOL_START_S else 0


def _results(proto: Protocol, fits: Iterator[tuple], left: int, *, test: Standardized) -> Iterator[tuple]:
    """The fits' results in order: here, until pool_workers says the rest should go to worker
    processes (the CPU backends: scikit-learn, numpy)."""
    spent, pool = 0.0, None
    try:
        for i, task in enumerate(fits):
            workers = pool_workers(spent=spent, done=i, left=left - i, jobs=proto.jobs)
            if proto.backend in POOLED_BACKENDS and workers:
                pool = worker_pool(workers, _worker, (test,))
                log.info("fits take %.2f s each: the %d left go to %d processes", spent / i, left - i,
                         workers)
                yield from ordered_map(pool, _fit_score, itertools.chain([task], fits))
                return
            result = _fit_score(task, test)
            spent += result[2]
            yield result
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _one_by_one(train: EmbeddingSet, test: Standardized, mean: np.ndarray, *, std: np.ndarray,
                proto: Protocol,
                results: ResultFile, tasks: list[Task]) -> list[dict]:
    """scikit-learn, numpy or cuML: one fit at a time (or `jobs` at once, when that pays), rows in order."""
    rows = []
    fits = _results(proto, _fits(train, mean, std=std, proto=proto, tasks=tasks), len(tasks), test=test)
    for i, (t, (acc, loglik, secs, n_iter)) in enumerate(zip(tasks, fits)):
        rows.append(_row(train.encoder, t, acc, loglik=loglik, backend=proto.backend, seconds=secs,
                         n_iter=n_iter))
        results.append(rows[-1])
        if i + 1 == len(tasks) or tasks[i + 1].seed != t.seed:
            accs = [f"{r['test_acc']:.3f}" for r in rows if r["seed"] == t.seed]
            log.info("seed %d: %d fits, accuracy %s", t.seed, len(accs), " ".join(accs))
    return rows


def _chunks(tasks: list[Task], rows: int, dim: int, *, classes: int, device: str) -> Iterator[list[Task]]:
    """Tasks of one label count in groups whose batched solve fits the device's memory."""
    import torch

    per_problem = 8 * (rows * dim + 2 * rows * classes + 24 * classes * (dim + 1))  # bytes, float64
    if device != "cpu":
        budget = torch.cuda.mem_get_info(torch.device(device))[0] * 0.4
    else:
        budget = 2 << 30
    size = max(1, int(budget // per_problem))
    for i in range(0, len(tasks), size):
        yield tasks[i : i + size]


def _batched(train: EmbeddingSet, test: Standardized, mean: np.ndarray, *, std: np.ndarray, proto: Protocol,
             results: ResultFile, tasks: list[Task], classes: np.ndarray) -> list[dict]:
    """The torch backend: every seed and C of one label count solved as one batch."""
    import torch

    device, dtype = proto.device, torch_dtype(proto.solver_dtype)
    x_test = torch.as_tensor(test.x, device=device, dtype=dtype)
    rows = []
    for n in dict.fromkeys(t.n for t in tasks):
        same_n = [t for t in tasks if t.n == n]
        for chunk in _chunks(same_n, len(same_n[0].indices), train.shape[1], classes=len(classes),
                             device=device):
            start = time.perf_counter()
            union = np.concatenate([t.indices for t in chunk])
            x = read_rows(train, union, mean, std=std).reshape(len(chunk), -1, train.shape[1])  # [P, n*K, D]
            y = np.searchsorted(classes, train.labels[union]).reshape(len(chunk), -1)
            heads = backends.fit_batch(torch.as_tensor(x, device=device, dtype=dtype),
                                       torch.as_tensor(y, device=device), [t.C for t in chunk],
                                       classes=classes, max_iter=proto.max_iter, tol=proto.tol)
            scores = [backends.score(head, x_test, test.y) for head in heads]
            each = (time.perf_counter() - start) / len(chunk)  # the batch's time, shared evenly
            for t, head, (acc, loglik) in zip(chunk, heads, scores):
                rows.append(_row(train.encoder, t, acc, loglik=loglik, backend="torch", seconds=each,
                                 n_iter=head.n_iter))
                results.append(rows[-1])
            accs = [r["test_acc"] for r in rows[-len(chunk):]]
            iters = [h.n_iter for h in heads]
            log.info("%d per class: %d fits in one batch, %.1f s, iterations %d-%d, accuracy %.3f-%.3f", n,
                     len(chunk), each * len(chunk), min(iters), max(iters), min(accs), max(accs))
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
