"""Shards to model-ready batches: the registry of decoders, all yielding the same `Batch`.

    name = resolve("auto", device, views=False)   # the decoder that runs here, checked first
    for b in batches(name, tars, idxs, order=order, pre=Preprocess(), batch_size=256, device=device,
                     threads=8):
        b.images   # [B, 3, 224, 224] float32 on `device`;  b.indices  [B] sample index, -1 = padding
    fidelity("nvimgcodec", device)   # mean |its pixels - libjpeg-turbo's (PIL's)| on test JPEGs

`nvimgcodec`: NVIDIA nvImageCodec, a batch per call, the GPU's hardware JPEG engines first and
its output straight into device memory (its CPU backend on a CPU). `dali`: NVIDIA DALI, nvJPEG
(`mixed`) on a GPU, its CPU decoder otherwise; it alone makes augmented views (`--views`).
`torchvision`: `torchvision.io.decode_jpeg` (nvJPEG on CUDA, libjpeg-turbo on the CPU), for
machines with neither. `torchvision-cpu`: the same, but decoded with libjpeg-turbo on the CPU
whatever the model's device, so pixels are PIL's. nvimgcodec and torchvision read the shards'
members through their `.idx` and prepare a batch ahead in a background thread (embed.members);
on a GPU they resize the whole batch at once (embed.resize.resized_crops).

`auto` (the default) takes the first of AUTO[device type] that can run here; on a GPU, also
only one whose pixels on test JPEGs (embed.batch.test_jpegs: baseline 4:2:0, progressive, grey)
lie within FIDELITY_MAX grey levels of libjpeg-turbo's on average (nvJPEG without libjpeg's
chroma upsampling does not: torchvision's nvJPEG path is then passed over for torchvision-cpu).
A resumed group keeps the decoder it was built with (embed.run). All reproduce the reference
transform (`Resize(256)` bilinear antialiased, `CenterCrop(224)`, ImageNet mean/std), do not
apply EXIF orientation (PIL does not), index rows by the samples' keys (never arrival order,
checked against `order`), pad the last batch to full size with index -1, and raise
`DecodeError` naming the sample they cannot decode.

Adding a decoder: a module with a `<name>_batches(tars, idxs, order, *, pre, batch_size, device,
threads[, views][, hw_share, cpu_share])` generator, optionally a probe `(device) -> why it cannot
run, or None` and `pixels(data, device) -> uint8 [3, H, W] tensors` (for `fidelity`); an entry in
DECODERS (and in AUTO when `auto` should pick it).
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embed.batch import Batch
from embed.encoders import Preprocess
from msnpipe.runtime import UserError, installed

if TYPE_CHECKING:
    import torch

    from embed.views import ViewRecipe

log = logging.getLogger("embed")
FIDELITY_MAX = 0.5  # grey levels: the mean distance from libjpeg-turbo's pixels `auto` accepts on a GPU


@dataclass(frozen=True)
class Tuning:
    """How the GPU decoders split their work: the hardware JPEG engines' share of each batch
    (None: the library's default, DALI 0.65, nvImageCodec 1.0) and the share decoded on CPU
    threads instead (nvImageCodec)."""

    hw_share: float | None = None
    cpu_share: float = 0.0


@dataclass(frozen=True)
class Decoder:
    """One decoder: where its batches come from, what it needs, whether it makes views."""

    name: str
    module: str  # holds `function`, `probe` and `pixels`
    function: str
    needs: str  # the package it imports (a decoder without it cannot run)
    probe: str | None = None  # a function of `module`: device -> why it cannot run there, or None
    pixels: str = "pixels"  # a function of `module`: (JPEGs, device) -> uint8 [3, H, W] CPU tensors
    views: bool = False
    options: tuple[tuple[str, object], ...] = ()  # keyword arguments `function` is called with
    takes: tuple[str, ...] = ()  # the Tuning fields `function` takes
    host: bool = False  # decodes on the CPU whatever the model's device

    def unusable(self, device: torch.device) -> str | None:
        """Why this decoder cannot run on `device` here, or None when it can."""
        if not installed(self.needs):
            return f"{self.needs} is not installed"
        return getattr(importlib.import_module(self.module), self.probe)(device) if self.probe else None


DECODERS: dict[str, Decoder] = {d.name: d for d in (
    Decoder("nvimgcodec", "embed.decode_nvimgcodec", "nvimgcodec_batches", "nvidia.nvimgcodec",
            probe="unusable", takes=("hw_share", "cpu_share")),
    Decoder("dali", "embed.decode_dali", "dali_batches", "nvidia.dali", probe="unusable", views=True,
            takes=("hw_share",)),
    Decoder("torchvision", "embed.decode_torchvision", "torchvision_batches", "torchvision",
            probe="unusable"),
    Decoder("torchvision-cpu", "embed.decode_torchvision", "torchvision_batches", "torchvision",
            options=(("cpu_decode", True),), host=True),
)}
# `auto` takes the first of these that can run on the device (on a GPU, within FIDELITY_MAX);
# on the CPU every one is libjpeg-turbo, and DALI's threads are the fastest
AUTO = {"cuda": ("nvimgcodec", "dali", "torchvision", "torchvision-cpu"), "cpu": ("dali", "torchvision")}
CHOICES = ("auto", *DECODERS)


@functools.cache
def _fidelity(name: str, device: str) -> float:
    import io

    import torch
    from PIL import Image

    from embed.batch import test_jpegs

    d = DECODERS[name]
    data = test_jpegs()
    dev = torch.device("cpu") if d.host else torch.device(device)
    got = getattr(importlib.import_module(d.module), d.pixels)(data, dev)
    diffs = []
    for jpg, pixels in zip(data, got):
        want = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")).transpose(2, 0, 1)
        diffs.append(np.abs(pixels.numpy().astype(np.int16) - want).mean())
    return float(np.mean(diffs))


def fidelity(name: str, device: torch.device) -> float:
    """Mean |pixel - libjpeg-turbo's (PIL's) pixel| in grey levels of decoder `name` on `device`,
    over embed.batch.test_jpegs (measured once per process)."""
    return _fidelity(name, str(device))


def _auto(device: torch.device, views: bool) -> str:
    reasons = {}
    for candidate in AUTO["cuda" if device.type == "cuda" else "cpu"]:
        d = DECODERS[candidate]
        why = "makes no augmented views" if views and not d.views else d.unusable(device)
        if why is None and device.type == "cuda":
            apart = fidelity(candidate, device)
            if apart > FIDELITY_MAX:
                why = f"its pixels lie {apart:.2f} grey levels from libjpeg-turbo's on average"
        if why is None:
            return candidate
        log.info("--decoder auto: not %s (%s)", candidate, why)
        reasons[candidate] = why
    said = "; ".join(f"{k}: {v}" for k, v in reasons.items())
    raise UserError(f"--decoder auto: no decoder can run here ({said})")


def resolve(name: str, device: torch.device, *, views: bool, recorded: str | None = None) -> str:
    """The decoder that will run: `name` itself once checked to run on `device` (and make views,
    when asked), or for `auto` the decoder `recorded` (the one a group being resumed was built
    with) where it can run, else the first of AUTO that can; a UserError saying why otherwise,
    before anything is written."""
    if name == "auto":
        if recorded in DECODERS and DECODERS[recorded].unusable(device) is None \
                and (DECODERS[recorded].views or not views):
            return recorded
        return _auto(device, views)
    if name not in DECODERS:
        raise UserError(f"--decoder {name!r}: one of {', '.join(CHOICES)}")
    d = DECODERS[name]
    if views and not d.views:
        makers = ", ".join(n for n, x in DECODERS.items() if x.views)
        raise UserError(f"--views needs a decoder that makes augmented views ({makers}), "
                        f"not --decoder {name}")
    if (why := d.unusable(device)) is not None:
        others = [n for n in DECODERS if n != name and DECODERS[n].unusable(device) is None]
        raise UserError(f"--decoder {name} cannot run on {device}: {why}; use --decoder auto"
                        f"{' or ' + ', '.join(others) if others else ''}")
    return name


def batches(decoder: str, tars: list[Path], idxs: list[Path], *, order: np.ndarray, pre: Preprocess,
            batch_size: int, device: torch.device, threads: int, views: ViewRecipe | None = None,
            tuning: Tuning = Tuning()) -> Iterator[Batch]:
    """Every sample of `tars` once, in fixed-size batches; padding is marked with index -1.
    `order` is the sample indices the tars hold, in order; `decoder` a resolved name."""
    if len(order) == 0:
        return iter(())
    d = DECODERS[decoder]
    produce = getattr(importlib.import_module(d.module), d.function)
    extra = {"views": views} if d.views else {}
    for key in d.takes:
        if (value := getattr(tuning, key)) is not None:
            extra[key] = value
    return produce(tars, idxs, order, pre=pre, batch_size=batch_size, device=device, threads=threads,
                   **dict(d.options), **extra)
