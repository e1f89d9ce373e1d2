"""The reference few-shot protocol, at the optimum of its objective or bit for bit the seed's.

For each seed: rng = default_rng(seed); for n = 1, 2, ... (every n up to the largest asked
for, so draws match the reference even when only some n are fitted): draw n per class,
fit L2 logistic regression on the train-standardized rows, score on the test split.
Rows are appended to fewshot.csv as they finish; a rerun skips rows already there.

Two protocols (PROTOCOLS). `converged`, the default, solves each fit to the optimum (tol None:
probe.precondition's certificate), warm-started from the previous label count of the same
seed and C: every backend gives the same answer. `seed` is the seed's evaluate_embeddings.py
bit for bit: its float32 standardization of the whole train split (probe.data.seed_mean_std),
scikit-learn's LogisticRegression(C, max_iter=1000) on the float32 rows from zeros, scored by
its own `score` and `log_loss`. Every row records its fit's gradient norm and whether the
certificate holds; a seed's fits that stopped short of the optimum are named in the log.

scikit-learn, numpy and cuML fit one problem at a time, the label counts of a seed and C (a
chain: each warm-starts the next) in order. The CPU backends fit in this process with one
BLAS thread (measured: a 1000-class scikit-learn fit ran 2.3x faster than with two), numpy's
and the last chain with all `jobs` (a 1000-class numpy fit of 10,000 rows: 1.6x faster on two);
once the chains done here have taken POOL_AFTER_S, the rest go to up to `jobs` worker
processes (one thread each) when that saves more than starting them costs (POOL_START_S),
so small curves never pay for a pool. torch fits every seed and C of one label count as one
batched problem (probe.torch_lr), warm-started from the previous count.
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
from probe.backends import POOLED_BACKENDS, torch_dtype
from probe.data import ClassSampler, Standardized, read_rows
from probe.results import ResultFile, read_results

log = logging.getLogger("probe")
POOL_AFTER_S = 3.0  # in-process fit time before the fits' cost is known well enough to decide
POOL_START_S = 1.5  # starting the workers (measured: 1.05 s for 2 that import scikit-learn)
PROTOCOLS = ("converged", "seed")


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
    tol: float | None = None  # None: to the optimum (certified); a number: stop at max |gradient| <= tol
    solver_dtype: str = "auto"  # float32 | float64 | auto: float64 for torch, the rows' own for the others
    protocol: str = "converged"  # or "seed": the seed script's arithmetic and solver, bit for bit

    @property
    def warm(self) -> bool:
        """Whether a fit starts from the previous label count's (certified fits only: where the
        seed's or a fixed tol's solve stops depends on its start)."""
        return self.protocol == "converged" and self.tol is None


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


def _row(encoder: str, t: Task, acc: float, *, loglik: float, backend: str, seconds: float, head) -> dict:
    return _key(encoder, t) | {"n_labels": len(t.indices), "test_acc": acc, "test_loglik": loglik,
                               "backend": backend, "fit_seconds": round(seconds, 4),
                               "n_iter": head.n_iter} | backends.convergence(head)


_TEST: Standardized | None = None  # in a worker process: the test split, sent once by _worker


def _worker(test: Standardized) -> None:
    """Worker initializer: fits run side by side, one BLAS and one OpenMP thread each; the test
    split comes once per worker (ImageNet val at D=1024 is 205 MB), not with every fit."""
    global _TEST
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    _TEST = test


@dataclass(frozen=True)
class Fit:
    """What every fit of a chain shares: the solver settings of the curve and its C."""

    backend: str
    C: float
    max_iter: int
    tol: float | None
    solver_dtype: str
    protocol: str
    warm: bool


@dataclass(frozen=True)
class Outcome:
    """One fit's answers and how it stopped (its head without the weights)."""

    acc: float
    loglik: float
    seconds: float
    head: backends.Head


