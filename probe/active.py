"""python -m probe.active STORE --encoder E --out DIR: which labels to buy next.

    python -m probe.active out/embeddings.zarr --encoder vits16_800ep --out out/active
    python -m probe.active out/embeddings.zarr --encoder vitl7_200ep --out out/active \
        --strategies balanced,random,entropy,typiclust,epig --budgets 1000,2000,5000,10000 --seeds 0-4
    python -m probe.plot out/active --out out/active/active.png     # strategies beside the few-shot curve

Each seed starts from the reference's class-balanced draw of --init labels per class (the draw
`python -m probe` makes), fits the probe's logistic regression (train-standardized rows,
scikit-learn's objective at --C) and scores it on the test split; --init 0 starts cold, from
no labels at all (no round-0 row; the model-free strategies only: random, coreset, typiclust,
probcover, balanced). Then each round a strategy (probe/strategies.py) picks --step more pool
rows to label, or as many as the next of --budgets asks, and the head is fit again.
`balanced` redraws n labels per class exactly as `python -m probe` does, so its curve is the
few-shot curve. Rows go to DIR/active.csv
(encoder, strategy, seed, round, n_labels, test_acc, test_loglik, select_seconds,
fit_seconds); each round's labelled rows to DIR/active/<strategy>/seed<N>.npz, saved before
the round is fit, so a killed run resumes at the next round with the same selections.
DIR/active.json records the settings; a rerun with others is refused. Pool-sized work runs in
torch on --device, in blocks; --pool-max caps the pool by a seeded subsample, and says so.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msnpipe.files import write_atomic
from msnpipe.remote import local_only, location
from msnpipe.runtime import UserError, command, pick_device
from probe.args import at_least, int_list, positive_float
from probe.backends import CHOICES, class_positions, convergence
from probe.results import ResultFile, group_identity

log = logging.getLogger("probe")
STRATEGY_NAMES = ("balanced", "random", "entropy", "margin", "coreset", "typiclust", "probcover", "bald",
                  "epig")
NEED_A_MODEL = ("entropy", "margin", "bald", "epig")  # the names of STRATEGIES, without importing torch


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What to run: strategies, seeds, the labels after each round, and the fit."""

    strategies: tuple[str, ...]
    seeds: tuple[int, ...]
    init: int  # labels per class in round 0
    budgets: tuple[int, ...]  # labels after each round; budgets[0] = init * classes
    C: float = 1.0
    max_iter: int = 1000
    backend: str = "torch"  # the head's solver (it runs on the pool's device)
    samples: int = 20  # posterior draws for bald / epig
    targets: int = 100  # EPIG's target inputs, drawn from the test split


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m probe.active", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=location, help="a Zarr store: a folder or a URL (s3://...)")
    p.add_argument("--encoder", required=True)
    p.add_argument("--out", type=local_only, required=True)
    p.add_argument("--strategies", default=",".join(STRATEGY_NAMES),
                   help=f"comma-separated, of: {', '.join(STRATEGY_NAMES)} (default: all)")
    p.add_argument("--init", type=int, default=1,
                   help="labels per class to start from (class-balanced); 0: none, a cold start")
    p.add_argument("--rounds", type=int, default=10, help="rounds after the first (default 10)")
    p.add_argument("--step", type=int, default=None, help="labels bought per round (default: one per class)")
    p.add_argument("--budgets", type=int_list, default=None,
                   help="labels after each round instead, e.g. 1000,2000,5000 (the first after round 1)")
    p.add_argument("--seeds", type=int_list, default=tuple(range(5)), help="default 0-4")
    p.add_argument("--pool-split", default="train")
    p.add_argument("--test-split", default="val")
    p.add_argument("--pool-max", type=int, default=100_000, help="subsample a larger pool (seeded)")
    p.add_argument("--backend", choices=CHOICES, default="auto",
                   help="auto: torch on a GPU, else numpy (scikit-learn's solve, faster)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--C", type=positive_float, default=1.0, help="inverse L2 weight of the head (default 1)")
    p.add_argument("--max-iter", type=at_least(1), default=1000)
    p.add_argument("--samples", type=at_least(1), default=20, help="posterior draws for bald and epig")
    p.add_argument("--targets", type=at_least(1), default=100,
                   help="EPIG's target inputs from the test split")
    a = p.parse_args(argv)
    a.strategy_list = tuple(s.strip() for s in a.strategies.split(",") if s.strip())
    unknown = sorted(set(a.strategy_list) - set(STRATEGY_NAMES))
    if unknown or not a.strategy_list:
        named = ", ".join(unknown) or "(none given)"
        p.error(f"--strategies: unknown {named}; one of {', '.join(STRATEGY_NAMES)}")
    if a.init < 0 or a.rounds < 0 or (a.step is not None and a.step < 1) or a.pool_max < 2:
        p.error("--init >= 0, --step >= 1, --rounds >= 0 and --pool-max >= 2")
    needs_head = sorted(set(a.strategy_list) & set(NEED_A_MODEL))
    if a.init == 0 and needs_head:
        p.error(f"--init 0 starts with no labels, so no model: {', '.join(needs_head)} rank rows by one; "
                "use --init 1 or more, or model-free strategies")
    return a


def budgets_of(a: argparse.Namespace, classes: int) -> tuple[int, ...]:
    """Labels after each round: init per class first, then --budgets or --rounds of --step."""
    first = a.init * classes
    if a.budgets:
        later = tuple(a.budgets)
        if later[0] <= first or any(b <= c for c, b in zip(later, later[1:])):
            raise UserError(f"--budgets {','.join(map(str, later))}: must rise, from above the {first} "
                            f"labels of round 0 (--init {a.init} x {classes} classes)")
        return (first, *later)
    step = a.step or classes
    return tuple(first + r * step for r in range(a.rounds + 1))


@dataclass
class Pool:
    """The pool (store rows of the pool split, maybe subsampled) on the device: standardized
    rows the head sees (rounded to float32, as `python -m probe` standardizes them),
    L2-normalised rows for geometry, labels; the test split likewise; and the strategies' cache
    of what depends on the pool alone."""

    rows: np.ndarray  # store row of each pool position, sorted
    features: object  # torch [N, D], standardized
    normalised: object  # torch [N, D] float32, L2-normalised raw rows
    labels: np.ndarray  # [N] class index 0..K-1
    test_features: object
    test_labels: object  # torch [T], -1 for a class the pool lacks
    classes: int
    cache: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)  # seed -> n -> store rows of the reference's draw


