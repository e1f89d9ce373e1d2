"""python -m bench gpu [--quick]: every GPU claim as a measured row, on one GPU, in minutes.

    python -m bench gpu            # the full set (each section within a share of ~8 minutes)
    python -m bench gpu --quick    # smaller; on a machine without CUDA, a dry run on the CPU

Needs torch, torchvision, timm, numpy, zarr, webdataset and matplotlib; DALI, cuML and
scikit-learn are optional (a missing one is a "skipped: not installed" row). Sections:

- gpu-model: each MSN encoder (random weights), bf16 + torch.compile at the auto batch size
  against fp32 eager at batch 16: img/s, TFLOP/s, fraction of the GPU's dense bf16 peak, memory;
- gpu-decode: torchvision nvJPEG (and DALI mixed) on generated 500x375 shards, against PIL
  with a DataLoader of batch 16 and no workers (the reference path's loader);
- gpu-embed: shards -> store with --decoder torchvision (and dali) for ViT-S/16 and ViT-L/7
  against the reference path on the same GPU (PIL, batch 16, fp32 eager);
- gpu-probe: --backend torch against scikit-learn (and cuML) on a 1000-class, D=1024
  few-shot curve of realistic embeddings; the whole 20-seed curve on the GPU, and the subset
  scikit-learn fits too (all cores), fit for fit, with the differences of the answers;
- gpu-knn: kNN and diagnostics on 100k x 1024 rows, the GPU against the same code on the CPU.

Set-up (data, shards, checkpoints, model load, compile, warm-up) stays outside the timed
regions; the reference path gets the same warm-up on the same device. A section that fails
is recorded as such and the others still run. Without CUDA, each section runs once at toy
sizes on the CPU (so this module cannot rot) and only "skipped: no CUDA device" rows are kept.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.harness import Row, Timing, measure

log = logging.getLogger("bench")
CORES = len(os.sched_getaffinity(0))
ALL_ENCODERS = ("vits16_800ep", "vitl7_200ep", "vitb16_600ep", "vitl16_600ep", "vitb4_300ep")
REFERENCE_LOADER = "PIL + DataLoader(batch 16, 0 workers)"
EMBED_BATCH = 256  # so the timed part (past the first batch, which compiles) holds several batches


@dataclass(frozen=True)
class GpuSizes:
    """How big each section is."""

    encoders: tuple[str, ...]
    embed_encoders: tuple[str, ...]
    images: int  # 500x375 JPEGs for decode and embed
    probe: tuple[int, int, int, int]  # classes, D, train and test rows per class
    seeds: int  # the torch curve: seeds x n = 1..per_class
    per_class: int
    sk_seeds: int  # the subset scikit-learn fits too: seeds x n = 1..sk_per_class
    sk_per_class: int
    knn: tuple[int, int, int]  # train rows, test rows, D
    repeats: int
    seconds: float  # the time budget of the whole run


FULL = GpuSizes(ALL_ENCODERS, ("vits16_800ep", "vitl7_200ep"), 1000, (1000, 1024, 10, 5), 20, 10, 4, 3,
                (100_000, 10_000, 1024), 3, 480)
QUICK = GpuSizes(("vits16_800ep", "vitl7_200ep"), ("vits16_800ep",), 500, (1000, 1024, 10, 5), 5, 5, 2, 2,
                 (20_000, 2_000, 1024), 2, 240)
DRY = GpuSizes(("vits16_800ep",), ("vits16_800ep",), 24, (12, 32, 6, 3), 2, 2, 1, 2, (400, 50, 32), 1, 600)


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
    """Where a run works, on which device, how big, and until when."""

    root: Path
    device: torch.device
    sizes: GpuSizes
    budget: Budget

    @property
    def dry(self) -> bool:
        return self.device.type != "cuda"


# -- set-up, done once and outside every timed region --------------------------------------


def prepare_images(ctx: Context) -> tuple[Path, Path]:
    """(ImageFolder with split `val`, its shards) of ctx.sizes.images generated JPEGs."""
    from bench.synthetic import make_image_folder
    from shard.__main__ import main as shard_main

    images, shards = ctx.root / "images", ctx.root / "shards"
    if not (shards / "val" / "manifest.json").exists():
        classes = 20
        make_image_folder(images, classes, train=0, val=-(-ctx.sizes.images // classes), broken=0,
                          workers=CORES)
        assert shard_main([str(images), str(shards), "--splits", "val", "--samples-per-shard", "500"]) == 0
    return images, shards


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


# -- gpu-model ------------------------------------------------------------------------------

# Dense bf16 tensor-core peaks (FLOP/s), from the vendors' data sheets.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def bf16_peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def _model_row(ctx: Context, name: str) -> Row:
    from bench.stages import flops_per_image
    from embed.checkpoint import random_model
    from embed.encoders import get_spec
    from embed.runner import EncoderRunner, auto_batch

    spec, dev, gpu = get_spec(name), ctx.device, not ctx.dry
    model = random_model(spec)
    fast = EncoderRunner(spec, model, kind="cls_prenorm", device=dev, precision="bf16" if gpu else "fp32",
                         compile=gpu)
    t = time.perf_counter()
    batch = auto_batch([fast], dev) if gpu else 2
    x = torch.randn(batch, 3, 224, 224, device=dev)
    fast.forward(x)  # compiles
    compile_s = time.perf_counter() - t
    if gpu:
        torch.cuda.reset_peak_memory_stats(dev)
    ours = measure(lambda: (fast.forward(x), batch)[1], ctx.sizes.repeats, warmup=1, sync=gpu)
    peak_gib = torch.cuda.max_memory_allocated(dev) / 2**30 if gpu else None
    slow = EncoderRunner(spec, model, kind="cls_prenorm", device=dev, precision="fp32", compile=False)
    x16 = x[:16]
    reference = measure(lambda: (slow.forward(x16), len(x16))[1], ctx.sizes.repeats, warmup=1, sync=gpu)
    flops = flops_per_image(name)
    peak = bf16_peak(torch.cuda.get_device_name(dev)) if gpu else None
    settings = {"batch": batch, "gflops_per_image": round(flops / 1e9, 2),
                "compile_and_batch_s": round(compile_s, 1), "tflops": round(flops * ours.rate / 1e12, 1),
                "fraction_of_bf16_peak": round(flops * ours.rate / peak, 3) if peak else None,
                "reference_tflops": round(flops * reference.rate / 1e12, 1), "peak_memory_gib": peak_gib}
    return Row("gpu-model", name, dev.type, ours.summary(), reference.summary(),
               f"bf16 + torch.compile, batch {batch} (auto)", "fp32 eager, batch 16", settings)


def model_rows(ctx: Context) -> Iterator[Row]:
    for name in ctx.sizes.encoders:
        yield guarded(ctx, "gpu-model", name, needs_s=30, fn=lambda name=name: [_model_row(ctx, name)])[0]
        if not ctx.dry:
            torch.cuda.empty_cache()  # the last encoder's runners are gone with its frame


# -- gpu-decode -------------------------------------------------------------------------------


def _decode(decoder: str, shards: Path, device: torch.device, *, batch: int) -> int:
    from embed.encoders import Preprocess
    from embed.pipeline import batches
    from shard.reader import open_split

    split = open_split(shards, "val")
    stream = batches(decoder, split.tar_paths(), split.idx_paths(), order=np.arange(split.num_samples),
                     pre=Preprocess(), batch_size=batch, device=device, threads=min(8, CORES))
    return sum(int((b.indices >= 0).sum()) for b in stream)


def decode_rows(ctx: Context) -> list[Row]:
    from bench.stages import _torchvision_decode

    images, shards = prepare_images(ctx)
    n, batch, gpu = ctx.sizes.repeats, 256 if not ctx.dry else 8, not ctx.dry
    reference = measure(lambda: _torchvision_decode(images, 0), max(1, n - 1), warmup=0)
    settings = {"images": ctx.sizes.images, "size": "500x375", "batch": batch}
    tv = measure(lambda: _decode("torchvision", shards, ctx.device, batch=batch), n, sync=gpu)
    rows = [Row("gpu-decode", "torchvision nvJPEG" if gpu else "torchvision", ctx.device.type, tv.summary(),
                reference.summary(), f"torchvision.io.decode_jpeg on {ctx.device.type}, batch {batch}",
                REFERENCE_LOADER, settings)]
    if not installed("nvidia.dali"):
        rows.append(Row("gpu-decode", "DALI mixed", "cuda", skipped="not installed (nvidia-dali)"))
    else:
        dali = measure(lambda: _decode("dali", shards, ctx.device, batch=batch), n, sync=gpu)
        rows.append(Row("gpu-decode", "DALI mixed" if gpu else "DALI cpu", ctx.device.type, dali.summary(),
                        reference.summary(), f"DALI, batch {batch}", REFERENCE_LOADER, settings))
    return rows


# -- gpu-embed --------------------------------------------------------------------------------


def _embed_ours(ctx: Context, shards: Path, encoder: str, *, decoder: str, runs: list) -> int:
    """One run of python -m embed into a fresh store; the steady rate (past the first batch,
    which compiles) is what `runs` collects."""
    from embed.run import Config, run

    out = ctx.root / f"store_{encoder}_{decoder}_{len(runs)}.zarr"
    stats = run(Config(shards=shards, split="val", encoders=(encoder,), weights=str(checkpoint(ctx, encoder)),
                       out=out, device=str(ctx.device), decoder=decoder,
                       batch_size=EMBED_BATCH if not ctx.dry else 4))
    shutil.rmtree(out)
    steady = stats["images"] - stats["first_batch_images"]
    if not steady:
        raise RuntimeError(f"{stats['images']} images fill one batch of {stats['batch']}: nothing to time")
    runs.append((stats["wait_s"] + stats["compute_s"] - stats["first_batch_s"], steady, stats["batch"]))
    return stats["images"]


def _embed_reference(ctx: Context, images: Path, encoder: str) -> int:
    from bench.reference import embed_folder, reference_vit
    from embed.encoders import get_spec

    s = get_spec(encoder)
    model = reference_vit(checkpoint(ctx, encoder), s.patch, s.dim, depth=s.depth,
                          heads=s.heads).to(ctx.device)
    rows = embed_folder(images / "val", model, device=ctx.device)[0]
    del model
    return len(rows)


def _embed_row(ctx: Context, images: Path, shards: Path, *, encoder: str, decoder: str) -> Row:
    runs: list = []
    _embed_ours(ctx, shards, encoder, decoder=decoder, runs=runs)  # timed past its first batch
    ours = Timing([s for s, _, _ in runs], runs[0][1])
    reference = measure(lambda: _embed_reference(ctx, images, encoder), 1, warmup=0, sync=not ctx.dry)
    gpu = not ctx.dry
    label = (f"python -m embed --decoder {decoder}, bf16 + compile, batch {runs[0][2]}" if gpu
             else f"python -m embed --decoder {decoder}, fp32, batch 4")
    return Row("gpu-embed", f"{encoder}, {decoder}", ctx.device.type, ours.summary(), reference.summary(),
               label, "compute_embeddings.py: PIL, batch 16, 0 workers, fp32 eager",
               {"images": ctx.sizes.images, "timed": "past the first batch (compile, warm-up)"})


def embed_rows(ctx: Context) -> Iterator[Row]:
    images, shards = prepare_images(ctx)
    for encoder in ctx.sizes.embed_encoders:
        for decoder in ("torchvision", "dali"):
            if decoder == "dali" and not installed("nvidia.dali"):
                yield Row("gpu-embed", f"{encoder}, dali", "cuda", skipped="not installed (nvidia-dali)")
                continue
            yield guarded(ctx, "gpu-embed", f"{encoder}, {decoder}", needs_s=30,
                          fn=lambda e=encoder, d=decoder: [_embed_row(ctx, images, shards, encoder=e,
                                                                      decoder=d)])[0]


# -- gpu-probe --------------------------------------------------------------------------------


def _probe(store: Path, out: Path, backend: str, *, seeds: int, per_class: int, extra: tuple = ()) -> int:
    from probe.__main__ import main as probe_main

    shutil.rmtree(out, ignore_errors=True)
    assert probe_main([str(store), "--encoder", "real", "--out", str(out), "--backend", backend, "--seeds",
                       f"0-{seeds - 1}", "--per-class", f"1-{per_class}", *extra]) == 0
    return seeds * per_class


def _timed_probe(store: Path, out: Path, backend: str, *, seeds: int, per_class: int,
                 extra: tuple = ()) -> Timing:
    """One run of python -m probe, timed as a whole (fits/s)."""
    run = lambda: _probe(store, out, backend, seeds=seeds, per_class=per_class, extra=extra)  # noqa: E731
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


def probe_rows(ctx: Context) -> list[Row]:
    from bench.synthetic import realistic_embeddings

    classes, dim, tr, te = ctx.sizes.probe
    store = npy_store(ctx.root, "real", realistic_embeddings(classes, dim, {"train": tr, "val": te}, seed=0))
    s, dev = ctx.sizes, str(ctx.device)
    sub = (s.sk_seeds, s.sk_per_class)
    settings = {"classes": classes, "dim": dim, "train": classes * tr, "test": classes * te,
                "data": "bench.synthetic.realistic_embeddings (power-law spectrum, overlapping classes)"}
    rows = []
    curve = _timed_probe(store, ctx.root / "p_curve", "torch", seeds=s.seeds, per_class=s.per_class,
                         extra=("--device", dev))
    rows.append(Row("gpu-probe", f"torch, {s.seeds} seeds x n=1..{s.per_class}", ctx.device.type,
                    curve.summary(), None, f"--backend torch on {dev}", "", settings))
    torch_sub = _timed_probe(store, ctx.root / "p_torch", "torch", seeds=sub[0], per_class=sub[1],
                             extra=("--device", dev))
    if not installed("sklearn"):
        return rows + [Row("gpu-probe", "scikit-learn", "cpu", skipped="not installed (scikit-learn)")]
    sk = _timed_probe(store, ctx.root / "p_sk", "sklearn", seeds=sub[0], per_class=sub[1],
                      extra=("--jobs", str(CORES)))
    agree = agreement(curve_answers(ctx.root / "p_sk"), curve_answers(ctx.root / "p_torch"))
    rows.append(Row("gpu-probe", f"torch vs scikit-learn, {sub[0]} seeds x n=1..{sub[1]}", ctx.device.type,
                    torch_sub.summary(), sk.summary(), f"--backend torch on {dev}",
                    f"--backend sklearn, {CORES} processes x 1 BLAS thread", settings | agree))
    rows += tolerance_rows(ctx, store, sub, settings=settings)
    if installed("cuml"):
        cu = _timed_probe(store, ctx.root / "p_cuml", "cuml", seeds=sub[0], per_class=sub[1])
        rows.append(Row("gpu-probe", f"torch vs cuML, {sub[0]} seeds x n=1..{sub[1]}", ctx.device.type,
                        torch_sub.summary(), cu.summary(), f"--backend torch on {dev}", "--backend cuml",
                        settings | agreement(curve_answers(ctx.root / "p_cuml"),
                                             curve_answers(ctx.root / "p_torch"))))
    else:
        rows.append(Row("gpu-probe", "cuML", "cuda", skipped="not installed (cuml)"))
    return rows


def _distance(a: dict, ref: dict) -> dict:
    keys = sorted(a.keys() & ref.keys())
    return {"vs_converged_max_abs_acc_diff": round(max(abs(a[k][0] - ref[k][0]) for k in keys), 4),
            "vs_converged_max_abs_loglik_diff": round(max(abs(a[k][1] - ref[k][1]) for k in keys), 4),
            "median_iterations": int(np.median([a[k][2] for k in keys])), "fits": len(keys)}


def tolerance_rows(ctx: Context, store: Path, sub: tuple[int, int], *, settings: dict,
                   bench: str = "gpu-probe") -> list[Row]:
    """How far each backend's answers at a tolerance lie from a converged solve (torch,
    float64, tol 1e-8), on the subset: what the default tol costs, and what float32 reaches."""
    dev = str(ctx.device)
    configs = [("torch, float64, tol 1e-8 (the converged solve)", "torch", "1e-8", "float64"),
               ("torch, float32, tol 1e-4 (default)", "torch", "1e-4", "float32"),
               ("torch, float64, tol 1e-4", "torch", "1e-4", "float64"),
               ("torch, float32, tol 1e-6", "torch", "1e-6", "float32"),
               ("scikit-learn, tol 1e-4 (default)", "sklearn", "1e-4", None),
               ("scikit-learn, tol 1e-6", "sklearn", "1e-6", None),
               ("numpy, tol 1e-4 (default)", "numpy", "1e-4", None),
               ("numpy, tol 1e-6", "numpy", "1e-6", None)]
    rows, converged = [], None
    for what, backend, tol, dtype in configs:
        case = f"{what}, {sub[0]} seeds x n=1..{sub[1]}"  # the same name measured or skipped
        if ctx.budget.left() < 15:
            rows.append(Row(bench, case, ctx.device.type, skipped="time budget"))
            continue
        out = ctx.root / ("p_sk" if (backend, tol) == ("sklearn", "1e-4") else f"p_tol_{len(rows)}")
        extra = ["--tol", tol, "--max-iter", "5000"] + (
            ["--device", dev, "--solver-dtype", dtype] if backend == "torch" else ["--jobs", str(CORES)])
        if (out / "fewshot.csv").exists():  # measured above: its answers, no second run
            timing = None
        else:
            timing = _timed_probe(store, out, backend, seeds=sub[0], per_class=sub[1], extra=tuple(extra))
        answers = curve_answers(out)
        converged = converged or answers
        where = ctx.device.type if backend == "torch" else "cpu"
        rows.append(Row(bench, case, where, timing.summary() if timing else None, None,
                        f"--backend {backend} --tol {tol}", "", settings | _distance(answers, converged)))
    return rows


# -- gpu-knn ----------------------------------------------------------------------------------


def knn_rows(ctx: Context) -> list[Row]:
    from bench.synthetic import realistic_embeddings
    from embed.store import open_embeddings
    from probe.diagnose import main as diagnose_main
    from probe.knn import evaluate

    n_train, n_test, dim = ctx.sizes.knn
    per_class = {"train": max(1, n_train // 1000), "val": max(1, n_test // 1000)}
    data = realistic_embeddings(1000, dim, per_class, seed=1)
    store = npy_store(ctx.root, "big", data)
    train, test = open_embeddings(store, "big", "train"), open_embeddings(store, "big", "val")
    cpu = torch.device("cpu")
    ks = (10, 20, 100, 200) if not ctx.dry else (5,)
    run = lambda d: (evaluate(train, test, ks, temperature=0.07, device=d), test.shape[0])[1]  # noqa: E731
    settings = {"train": train.shape, "test": test.shape, "k": ks}
    ours = measure(lambda: run(ctx.device), ctx.sizes.repeats, sync=not ctx.dry, unit="queries/s")
    reference = measure(lambda: run(cpu), 1, warmup=0, unit="queries/s")
    rows = [Row("gpu-knn", "kNN", ctx.device.type, ours.summary(), reference.summary(),
                f"probe.knn on {ctx.device}", f"probe.knn on the CPU ({CORES} cores)", settings)]
    rows_cap = 10_000 if not ctx.dry else 200
    args = ["--max-rows", str(rows_cap), "--tsne-classes", "4", "--tsne-per-class", "5"]
    diag = lambda d, out: (diagnose_main([str(store), "--encoder", "big", "--device", str(d),  # noqa: E731
                                          "--out", str(ctx.root / out), *args]), 1)[1]
    ours = measure(lambda: diag(ctx.device, "diag_gpu"), 1, warmup=0, sync=not ctx.dry, unit="runs/s")
    reference = measure(lambda: diag(cpu, "diag_cpu"), 1, warmup=0, unit="runs/s")
    rows.append(Row("gpu-knn", "diagnose", ctx.device.type, ours.summary(), reference.summary(),
                    f"probe.diagnose on {ctx.device}", f"probe.diagnose on the CPU ({CORES} cores)",
                    settings | {"max_rows": rows_cap}))
    return rows


# -- the run ----------------------------------------------------------------------------------


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


# (bench, share of the time budget, rows, whether the section is measured as a whole)
SECTIONS = (("gpu-decode", 0.08, decode_rows, True), ("gpu-model", 0.34, model_rows, False),
            ("gpu-embed", 0.22, embed_rows, False), ("gpu-probe", 0.22, probe_rows, True),
            ("gpu-knn", 0.14, knn_rows, True))


def rows(root: Path, device: torch.device, sizes: GpuSizes, *, only: tuple[str, ...] = ()) -> Iterator[Row]:
    """Every section's rows (or those of the sections in `only`), as each is measured; each
    section has its share of the budget."""
    total = Budget(sizes.seconds)
    chosen = [s for s in SECTIONS if not only or s[0] in only]
    scale = 1 / sum(share for _, share, _, _ in chosen)
    for bench, share, fn, whole in chosen:
        share *= scale
        ctx = Context(root, device, sizes, Budget(min(total.left(), share * sizes.seconds)))
        log.info("%s on %s (%.0f s for it, %.0f s in all left)", bench, device, ctx.budget.left(),
                 total.left())
        if whole:
            needs = min(20.0, ctx.budget.left() / 2)
            yield from guarded(ctx, bench, "all", needs_s=needs, fn=lambda fn=fn, c=ctx: list(fn(c)))
        else:  # the section guards each of its rows
            yield from fn(ctx)


def skipped_rows(reason: str) -> list[Row]:
    return [Row(bench, "all", "cuda", skipped=reason) for bench, _, _, _ in SECTIONS]
