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

Set-up (checkpoints, model load, compile, warm-up) stays outside the timed regions; the
reference path gets the same warm-up on the same device. A section that fails is recorded as
such and the others still run. Without CUDA, each section runs once at toy sizes on the CPU (so
this module cannot rot) and only "skipped: no CUDA device" rows are kept.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.harness import Row, Timing, measure

log = logging.getLogger("bench")
CORES = len(os.sched_getaffinity(0))
ALL_ENCODERS = ("vits16_800ep", "vitl7_200ep", "vitb16_600ep", "vitl16_600ep", "vitb4_300ep")
REFERENCE_LOADER = "PIL + DataLoader(batch 16, 0 workers)"
DECODER_ORDER = ("nvimgcodec", "dali", "torchvision", "torchvision-cpu")  # embed.pipeline names
LARGE = ("vitl7_200ep", "vitl16_600ep", "vitb4_300ep")  # e2e over the smaller split
HW_SHARES = (0.12, 0.5, 1.0)  # the hardware JPEG engines' shares the decode section also tries


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
    sizes: GpuSizes
    budget: Budget
    measured: dict = field(default_factory=dict)

    @property
    def dry(self) -> bool:
        return self.device.type != "cuda"


# -- set-up, done once and outside every timed region --------------------------------------


def prepare_images(ctx: Context) -> tuple[Path, Path]:
    """(ImageFolder with splits `train` and `val` of ImageNet-like JPEGs, its shards), made once;
    the seconds they took go to ctx.measured["data"]."""
    from bench.synthetic import make_image_folder
    from shard.__main__ import main as shard_main

    images, shards = ctx.root / "images", ctx.root / "shards"
    if (shards / "val" / "manifest.json").exists():
        return images, shards
    classes = 100 if not ctx.dry else 4
    t = time.perf_counter()
    make_image_folder(images, classes, train=-(-ctx.sizes.images // classes),
                      val=-(-ctx.sizes.small // classes), broken=0, size="imagenet", workers=CORES)
    made = time.perf_counter()
    per_shard = 1000 if not ctx.dry else 8  # ImageNet's train shards hold 1,000 (1,282 of them)
    assert shard_main([str(images), str(shards), "--samples-per-shard", str(per_shard),
                       "--workers", str(CORES)]) == 0
    files = list(images.rglob("*.JPEG"))
    ctx.measured["data"] = {"images": len(files), "mean_kb": round(sum(f.stat().st_size for f in files)
                                                                   / len(files) / 1e3, 1),
                            "generate_s": round(made - t, 1), "shard_s": round(time.perf_counter() - made, 1)}
    return images, shards


def data_rows(ctx: Context) -> list[Row]:
    prepare_images(ctx)
    data = ctx.measured.get("data", {})
    return [Row("gpu-data", "ImageNet-like JPEGs, generated and sharded", ctx.device.type,
                settings=data | {"train": ctx.sizes.images, "val": ctx.sizes.small,
                                 "generator": "bench.synthetic.imagenet_like_jpeg", "workers": CORES})]


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
    ctx.measured[("model", name)] = ours.rate  # what gpu-embed compares with
    return Row("gpu-model", name, dev.type, ours.summary(), reference.summary(),
               f"bf16 + torch.compile, batch {batch} (auto)", "fp32 eager, batch 16", settings)


def model_rows(ctx: Context) -> Iterator[Row]:
    for name in ctx.sizes.encoders:
        yield guarded(ctx, "gpu-model", name, needs_s=30, fn=lambda name=name: [_model_row(ctx, name)])[0]
        if not ctx.dry:
            torch.cuda.empty_cache()  # the last encoder's runners are gone with its frame


# -- gpu-decode -------------------------------------------------------------------------------


def _open(shards: Path, split: str):
    from shard.reader import open_split

    return open_split(shards, split)


def _batches(decoder: str, split, device: torch.device, *, batch: int, shards: int | None = None,
             hw_share: float | None = None):
    from embed.encoders import Preprocess
    from embed.pipeline import Tuning, batches

    tars, idxs = split.tar_paths()[:shards], split.idx_paths()[:shards]
    n = sum(len(split.shard_range(i)) for i in range(len(tars)))
    return batches(decoder, tars, idxs, order=np.arange(n), pre=Preprocess(), batch_size=batch, device=device,
                   threads=CORES, tuning=Tuning(hw_share=hw_share))


def _consume(decoder: str, split, device: torch.device, *, batch: int, hw_share: float | None = None) -> int:
    """Every sample of `split` through `decoder` to model-ready batches on `device`."""
    stream = _batches(decoder, split, device, batch=batch, hw_share=hw_share)
    return sum(int((b.indices >= 0).sum()) for b in stream)


def _reference_decode(images: Path, n: int) -> int:
    """The reference path's loader over the first n images of `val`."""
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    from bench.reference import REFERENCE_TRANSFORM

    data = Subset(ImageFolder(images / "val", transform=REFERENCE_TRANSFORM), range(n))
    return sum(len(x) for x, _ in DataLoader(data, batch_size=16, num_workers=0))


def _usable(decoder: str, device: torch.device) -> str | None:
    from embed.pipeline import DECODERS

    return DECODERS[decoder].unusable(device)


def _raw(shards: Path, n: int) -> list[bytearray]:
    """The bytes of the first n JPEGs of `val`, read once (outside the timed regions)."""
    from embed.members import MemberReader, jpeg_members

    split = _open(shards, "val")
    reader = MemberReader()
    data = [reader.read(m) for m in jpeg_members(split.tar_paths(), split.idx_paths())[:n]]
    reader.close()
    return data


def _decode_alone(decoder: str, data: list[bytearray], device: torch.device, *, batch: int) -> int:
    """`data` decoded to uint8 images on `device` (no resize), a batch per call."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if decoder == "nvimgcodec":
        from nvidia import nvimgcodec

        from msnpipe.decoders import nvimgcodec_decoder, nvimgcodec_params

        dec = nvimgcodec_decoder((device.index or 0) if device.type == "cuda" else None, threads=CORES)
        stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
        params = nvimgcodec_params()
        for i in range(0, len(data), batch):
            out = dec.decode([nvimgcodec.CodeStream(d) for d in data[i : i + batch]], params=params,
                             cuda_stream=stream)
            assert all(im is not None for im in out)
        return len(data)
    for i in range(0, len(data), batch):
        tensors = [torch.frombuffer(d, dtype=torch.uint8) for d in data[i : i + batch]]
        if device.type == "cuda":
            decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
        else:
            [decode_jpeg(t, mode=ImageReadMode.RGB) for t in tensors]
    return len(data)


def _preprocess_rows(ctx: Context, data: list[bytearray], batch: int) -> Row:
    """The GPU preprocessing alone: one batch of decoded images resized, cropped and normalized by
    embed.resize.resized_crops against torchvision's ops image by image (the path before it)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from embed.encoders import Preprocess
    from embed.resize import normalized, reference_transform, resized_crops

    pre, dev = Preprocess(), ctx.device
    tensors = [torch.frombuffer(d, dtype=torch.uint8) for d in data[:batch]]
    images = (decode_jpeg(tensors, mode=ImageReadMode.RGB, device=dev) if dev.type == "cuda"
              else [decode_jpeg(t, mode=ImageReadMode.RGB) for t in tensors])
    batched = lambda: normalized(resized_crops(images, pre.resize, pre.crop), pre.mean, pre.std)  # noqa: E731
    one_by_one = lambda: torch.stack([reference_transform(im, pre) for im in images])  # noqa: E731
    gpu, n = not ctx.dry, ctx.sizes.repeats
    ours = measure(lambda: (batched(), len(images))[1], n + 2, sync=gpu)
    reference = measure(lambda: (one_by_one(), len(images))[1], n + 2, sync=gpu)
    apart = ((batched() - one_by_one()).abs() * 255 * torch.tensor(pre.std, device=dev).view(3, 1, 1)).max()
    return Row("gpu-decode", "preprocessing alone (decoded images in, model-ready batch out)", dev.type,
               ours.summary(), reference.summary(), "embed.resize.resized_crops + normalized, one batch",
               "torchvision resize + center_crop + normalize per image", {
                   "batch": len(images), "max_grey_levels_apart": round(float(apart), 3)})


def decode_rows(ctx: Context) -> list[Row]:
    images, shards = prepare_images(ctx)
    n, gpu, dev = ctx.sizes.repeats, not ctx.dry, ctx.device
    batch = ctx.sizes.batch or 256
    reference = measure(lambda: _reference_decode(images, ctx.sizes.reference), 1, warmup=0)
    train = _open(shards, "train")
    settings = {"images": train.num_samples, "split": "train (ImageNet-like)", "batch": batch,
                "threads": CORES}
    rows = []
    for decoder in DECODER_ORDER:
        case = f"{decoder}: shards to model-ready batches"
        if (why := _usable(decoder, dev)) is not None:
            rows.append(Row("gpu-decode", case, dev.type, skipped=why))
            continue
        if ctx.budget.left() < 10:
            rows.append(Row("gpu-decode", case, dev.type, skipped="time budget"))
            continue
        t = measure(lambda d=decoder: _consume(d, train, dev, batch=batch), max(1, n - 1), sync=gpu)
        rows.append(Row("gpu-decode", case, dev.type, t.summary(), reference.summary(),
                        f"embed.pipeline {decoder}, batch {batch}", REFERENCE_LOADER, settings))
        shares = (HW_SHARES if gpu else HW_SHARES[:1]) if decoder in ("nvimgcodec", "dali") else ()
        for share in shares:  # (on the CPU, one run of the code: the shares apply on a GPU only)
            if ctx.budget.left() < 10:
                break
            once = lambda d=decoder, h=share: _consume(d, train, dev, batch=batch, hw_share=h)  # noqa: E731
            t = measure(once, 1, sync=gpu)
            rows.append(Row("gpu-decode", f"{case}, --hw-share {share}", dev.type, t.summary(),
                            reference.summary(), f"embed.pipeline {decoder}, batch {batch}, hw share {share}",
                            REFERENCE_LOADER, settings | {"hw_share": share}))
    data = _raw(shards, min(ctx.sizes.small, 2000))
    for decoder, label in (("nvimgcodec", "nvImageCodec Decoder.decode"),
                           ("torchvision", "torchvision.io.decode_jpeg")):
        case = f"{decoder}: decode alone (bytes in memory to uint8 images)"
        if (why := _usable(decoder, dev)) is not None:
            rows.append(Row("gpu-decode", case, dev.type, skipped=why))
            continue
        t = measure(lambda d=decoder: _decode_alone(d, data, dev, batch=batch), n, sync=gpu)
        rows.append(Row("gpu-decode", case, dev.type, t.summary(), None, f"{label}, batch {batch}", "",
                        {"images": len(data), "split": "val (ImageNet-like)"}))
    rows.append(_preprocess_rows(ctx, data, batch))
    return rows


# -- gpu-fidelity -----------------------------------------------------------------------------


def _reference_pixels(images: Path, shards: Path, n: int) -> torch.Tensor:
    """The reference path's model input [n, 3, 224, 224] for the first n samples of `val`."""
    from bench.reference import load_image

    split = _open(shards, "val")
    return torch.stack([load_image(images / "val" / p) for p in split.paths()[:n]])


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1)


def fidelity_rows(ctx: Context) -> list[Row]:
    """Each decoder's pixels and fp32 ViT-S/16 rows (random weights, eager) on a sample of `val`,
    against the reference path's on the same images."""
    from embed.checkpoint import random_model
    from embed.encoders import Preprocess, get_spec
    from embed.pipeline import fidelity
    from embed.runner import EncoderRunner

    images, shards = prepare_images(ctx)
    val, dev = _open(shards, "val"), ctx.device
    n = min(val.num_samples, 512 if not ctx.dry else 8)
    want = _reference_pixels(images, shards, n)  # [n, 3, 224, 224] on the CPU
    spec = get_spec("vits16_800ep")
    model = EncoderRunner(spec, random_model(spec), kind="cls_prenorm", device=dev, precision="fp32",
                          compile=False)
    want_rows = torch.cat([model.forward(want[i : i + 64].to(dev)).float().cpu() for i in range(0, n, 64)])
    grey = torch.tensor(Preprocess().std).view(1, 3, 1, 1) * 255  # normalized units -> grey levels
    shards_needed = -(-n // val.samples_per_shard)
    rows = []
    for decoder in DECODER_ORDER:
        if (why := _usable(decoder, dev)) is not None:
            rows.append(Row("gpu-fidelity", decoder, dev.type, skipped=why))
            continue
        stream = _batches(decoder, val, dev, batch=64, shards=shards_needed)
        got = torch.cat([b.images.cpu() for b in stream])[:n]  # [n, 3, 224, 224]
        apart = (got - want).abs() * grey
        rows_got = torch.cat([model.forward(got[i : i + 64].to(dev)).float().cpu() for i in range(0, n, 64)])
        cos = _cosines(rows_got, want_rows)
        rows.append(Row("gpu-fidelity", decoder, dev.type, settings={
            "images": n, "mean_grey_levels_apart": round(float(apart.mean()), 4),
            "max_grey_levels_apart": round(float(apart.max()), 2),
            "min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6),
            "test_jpegs_grey_levels_apart": round(fidelity(decoder, dev), 4),
            "model": "vits16_800ep, random weights, fp32 eager, cls_prenorm"}))
    return rows


# -- gpu-embed --------------------------------------------------------------------------------


def _embed_ours(ctx: Context, shards: Path, split: str, encoder: str, *, decoder: str) -> dict:
    """One run of python -m embed into a fresh store: its stats (embed.run.Clock)."""
    from embed.run import Config, run

    out = ctx.root / f"store_{encoder}_{decoder}.zarr"
    stats = run(Config(shards=shards, split=split, encoders=(encoder,), weights=str(checkpoint(ctx, encoder)),
                       out=out, device=str(ctx.device), decoder=decoder, batch_size=ctx.sizes.batch))
    shutil.rmtree(out)
    if not stats["steady_images"]:
        raise RuntimeError(f"{stats['images']} images fill one batch of {stats['batch']}: nothing to time")
    return stats


def _embed_reference(ctx: Context, images: Path, encoder: str) -> int:
    from bench.reference import embed_folder, reference_vit
    from embed.encoders import get_spec

    s = get_spec(encoder)
    model = reference_vit(checkpoint(ctx, encoder), s.patch, s.dim, depth=s.depth,
                          heads=s.heads).to(ctx.device)
    rows = embed_folder(images / "val", model, device=ctx.device, limit=ctx.sizes.reference)[0]
    del model
    return len(rows)


def _embed_row(ctx: Context, images: Path, shards: Path, *, encoder: str, decoder: str) -> Row:
    split = "val" if encoder in LARGE else "train"
    stats = _embed_ours(ctx, shards, split, encoder, decoder=decoder)
    ours = Timing([stats["steady_s"]], stats["steady_images"])
    key = ("reference", encoder)
    if key not in ctx.measured:  # one reference run per encoder, whatever the decoder
        ctx.measured[key] = measure(lambda: _embed_reference(ctx, images, encoder), 1, warmup=0,
                                    sync=not ctx.dry)
    model_rate = ctx.measured.get(("model", encoder))
    settings = {"images": stats["images"], "split": f"{split} (ImageNet-like)",
                "timed": "past the first batch (compile, warm-up) until the last rows are in the store",
                "first_batch_s": round(stats["first_batch_s"], 2),
                "waiting_for_data": round(stats["wait_s"] / stats["steady_s"], 3),
                "computing": round(stats["compute_s"] / stats["steady_s"], 3),
                "model_only_img_s": round(model_rate, 1) if model_rate else None,
                "share_of_model_rate": round(ours.rate / model_rate, 3) if model_rate else None,
                "reference_images": ctx.sizes.reference}
    precision = "bf16 + compile" if not ctx.dry else "fp32"
    return Row("gpu-embed", f"{encoder}, {decoder}", ctx.device.type, ours.summary(),
               ctx.measured[key].summary(), f"python -m embed --decoder {decoder}, {precision}, batch "
               f"{stats['batch']}", "compute_embeddings.py: PIL, batch 16, 0 workers, fp32 eager", settings)


def embed_rows(ctx: Context) -> Iterator[Row]:
    images, shards = prepare_images(ctx)
    for encoder in ctx.sizes.embed_encoders:
        for decoder in DECODER_ORDER:
            case = f"{encoder}, {decoder}"
            if (why := _usable(decoder, ctx.device)) is not None:
                yield Row("gpu-embed", case, ctx.device.type, skipped=why)
                continue
            yield guarded(ctx, "gpu-embed", case, needs_s=20,
                          fn=lambda e=encoder, d=decoder: [_embed_row(ctx, images, shards, encoder=e,
                                                                      decoder=d)])[0]
        if not ctx.dry:
            torch.cuda.empty_cache()


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