def reference_draws(labels: np.ndarray, seeds: tuple[int, ...], counts: tuple[int, ...]) -> dict:
    """seed -> n -> store rows of the reference's class-balanced draw of n labels a class over the
    whole pool split, exactly python -m probe's draw for that seed."""
    from probe.data import ClassSampler
    from probe.fewshot import draws

    wanted = tuple(sorted({n for n in counts if n}))
    if not wanted:
        return {seed: {} for seed in seeds}
    sampler = ClassSampler(labels)
    sampler.check(max(wanted), "the pool split")
    return {seed: dict(draws(sampler, seed, wanted)) for seed in seeds}


def load_pool(train, test, *, pool_max: int, device: str, reference: dict) -> Pool:
    """Read the pool and the test split: all of the pool split, or when it is larger than pool_max
    a seeded subsample of it together with the rows of the reference's draws."""
    import torch

    from probe.data import load_standardized, mean_std

    n = train.shape[0]
    rows = np.arange(n)
    if n > pool_max:
        drawn = [r for by_n in reference.values() for r in by_n.values()]
        rows = np.union1d(np.random.default_rng(0).choice(n, pool_max, replace=False),
                          np.concatenate(drawn) if drawn else np.zeros(0, np.int64))
        log.info("the pool is %d rows: %d of them, drawn with seed 0, are used (--pool-max), with the %d "
                 "rows of the reference's draws", n, pool_max, len(rows) - pool_max)
    mean, std = mean_std(train)
    raw = train.rows(rows)  # [N, D]
    classes, labels = np.unique(train.labels[rows], return_inverse=True)
    test_std = load_standardized(test, mean, std)
    test_labels = class_positions(classes, test_std.y)
    t = lambda a, dtype=torch.float64: torch.as_tensor(a, device=device, dtype=dtype)  # noqa: E731
    normalised = torch.nn.functional.normalize(t(raw, torch.float32), dim=1)  # geometry: float32 is plenty
    return Pool(rows, t(((raw - mean) / std).astype(np.float32)), normalised, labels,
                t(test_std.x), t(test_labels, torch.long), len(classes), reference=reference)


