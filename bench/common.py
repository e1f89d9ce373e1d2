"""What the benchmarks share: where a run works and until when (Context, Budget, guarded), the
inputs they make once (random MSN checkpoints, stores of given embeddings), FLOP counts and
peaks, and runs of python -m probe with their answers compared.

    ctx = Context(root, torch.device("cuda"), sizes, Budget(300))
    rows = guarded(ctx, "gpu-knn", "all", needs_s=20, fn=lambda: knn_rows(ctx))
    answers = curve_answers(out)   # (seed, n) -> (accuracy, log-likelihood, iterations)
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.harness import Row, Timing, measure

log = logging.getLogger("bench")
CORES = len(os.sched_getaffinity(0))


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class Budget:
    """A deadline shared by the sections: one that would overrun it is recorded as skipped."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class Context:
    """Where a run works, on which device, how big, and until when; `measured` carries figures
    from one section to another (the model-only rates gpu-embed compares with)."""

    root: Path
    device: torch.device
    sizes: Any  # bench.gpu.GpuSizes, or bench.stages.Sizes
    budget: Budget
    measured: dict = field(default_factory=dict)

    @property
    def dry(self) -> bool:
        return self.device.type != "cuda"


def guarded(ctx: Context, bench: str, case: str, *, needs_s: float, fn: Callable[[], list[Row]]) -> list[Row]:
    """fn's rows; a skipped row when the budget is short, a failed one (and the traceback in
    the log) when fn raises, so one broken section never costs the others."""
    if ctx.budget.left() < needs_s:
        return [Row(bench, case, ctx.device.type, skipped=f"time budget: {ctx.budget.left():.0f} s left")]
    try:
        return fn()
    except Exception as e:  # recorded, then the next section runs
        if ctx.dry:
            raise
        log.error("%s %s failed:\n%s", bench, case, traceback.format_exc())
        first = str(e).splitlines()[0][:200] if str(e) else ""
        return [Row(bench, case, ctx.device.type, skipped=f"failed: {type(e).__name__}: {first}")]


def checkpoint(ctx: Context, encoder: str) -> Path:
    from embed.checkpoint import save_random_checkpoint
    from embed.encoders import get_spec

    path = ctx.root / "weights" / f"{encoder}.pth.tar"
    return path if path.exists() else save_random_checkpoint(path, get_spec(encoder))


def npy_store(root: Path, name: str, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """A store of (x, y) per split under `root`, through embed.from_npy from the .npy files the
    reference reads (`root/<name>_npy`), made once."""
    from embed.from_npy import main as from_npy_main

    folder, store = root / f"{name}_npy", root / f"{name}.zarr"
    if not store.exists():
        folder.mkdir(parents=True, exist_ok=True)
        for split, (x, y) in splits.items():
            np.save(folder / f"embeddings_{name}_{split}.npy", x)
            np.save(folder / f"labels_{split}.npy", y)
        assert from_npy_main([str(folder), "--encoder", name, "--out", str(store)]) == 0
    return store


# Dense bf16 tensor-core peaks (FLOP/s), from the vendors' data sheets.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def bf16_peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def run_probe(store: Path, out: Path, backend: str, *, seeds: int, per_class: int, extra: tuple = ()) -> int:
    from probe.__main__ import main as probe_main

    shutil.rmtree(out, ignore_errors=True)
    assert probe_main([str(store), "--encoder", "real", "--out", str(out), "--backend", backend, "--seeds",
                       f"0-{seeds - 1}", "--per-class", f"1-{per_class}", *extra]) == 0
    return seeds * per_class


def timed_probe(store: Path, out: Path, backend: str, *, seeds: int, per_class: int,
                 extra: tuple = ()) -> Timing:
    """One run of python -m probe, timed as a whole (fits/s)."""
    run = lambda: run_probe(store, out, backend, seeds=seeds, per_class=per_class, extra=extra)  # noqa: E731
    return measure(run, 1, warmup=0, unit="fits/s")


def curve_answers(out: Path) -> dict:
    """(seed, n_per_class) -> (accuracy, log-likelihood, iterations) of a probe run's fewshot.csv."""
    from probe.results import read_results

    return {(r["seed"], r["n_per_class"]): (float(r["test_acc"]), float(r["test_loglik"]), int(r["n_iter"]))
            for r in read_results(out / "fewshot.csv")}


def agreement(a: dict, b: dict) -> dict:
    """How far two runs' answers (curve_answers) lie apart, over the fits both made."""
    keys = sorted(a.keys() & b.keys())
    return {"fits_compared": len(keys),
            "max_abs_acc_diff": round(max(abs(a[k][0] - b[k][0]) for k in keys), 4),
            "max_abs_loglik_diff": round(max(abs(a[k][1] - b[k][1]) for k in keys), 4),
            "median_iterations": [int(np.median([v[k][2] for k in keys])) for v in (a, b)]}


def distance(a: dict, ref: dict) -> dict:
    keys = sorted(a.keys() & ref.keys())
    return {"vs_converged_max_abs_acc_diff": round(max(abs(a[k][0] - ref[k][0]) for k in keys), 4),
            "vs_converged_max_abs_loglik_diff": round(max(abs(a[k][1] - ref[k][1]) for k in keys), 4),
            "median_iterations": int(np.median([a[k][2] for k in keys])), "fits": len(keys)}


def flops_per_image(encoder: str) -> float:
    """Forward FLOPs of one 224x224 image, from torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    from embed.encoders import get_spec
    from embed.models import Embedder, build_model

    with torch.device("meta"):
        model = Embedder(build_model(get_spec(encoder)))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 3, 224, 224, device="meta"))
    return float(counter.get_total_flops())
