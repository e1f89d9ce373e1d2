"""python -m probe STORE --encoder E --out DIR: few-shot label-efficiency curves.

    python -m probe out/embeddings.zarr --encoder vits16_800ep --out out/probe
    python -m probe out/embeddings.zarr --encoder vitl7_200ep --per-class 1,2,5 --seeds 0-4 \
        --C 0.01,0.1,1,10 --backend cuml --out out/probe --seed-layout

The reference protocol (msn-embeddings' evaluate_embeddings.py): standardize with the train
split's mean/std, draw n labels per class with numpy.random.default_rng(seed) exactly as
the reference does, fit multinomial L2 logistic regression (C=1), report test accuracy and
log-likelihood. `--protocol converged` (the default) solves each fit to the optimum, so the
numbers are the problem's, whatever the backend; `--protocol seed` is the seed script's
arithmetic and solver bit for bit (scikit-learn at tol 1e-4, which stops short of the optimum
on large problems). fewshot.csv records each fit's gradient norm and whether it converged.
Writes DIR/fewshot.csv (rows appended as they finish;
a rerun skips rows already there, and more seeds or label counts extend it) and
DIR/fewshot.json (the settings that made it; a rerun with other settings is refused).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from embed.store import ORDERS, row_order
from msnpipe.files import writable_dir
from msnpipe.remote import local_only, location
from msnpipe.runtime import UserError, command, pick_device
from probe.args import at_least, float_list, int_list, positive_float
from probe.backends import CHOICES, SOLVER_DTYPES, TOL, recorded_dtype, resolve
from probe.data import ClassSampler, Standardized, load_standardized, mean_std, open_pair, seed_mean_std
from probe.fewshot import PROTOCOLS, Protocol, run_curve, write_seed_layout
from probe.multilabel import run_multilabel
from probe.results import ResultFile, group_identity

log = logging.getLogger("probe")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=location, help="a Zarr store: a folder or a URL (s3://...)")
    p.add_argument("--encoder", required=True)
    p.add_argument("--out", type=local_only, required=True)
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="val")
    p.add_argument("--per-class", type=int_list, default=tuple(range(1, 11)), help="default 1-10")
    p.add_argument("--seeds", type=int_list, default=tuple(range(20)), help="default 0-19")
    p.add_argument("--C", type=float_list, default=(1.0,), help="inverse L2 weight(s), default 1")
    p.add_argument("--max-iter", type=at_least(1), default=1000)
    p.add_argument("--protocol", choices=PROTOCOLS, default="converged",
                   help="converged (default): each fit to its optimum, certified, any backend; seed: the "
                        "seed script's numbers bit for bit (scikit-learn, its float32 arithmetic)")
    p.add_argument("--tol", type=positive_float, default=None,
                   help="stop each fit at max |gradient| <= TOL instead of at the optimum (the seed "
                        "protocol's is 1e-4, scikit-learn's default)")
    p.add_argument("--backend", choices=CHOICES, default="auto",
                   help="auto: torch on a GPU, else numpy (docs/benchmarks.md has the measurements)")
    p.add_argument("--device", default="auto", help="where the torch backend runs: auto, cpu, cuda[:N]")
    p.add_argument("--solver-dtype", choices=SOLVER_DTYPES, default="auto",
                   help="the precision solved in (auto: float64 for torch, where float32 misses parity; "
                        "the rows' own, float32, for the others, as scikit-learn)")
    p.add_argument("--jobs", type=at_least(1), default=len(os.sched_getaffinity(0)),
                   help="CPU fits at once (sklearn, numpy), one BLAS thread each (default: all cores)")
    p.add_argument("--multilabel", action="store_true",
                   help="multi-hot labels: one-vs-rest fits on the whole train split, mAP (VOC07)")
    p.add_argument("--order", choices=ORDERS, default="index",
                   help="the rows the draws pick by position: index (default: the store's, ImageFolder "
                        "order) or seed (the reference's own files, so each seed draws the images it drew)")
    p.add_argument("--seed-layout", action="store_true",
                   help="also write the reference's <encoder>/testing_seedNN.csv files")
    a = p.parse_args(argv)
    if 0 in a.per_class:
        p.error("--per-class: counts start at 1")
    if a.protocol == "seed":
        changed = [f"--{k.replace('_', '-')} {getattr(a, k)}" for k, default in
                   (("backend", "auto"), ("solver_dtype", "auto"), ("tol", None), ("max_iter", 1000))
                   if getattr(a, k) != default]
        if changed or a.multilabel:
            p.error(f"--protocol seed is the seed script's solve (scikit-learn, float32, tol 1e-4, 1000 "
                    f"iterations): drop {', '.join(changed) or '--multilabel'}")
        a.backend, a.tol = "sklearn", TOL
    return a


def identity(a: argparse.Namespace, train, test, *, proto: Protocol) -> dict:
    """Every setting that changes a number of fewshot.csv (seeds and counts only select rows)."""
    order = {"order": a.order} if a.order != "index" else {}  # folders made before --order resume
    dtype = recorded_dtype(proto.backend, proto.solver_dtype)
    return group_identity(train, test, Cs=list(proto.Cs), max_iter=proto.max_iter, tol=proto.tol,
                          backend=proto.backend, solver_dtype=dtype, protocol=proto.protocol, **order)


def run(a: argparse.Namespace) -> int:
    """The curve (or the multi-label evaluation) for parsed arguments."""
    writable_dir(a.out, "--out")
    backend = resolve(a.backend)
    device = str(pick_device(a.device)) if backend == "torch" else "cpu"  # torch only for torch
    proto = Protocol(a.per_class, a.seeds, a.C, a.max_iter, backend, max(1, a.jobs), device, a.tol,
                     a.solver_dtype, a.protocol)
    train, test = open_pair(a.store, a.encoder, a.train_split, test_split=a.test_split)
    if a.multilabel:
        run_multilabel(train, test, Cs=a.C, max_iter=a.max_iter, backend=proto.backend, out=a.out,
                       device=proto.device)
        return 0
    if train.labels.ndim != 1:
        raise UserError(f"{a.encoder}/{a.train_split} has multi-hot labels: use --multilabel")
    order = row_order(train, a.order)
    sampler = ClassSampler(train.labels, train.classes, f"{a.encoder}/{a.train_split}", order=order)
    sampler.check(max(proto.per_class), a.train_split)
    t = time.perf_counter()
    # [1, D] each; every row checked finite
    mean, std = seed_mean_std(train, order) if a.protocol == "seed" else mean_std(train)
    test_std = load_standardized(test, mean, std)
    if (test_order := row_order(test, a.order)) is not None:  # the rows of the seed's val file, in order:
        test_std = Standardized(test_std.x[test_order], test_std.y[test_order])  # its mean's sum order
    log.info("train %s, test %s, statistics in %.1f s; backend %s", train.shape, test.shape,
             time.perf_counter() - t, proto.backend)
    settings = {"settings": vars(a), "protocol": vars(proto), "train_attrs": train.attrs,
                "test_attrs": test.attrs}
    ident = identity(a, train, test, proto=proto)
    with ResultFile.open(a.out, "fewshot", ident, settings=settings) as results:
        rows = run_curve(train, test_std, mean, std=std, proto=proto, results=results, sampler=sampler)
    if a.seed_layout:
        write_seed_layout(results.path, a.out)
    log.info("%d fits in %.1f s -> %s", len(rows), time.perf_counter() - t, results.path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the few-shot curve; exit status 1 with one clear line on bad input."""
    return command(parse_args, run, argv, logger="probe")


if __name__ == "__main__":
    sys.exit(main())