def fit_head(pool: Pool, at: np.ndarray, plan: Plan):
    """(the head fit on pool positions `at`, seconds, the backend's Head with its certificate or None
    for a constant head): scikit-learn's objective at plan.C over the
    classes those rows hold (probe.backends: the torch solver on the pool's device, a CPU backend
    on the rows rounded to float32, exactly what `python -m probe` fits), as a Head over all the
    pool's classes (a class with no label yet never wins: its bias is -1e9). Labels of one class
    give the constant head that always answers it."""
    import torch

    from probe import backends
    from probe.strategies import Head

    t = time.perf_counter()
    x = pool.features[at]  # [n, D]
    labels = pool.labels[at]
    seen = np.unique(labels)
    fitted = None
    if len(seen) == 1:
        coef, inter = x.new_zeros(1, x.shape[1]), x.new_zeros(1)
    elif plan.backend == "torch":
        fitted = backends.fit("torch", x, labels, C=plan.C, max_iter=plan.max_iter, device=str(x.device))
        coef, inter = fitted.coef, fitted.intercept  # [k, D], [k]
    else:
        with backends.one_blas_thread():
            fitted = backends.fit(plan.backend, x.cpu().numpy().astype(np.float32), labels, C=plan.C,
                                  max_iter=plan.max_iter)
        coef, inter = (torch.as_tensor(np.asarray(v), device=x.device, dtype=x.dtype)
                       for v in (fitted.coef, fitted.intercept))
    weight = torch.zeros(pool.classes, x.shape[1], dtype=x.dtype, device=x.device)
    bias = torch.full((pool.classes,), -1e9, dtype=x.dtype, device=x.device)
    index = torch.as_tensor(seen, device=x.device)
    weight[index], bias[index] = coef.to(x.dtype), inter.to(x.dtype)
    return Head(weight, bias), time.perf_counter() - t, fitted


def _generator(strategy: str, seed: int, round_: int):
    import torch

    g = torch.Generator()
    g.manual_seed(zlib.crc32(f"{strategy}:{seed}:{round_}".encode()))
    return g


class Selections:
    """The labelled pool rows of each round of one (strategy, seed), saved to
    DIR/active/<strategy>/seed<N>.npz (store rows) after every round's selection."""

    def __init__(self, out: Path, strategy: str, seed: int, *, pool: Pool):
        self.path, self.pool = out / "active" / strategy / f"seed{seed}.npz", pool
        self.sets: list[np.ndarray] = []
        self.seconds: list[float] = []
        if self.path.exists():
            try:
                with np.load(self.path, allow_pickle=False) as saved:
                    rounds = sorted(int(k[5:]) for k in saved.files if k.startswith("round"))
                    self.sets = [np.searchsorted(pool.rows, saved[f"round{r}"]) for r in rounds]
                    self.seconds = saved["select_seconds"].tolist()
            except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as e:
                raise UserError(f"{self.path}: not a selections file ({type(e).__name__}: {e}); remove it to "
                                f"run {strategy}, seed {seed} again") from None

    def add(self, positions: np.ndarray, seconds: float) -> None:
        self.sets.append(positions)
        self.seconds.append(seconds)
        buf = io.BytesIO()
        np.savez(buf, select_seconds=np.array(self.seconds),
                 **{f"round{r}": self.pool.rows[s] for r, s in enumerate(self.sets)})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, buf.getvalue())


def _balanced(pool: Pool, seed: int, per_class: tuple[int, ...]) -> list[np.ndarray]:
    """The pool positions of the reference's class-balanced draws for these counts per class (as
    python -m probe makes them, over the whole split: see reference_draws)."""
    return [np.searchsorted(pool.rows, pool.reference[seed][n]) if n else np.zeros(0, dtype=np.int64)
            for n in per_class]


def next_set(strategy: str, seed: int, round_: int, *, pool: Pool, plan: Plan, previous: np.ndarray,
             head) -> np.ndarray:
    """The labelled pool positions of round `round_` >= 1: the previous ones plus the picks."""
    import torch

    from probe.strategies import STRATEGIES, Round, laplace

    k = plan.budgets[round_] - plan.budgets[round_ - 1]
    labelled = torch.zeros(len(pool.rows), dtype=torch.bool, device=pool.features.device)
    labelled[torch.as_tensor(previous, device=labelled.device)] = True
    if strategy in ("bald", "epig"):  # the labelled rows' curvature: the head's posterior
        head = laplace(head, pool.features[previous], plan.C)
    targets = None
    if strategy == "epig":
        count = min(plan.targets, len(pool.test_labels))
        pick = np.random.default_rng([seed, 7]).choice(len(pool.test_labels), count, replace=False)
        targets = pool.test_features[torch.as_tensor(pick, device=labelled.device)]
    state = Round(pool.normalised, pool.features, labelled, head, _generator(strategy, seed, round_),
                  targets=targets, samples=plan.samples, classes=pool.classes, cache=pool.cache)
    picks = STRATEGIES[strategy](state, k).cpu().numpy()
    return np.concatenate([previous, picks])


def score_head(head, pool: Pool) -> tuple[float, float]:
    """(accuracy, log-likelihood) on the test split, as scikit-learn computes them."""
    from probe.backends import score_logits

    return score_logits(head.logits(pool.test_features), pool.test_labels)


