"""python -m probe STORE --encoder E --out DIR: few-shot label-efficiency curves.

    python -m probe out/embeddings.zarr --encoder vits16_800ep --out out/probe
    python -m probe out/embeddings.zarr --encoder vitl7_200ep --per-class 1,2,5 --seeds 0-4 \
        --C 0.01,0.1,1,10 --backend cuml --out out/probe --seed-layout

The reference protocol (msn-embeddings' evaluate_embeddings.py): standardize with the train
split's mean/std, draw n labels per class with numpy.random.default_rng(seed) exactly as
the reference does, fit multinomial L2 logistic regression (C=1, 1000 iterations), report
test accuracy and log-likelihood. Writes DIR/fewshot.csv (rows appended as they finish;
a rerun skips rows already there) and DIR/config.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from embed.store import StoreError, open_embeddings
from probe.backends import BACKENDS, resolve
from probe.data import ClassSampler, load_standardized, mean_std
from probe.fewshot import Protocol, run_curve, write_seed_layout
from probe.multilabel import run_multilabel

log = logging.getLogger("probe")


def int_list(text: str) -> tuple[int, ...]:
    """'1-10' or '1,2,5' (or a mix: '0-4,10') as a tuple of ints."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 1-10 or 1,2,5") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected non-negative numbers like 1-10")
    return tuple(out)


def float_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 1 or 0.01,0.1,1") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: C must be > 0")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=Path)
    p.add_argument("--encoder", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="val")
    p.add_argument("--per-class", type=int_list, default=tuple(range(1, 11)), help="default 1-10")
    p.add_argument("--seeds", type=int_list, default=tuple(range(20)), help="default 0-19")
    p.add_argument("--C", type=float_list, default=(1.0,), help="inverse L2 weight(s), default 1")
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: cuML when it can run (GPU), else scikit-learn")
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                   help="scikit-learn fits at once, one BLAS thread each (default: all cores)")
    p.add_argument("--multilabel", action="store_true",
                   help="multi-hot labels: one-vs-rest fits on the whole train split, mAP (VOC07)")
    p.add_argument("--seed-layout", action="store_true",
                   help="also write the reference's <encoder>/testing_seedNN.csv files")
    a = p.parse_args(argv)
    if 0 in a.per_class:
        p.error("--per-class: counts start at 1")
    return a


def main(argv: list[str] | None = None) -> int:
    """Run the few-shot curve; exit status 1 with one clear line on bad input."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("probe").setLevel(logging.INFO)
    a = parse_args(argv)
    try:
        proto = Protocol(a.per_class, a.seeds, a.C, a.max_iter, resolve(a.backend), max(1, a.jobs))
        train = open_embeddings(a.store, a.encoder, a.train_split)
        test = open_embeddings(a.store, a.encoder, a.test_split)
        if a.multilabel:
            run_multilabel(train, test, Cs=a.C, max_iter=a.max_iter, backend=proto.backend, out=a.out)
            return 0
        if train.labels.ndim != 1:
            raise ValueError(f"{a.encoder}/{a.train_split} has multi-hot labels: use --multilabel")
        sampler = ClassSampler(train.labels, train.attrs.get("classes"))
        sampler.check(max(proto.per_class), a.train_split)
    except (StoreError, ValueError, RuntimeError) as e:
        log.error("%s", e)
        return 1
    a.out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    mean, std = mean_std(train)  # [1, D] each
    test_std = load_standardized(test, mean, std)
    log.info("train %s, test %s, statistics in %.1f s; backend %s", train.shape, test.shape,
             time.perf_counter() - t, proto.backend)
    config = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
              "protocol": vars(proto), "train_attrs": train.attrs, "test_attrs": test.attrs}
    (a.out / "config.json").write_text(json.dumps(config, indent=1, default=str) + "\n")
    rows = run_curve(train, test_std, mean, std, proto, a.out / "fewshot.csv", sampler)
    if a.seed_layout:
        write_seed_layout(a.out / "fewshot.csv", a.out)
    log.info("%d fits in %.1f s -> %s", len(rows), time.perf_counter() - t, a.out / "fewshot.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