def _seed_fit_score(x: np.ndarray, y: np.ndarray, test: Standardized, *, C: float,
                    max_iter: int) -> tuple[float, float, backends.Head]:
    """The seed's own lines: LogisticRegression(C, max_iter).fit on the float32 rows, then its
    model.score and -log_loss(predict_proba) on the test rows; (acc, loglik, head)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    model = LogisticRegression(C=C, max_iter=max_iter).fit(x, y)
    acc = model.score(test.x, test.y)
    loglik = -log_loss(test.y, model.predict_proba(test.x), labels=model.classes_)
    head = backends.Head(*backends.two_row_head(model.coef_, np.atleast_1d(model.intercept_)), model.classes_,
                         int(model.n_iter_[0]))
    return float(acc), float(loglik), head


def _fit_chain(chain: tuple[Fit, list[tuple[np.ndarray, np.ndarray]]], test: Standardized | None = None,
               threads: int | None = 1) -> list[Outcome]:
    """The fits of one seed and C in label-count order, each warm-started from the one before
    (`fit.warm`), scored on `test` (in a worker: the one _worker was given), `threads` BLAS
    threads."""
    import warnings

    from threadpoolctl import threadpool_limits

    fit, problems = chain
    test = test if test is not None else _TEST
    keep = fit.backend == "torch" or fit.solver_dtype == "auto"
    x_test = test.x if keep else test.x.astype(fit.solver_dtype)
    outcomes, previous = [], None
    for x, y in problems:
        t = time.perf_counter()
        with warnings.catch_warnings(), threadpool_limits(threads, user_api="blas"):
            # one label per class is a few-shot curve's point, not a regression problem
            warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
            if fit.protocol == "seed":
                acc, loglik, head = _seed_fit_score(x, y, test, C=fit.C, max_iter=fit.max_iter)
                head.certified(x, np.searchsorted(head.classes, y), C=fit.C)
            else:
                head = backends.fit(fit.backend, x, y, C=fit.C, max_iter=fit.max_iter, tol=fit.tol,
                                    solver_dtype=fit.solver_dtype, init=previous if fit.warm else None)
                acc, loglik = backends.score(head, x_test, test.y)
        previous = head
        outcomes.append(Outcome(acc, loglik, time.perf_counter() - t,
                                backends.Head(None, None, head.classes, head.n_iter, head.grad_norm,
                                              head.converged)))
    return outcomes


Chain = tuple[list[Task], tuple[Fit, list[tuple[np.ndarray, np.ndarray]]]]


def _chains(train: EmbeddingSet, mean: np.ndarray, *, std: np.ndarray, proto: Protocol,
            tasks: list[Task]) -> Iterator[Chain]:
    """(tasks, _fit_chain's argument) of every seed and C, a seed's rows read in one sorted
    selection when reached."""
    for seed in dict.fromkeys(t.seed for t in tasks):
        mine = [t for t in tasks if t.seed == seed]
        union = np.concatenate([t.indices for t in mine])
        x_all, y_all = read_rows(train, union, mean, std=std), train.labels[union]  # [sum n*K, D]
        bounds = np.cumsum([0] + [len(t.indices) for t in mine])
        parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        for C in dict.fromkeys(t.C for t in mine):
            chain = sorted((i for i, t in enumerate(mine) if t.C == C), key=lambda i: mine[i].n)
            fit = Fit(proto.backend, C, proto.max_iter, proto.tol, proto.solver_dtype, proto.protocol,
                      proto.warm)
            yield [mine[i] for i in chain], (fit, [(x_all[parts[i]], y_all[parts[i]]) for i in chain])


def pool_workers(*, spent: float, done: int, left: int, jobs: int) -> int:
    """How many worker processes the `left` remaining chains should go to, given `done` chains
    here took `spent` seconds (0: keep fitting here): as many as there are chains, up to `jobs`,
    once POOL_AFTER_S has passed and the time they save exceeds POOL_START_S."""
    if jobs < 2 or left < 2 or spent <= POOL_AFTER_S:
        return 0
    workers, each = min(jobs, left), spent / done
    saved = each * (left - math.ceil(left / workers))
    return workers if saved > POOL_START_S else 0


def _results(proto: Protocol, chains: Iterator[Chain], left: int, *,
             test: Standardized) -> Iterator[tuple[list[Task], list[Outcome]]]:
    """Each chain's outcomes in order: here, until pool_workers says the rest should go to
    worker processes (the CPU backends: scikit-learn, numpy)."""
    spent, pool = 0.0, None
    try:
        for i, (tasks, chain) in enumerate(chains):
            workers = pool_workers(spent=spent, done=i, left=left - i, jobs=proto.jobs)
            if proto.backend in POOLED_BACKENDS and workers and proto.protocol != "seed":
                pool = worker_pool(workers, _worker, (test,))
                log.info("a chain of fits takes %.2f s: the %d left go to %d processes", spent / i, left - i,
                         workers)
                # lazily: each seed's rows are read when the pool takes its chain, not all at once
                named, sent = itertools.tee(itertools.chain([(tasks, chain)], chains))
                yield from zip((t for t, _ in named), ordered_map(pool, _fit_chain, (c for _, c in sent)))
                return
            # numpy's fits and the last chain here have every core (scikit-learn's threads slow its
            # own loops); the seed's fits have its threads (BLAS's default: scikit-learn's float32
            # products round differently on another number of threads)
            threads = (None if proto.protocol == "seed" else
                       proto.jobs if left - i == 1 or proto.backend == "numpy" else 1)
            outcomes = _fit_chain(chain, test, threads)
            spent += sum(o.seconds for o in outcomes)
            yield tasks, outcomes
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _flag(rows: list[dict], seed: int) -> None:
    """One warning naming a seed's fits that did not reach the optimum."""
    short = [f"n={r['n_per_class']} C={r['C']:g}" for r in rows if r["seed"] == seed and r["converged"] == 0]
    if short:
        log.warning("seed %d: %d fits stopped short of the optimum (%s): their numbers depend on the solver "
                    "(the grad_norm column says how far); raise --max-iter", seed, len(short),
                    ", ".join(short))


def _one_by_one(train: EmbeddingSet, test: Standardized, mean: np.ndarray, *, std: np.ndarray,
                proto: Protocol, results: ResultFile, tasks: list[Task]) -> list[dict]:
    """scikit-learn, numpy or cuML: one chain at a time (or `jobs` at once, when that pays), rows in order."""
    rows = []
    chains = _chains(train, mean, std=std, proto=proto, tasks=tasks)
    left = len({(t.seed, t.C) for t in tasks})
    for chain_tasks, outcomes in _results(proto, chains, left, test=test):
        for t, o in zip(chain_tasks, outcomes):
            rows.append(_row(train.encoder, t, o.acc, loglik=o.loglik, backend=proto.backend,
                             seconds=o.seconds,
                             head=o.head))
            results.append(rows[-1])
        seed = chain_tasks[0].seed
        accs = [f"{r['test_acc']:.3f}" for r in rows if r["seed"] == seed]
        log.info("seed %d: %d fits, accuracy %s", seed, len(accs), " ".join(accs))
        _flag(rows[-len(outcomes):], seed)
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
    rows, previous = [], {}  # (seed, C) -> the head of its last label count: a warm start
    for n in sorted(dict.fromkeys(t.n for t in tasks)):
        same_n = [t for t in tasks if t.n == n]
        for chunk in _chunks(same_n, len(same_n[0].indices), train.shape[1], classes=len(classes),
                             device=device):
            start = time.perf_counter()
            union = np.concatenate([t.indices for t in chunk])
            x = read_rows(train, union, mean, std=std).reshape(len(chunk), -1, train.shape[1])  # [P, n*K, D]
            y = np.searchsorted(classes, train.labels[union]).reshape(len(chunk), -1)
            starts = [previous.get((t.seed, t.C)) for t in chunk]
            init = starts if proto.warm and all(h is not None for h in starts) else None
            heads = backends.fit_batch(torch.as_tensor(x, device=device, dtype=dtype),
                                       torch.as_tensor(y, device=device), [t.C for t in chunk],
                                       classes=classes, max_iter=proto.max_iter, tol=proto.tol, init=init)
            previous.update({(t.seed, t.C): h for t, h in zip(chunk, heads)})
            scores = [backends.score(head, x_test, test.y) for head in heads]
            each = (time.perf_counter() - start) / len(chunk)  # the batch's time, shared evenly
            for t, head, (acc, loglik) in zip(chunk, heads, scores):
                rows.append(_row(train.encoder, t, acc, loglik=loglik, backend="torch", seconds=each,
                                 head=head))
                results.append(rows[-1])
            accs = [r["test_acc"] for r in rows[-len(chunk):]]
            iters = [h.n_iter for h in heads]
            log.info("%d per class: %d fits in one batch, %.1f s, iterations %d-%d, accuracy %.3f-%.3f", n,
                     len(chunk), each * len(chunk), min(iters), max(iters), min(accs), max(accs))
    for seed in dict.fromkeys(t.seed for t in tasks):
        _flag(rows, seed)
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