def run_strategy(strategy: str, seed: int, *, pool: Pool, plan: Plan, results: ResultFile, out: Path,
                 encoder: str) -> list[dict]:
    """Every round of one (strategy, seed) not yet in `results`, resuming saved selections."""
    saved = Selections(out, strategy, seed, pool=pool)
    if strategy == "balanced" and len(saved.sets) < len(plan.budgets):
        t = time.perf_counter()
        sets = _balanced(pool, seed, tuple(b // pool.classes for b in plan.budgets))
        for s in sets[len(saved.sets):]:
            saved.add(s, (time.perf_counter() - t) / len(sets))
    rows, head = [], None
    for r in range(len(plan.budgets)):
        if r >= len(saved.sets):
            if r == 0:
                saved.add(_balanced(pool, seed, (plan.init,))[0], 0.0)
            else:
                if strategy in NEED_A_MODEL:  # the head of round r - 1 (fit below, or again on resume)
                    head = head or fit_head(pool, saved.sets[r - 1], plan)[0]
                t = time.perf_counter()
                chosen = next_set(strategy, seed, r, pool=pool, plan=plan, previous=saved.sets[r - 1],
                                  head=head)
                saved.add(chosen, time.perf_counter() - t)
            head = None
        key = {"encoder": encoder, "strategy": strategy, "seed": seed, "round": r}
        if results.has(key) or len(saved.sets[r]) == 0:  # a cold start's round 0 has nothing to fit
            continue
        head, fit_s, fitted = fit_head(pool, saved.sets[r], plan)
        acc, loglik = score_head(head, pool)
        rows.append(key | {"n_labels": len(saved.sets[r]), "test_acc": acc, "test_loglik": loglik,
                           "select_seconds": round(saved.seconds[r], 4), "fit_seconds": round(fit_s, 4)}
                    | convergence(fitted))
        if fitted is not None and fitted.converged is False:
            log.warning("%s, seed %d, round %d: the fit stopped short of the optimum (max |gradient| %.2g); "
                        "raise --max-iter", strategy, seed, r, fitted.grad_norm)
        results.append(rows[-1])
    if rows:
        log.info("%s, seed %d: accuracy %s", strategy, seed, " ".join(f"{r['test_acc']:.3f}" for r in rows))
    return rows


def run(a: argparse.Namespace) -> list[dict]:
    """Every strategy and seed of the command line; the new rows."""
    from probe.backends import resolve
    from probe.data import open_pair

    backend = resolve(a.backend)
    device = str(pick_device(a.device))
    train, test = open_pair(a.store, a.encoder, a.pool_split, test_split=a.test_split)
    if train.labels.ndim != 1:
        raise UserError(f"{a.encoder}/{a.pool_split} has multi-hot labels; probe.active needs one label "
                        "a row")
    classes = len(np.unique(train.labels))
    budgets = budgets_of(a, classes)
    if budgets[-1] > min(train.shape[0], a.pool_max):
        raise UserError(f"the last budget, {budgets[-1]} labels, exceeds the pool's "
                        f"{min(train.shape[0], a.pool_max)} rows")
    balanced = "balanced" in a.strategy_list
    if balanced and any(b % classes for b in budgets):
        raise UserError(f"--strategies balanced draws n labels per class: every budget must be a multiple of "
                        f"the {classes} classes ({', '.join(map(str, budgets))})")
    counts = (a.init, *(b // classes for b in budgets if balanced))
    pool = load_pool(train, test, pool_max=a.pool_max, device=device,
                     reference=reference_draws(train.labels, a.seeds, counts))
    plan = Plan(strategies=a.strategy_list, seeds=a.seeds, init=a.init, budgets=budgets, C=a.C,
                max_iter=a.max_iter, backend=backend, samples=a.samples, targets=a.targets)
    ident = group_identity(train, test, train_key="pool_split", budgets=list(budgets), pool_max=a.pool_max,
                           C=a.C, max_iter=a.max_iter, solve="optimum", backend=backend, samples=a.samples,
                           targets=a.targets)
    rows = []
    with ResultFile.open(a.out, "active", ident, settings=vars(a)) as results:
        for strategy in plan.strategies:
            for seed in plan.seeds:
                rows += run_strategy(strategy, seed, pool=pool, plan=plan, results=results, out=a.out,
                                     encoder=a.encoder)
    return rows


def _show(a: argparse.Namespace, rows: list[dict]) -> None:
    last = max((r["round"] for r in rows), default=None)
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        accs = [r["test_acc"] for r in rows if r["strategy"] == strategy and r["round"] == last]
        if accs:
            mean = 100 * np.mean(accs)
            print(f"{a.encoder} {strategy}: round {last}, accuracy {mean:.2f}% (mean of {len(accs)})")


def main(argv: list[str] | None = None) -> int:
    return command(_parse, run, argv, logger="probe", done=_show)


if __name__ == "__main__":
    sys.exit(main())
