"""The GPU benchmark's image sections (bench.gpu runs them): gpu-data, gpu-decode, gpu-fidelity,
gpu-model and gpu-embed; see bench.gpu for what each measures.

    rows = decode_rows(Context(root, torch.device("cuda"), FULL, Budget(60)))
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from bench.common import CORES, Context, bf16_peak, checkpoint, flops_per_image, guarded
from bench.harness import Row, Timing, measure

log = logging.getLogger("bench")
REFERENCE_LOADER = "PIL + DataLoader(batch 16, 0 workers)"


DECODER_ORDER = ("nvimgcodec", "dali", "torchvision", "torchvision-cpu")  # embed.pipeline names


LARGE = ("vitl7_200ep", "vitl16_600ep", "vitb4_300ep")  # e2e over the smaller split


HW_SHARES = (0.12, 0.5, 1.0)  # the hardware JPEG engines' shares the decode section also tries


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


def _model_row(ctx: Context, name: str) -> Row:
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


def _embed_ours(ctx: Context, shards: Path, split: str, encoder: str, *, decoder: str) -> dict:
    """One run of python -m embed into a fresh store: its stats (embed.clock.Clock)."""
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
