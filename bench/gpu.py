"""python -m bench gpu [--quick] [--scale N]: every GPU claim as a measured row, on one GPU, in minutes.

    python -m bench gpu              # the full set: 20,000 ImageNet-like JPEGs, about 6 minutes
    python -m bench gpu --scale 50000  # the decode and embed sections on N JPEGs
    python -m bench gpu --quick      # smaller; on a machine without CUDA, a dry run on the CPU

Needs torch, torchvision, timm, numpy, zarr, webdataset and matplotlib; DALI, nvImageCodec, cuML
and scikit-learn are optional (a missing one is a "skipped: not installed" row). Sections:

- gpu-data: N JPEGs generated as ImageNet's are spread (bench.synthetic.imagenet_like_jpeg:
  most 500x375 or 375x500, a tail to 2,000 pixels, about 110 KB, some progressive and grey) in
  split `train`, a smaller `val`, sharded; the seconds each took (the run's set-up, timed);
- gpu-decode: every decoder's shards -> model-ready batches on the device (decode + resize +
  crop + normalize, device synchronized) over `train`, against PIL with a DataLoader of batch 16
  and no workers (the reference path's loader); the decode alone (nvImageCodec, nvJPEG); the
  preprocessing alone, batched (embed.resize.resized_crops) against per-image torchvision ops;
- gpu-fidelity: each decoder's pixels and fp32 ViT-S/16 rows on a sample of `val` against the
  reference path's (PIL + torchvision transform): grey levels apart, min and mean cosine;
- gpu-model: each MSN encoder (random weights), bf16 + torch.compile at the auto batch size
  against fp32 eager at batch 16: img/s, TFLOP/s, fraction of the GPU's dense bf16 peak, memory;
- gpu-embed: shards -> store (python -m embed, auto batch) per decoder and encoder, timed past
  the first batch until the last rows are in the store, against the reference path on the same
  GPU (PIL, batch 16, fp32 eager) and as a share of the model-only rate measured above; ViT-S
  and ViT-B over `train`, the larger encoders over `val`;
- gpu-probe: --backend torch against scikit-learn (and cuML) on a 1000-class, D=1024
  few-shot curve of realistic embeddings; the whole 20-seed curve on the GPU, and the subset
  scikit-learn fits too (all cores), fit for fit, with the differences of the answers;
- gpu-knn: kNN and diagnostics on 100k x 1024 rows, the GPU against the same code on the CPU.

The sections live in bench.gpu_images (data, decode, fidelity, model, embed) and bench.gpu_probe
(probe, knn), on what bench.common holds; this module sizes them and runs them in turn.

Set-up (checkpoints, model load, compile, warm-up) stays outside the timed regions; the
reference path gets the same warm-up on the same device. A section that fails is recorded as
such and the others still run. Without CUDA, each section runs once at toy sizes on the CPU (so
this module cannot rot) and only "skipped: no CUDA device" rows are kept.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import Budget, Context, guarded
from bench.gpu_images import data_rows, decode_rows, embed_rows, fidelity_rows, model_rows
from bench.gpu_probe import knn_rows, probe_rows
from bench.harness import Row

log = logging.getLogger("bench")
ALL_ENCODERS = ("vits16_800ep", "vitl7_200ep", "vitb16_600ep", "vitl16_600ep", "vitb4_300ep")


@dataclass(frozen=True)
class GpuSizes:
    """How big each section is."""

    encoders: tuple[str, ...]  # gpu-model, in this order while the budget lasts
    embed_encoders: tuple[str, ...]  # gpu-embed, each with every decoder
    images: int  # ImageNet-like JPEGs in split `train` (--scale)
    small: int  # JPEGs in split `val`: the large encoders' e2e, fidelity, the reference paths
    reference: int  # of `val`, the images the reference path is timed on
    probe: tuple[int, int, int, int]  # classes, D, train and test rows per class
    seeds: int  # the torch curve: seeds x n = 1..per_class
    per_class: int
    sk_seeds: int  # the subset scikit-learn fits too: seeds x n = 1..sk_per_class
    sk_per_class: int
    knn: tuple[int, int, int]  # train rows, test rows, D
    repeats: int
    seconds: float  # the time budget of the whole run, data generation included
    batch: int | None = None  # embed's batch (None: auto, the largest that fits)

    def scaled(self, n: int) -> GpuSizes:
        """These sizes with N JPEGs in `train` (and a `val` of a tenth, 1,000 to 4,000)."""
        import dataclasses

        return dataclasses.replace(self, images=n, small=min(n, max(1000, min(4000, n // 10))))


FULL = GpuSizes(("vits16_800ep", "vitb16_600ep", "vitl7_200ep", "vitl16_600ep", "vitb4_300ep"),
                ("vits16_800ep", "vitb16_600ep", "vitl7_200ep"), 20_000, 2000, 400, (1000, 1024, 10, 5),
                20, 10, 4, 3, (100_000, 10_000, 1024), 3, 360)
QUICK = GpuSizes(("vits16_800ep", "vitl7_200ep"), ("vits16_800ep",), 3000, 1000, 200, (1000, 1024, 10, 5),
                 5, 5, 2, 2, (20_000, 2_000, 1024), 2, 240)
DRY = GpuSizes(("vits16_800ep",), ("vits16_800ep",), 40, 20, 8, (12, 32, 6, 3), 2, 2, 1, 2,
               (400, 50, 32), 1, 900, batch=4)










# (bench, share of the time budget, rows, whether the section is measured as a whole)
SECTIONS = (("gpu-data", 0.16, data_rows, True), ("gpu-decode", 0.1, decode_rows, True),
            ("gpu-fidelity", 0.04, fidelity_rows, True), ("gpu-model", 0.2, model_rows, False),
            ("gpu-embed", 0.26, embed_rows, False), ("gpu-probe", 0.14, probe_rows, True),
            ("gpu-knn", 0.1, knn_rows, True))


def rows(root: Path, device: torch.device, sizes: GpuSizes, *, only: tuple[str, ...] = ()) -> Iterator[Row]:
    """Every section's rows (or those of the sections in `only`), as each is measured; each
    section has its share of the budget (gpu-data's set-up is made by whichever needs it first)."""
    total = Budget(sizes.seconds)
    chosen = [s for s in SECTIONS if not only or s[0] in only]
    scale = 1 / sum(share for _, share, _, _ in chosen)
    measured: dict = {}
    for bench, share, fn, whole in chosen:
        share *= scale
        ctx = Context(root, device, sizes, Budget(min(total.left(), share * sizes.seconds)), measured)
        log.info("%s on %s (%.0f s for it, %.0f s in all left)", bench, device, ctx.budget.left(),
                 total.left())
        if whole:
            needs = min(20.0, ctx.budget.left() / 2) if bench != "gpu-data" else 0.0
            yield from guarded(ctx, bench, "all", needs_s=needs, fn=lambda fn=fn, c=ctx: list(fn(c)))
        else:  # the section guards each of its rows
            yield from fn(ctx)


def skipped_rows(reason: str) -> list[Row]:
    return [Row(bench, "all", "cuda", skipped=reason) for bench, _, _, _ in SECTIONS]
