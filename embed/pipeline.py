"""Shards to model-ready batches: the registry of decoders, all yielding the same `Batch`.

    name = resolve("auto", device, views=False)   # the decoder that runs here, checked first
    for b in batches(name, tars, idxs, order=order, pre=Preprocess(), batch_size=256, device=device,
                     threads=8):
        b.images   # [B, 3, 224, 224] float32 on `device`;  b.indices  [B] sample index, -1 = padding

`dali`: NVIDIA DALI, nvJPEG (`mixed`) on a GPU, its CPU decoder otherwise; it alone makes
augmented views (`--views`). `torchvision`: the shards' members read through their `.idx`,
`torchvision.io.decode_jpeg` (nvJPEG on CUDA, libjpeg-turbo on the CPU), then torchvision's
own resize/crop/normalize on tensors, a batch prepared ahead in a background thread; for
machines where DALI has no wheel. `torchvision-cpu`: the same, but decoded with libjpeg-turbo
on the CPU whatever the model's device, so pixels are PIL's (nvJPEG's differ by about a grey
level on average, more at some edges). `auto` (the default) is `dali` where DALI is installed
and decodes on the device, else `torchvision`. All reproduce the reference transform
(`Resize(256)` bilinear antialiased, `CenterCrop(224)`, ImageNet mean/std), do not apply EXIF
orientation (PIL does not), index rows by the samples' keys (never arrival order, checked
against `order`), pad the last batch to full size with index -1, and raise `DecodeError` naming
the sample they cannot decode.

Adding a decoder: a module with a `<name>_batches(tars, idxs, order, *, pre, batch_size, device,
threads[, views])` generator and, optionally, a probe `(device) -> why it cannot run, or None`;
an entry in DECODERS (and in AUTO when `auto` should pick it).
"""

from __future__ import annotations

import importlib
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

    from embed.views import Views


@dataclass(frozen=True)
class Decoder:
    """One decoder: where its batches come from, what it needs, whether it makes views."""

    name: str
    module: str  # holds `function` and `probe`
    function: str
    needs: str  # the package it imports (a decoder without it cannot run)
    probe: str | None = None  # a function of `module`: device -> why it cannot run there, or None
    views: bool = False
    options: tuple[tuple[str, object], ...] = ()  # keyword arguments `function` is called with

    def unusable(self, device: torch.device) -> str | None:
        """Why this decoder cannot run on `device` here, or None when it can."""
        if not installed(self.needs):
            return f"{self.needs} is not installed"
        return getattr(importlib.import_module(self.module), self.probe)(device) if self.probe else None


DECODERS: dict[str, Decoder] = {d.name: d for d in (
    Decoder("dali", "embed.decode_dali", "dali_batches", "nvidia.dali", probe="unusable", views=True),
    Decoder("torchvision", "embed.decode_torchvision", "torchvision_batches", "torchvision",
            probe="unusable"),
    Decoder("torchvision-cpu", "embed.decode_torchvision", "torchvision_batches", "torchvision",
            options=(("cpu_decode", True),)),
)}
AUTO = ("dali", "torchvision")  # `auto` takes the first of these that can run here
CHOICES = ("auto", *DECODERS)


def resolve(name: str, device: torch.device, *, views: bool) -> str:
    """The decoder that will run: `name` itself once checked to run on `device` (and make views,
    when asked), or for `auto` the first of AUTO that does; a UserError saying why otherwise,
    before anything is written."""
    if name == "auto":
        reasons = {}
        for candidate in AUTO:
            d = DECODERS[candidate]
            why = "makes no augmented views" if views and not d.views else d.unusable(device)
            if why is None:
                return candidate
            reasons[candidate] = why
        said = "; ".join(f"{k}: {v}" for k, v in reasons.items())
        raise UserError(f"--decoder auto: no decoder can run here ({said})")
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
            batch_size: int, device: torch.device, threads: int,
            views: Views | None = None) -> Iterator[Batch]:
    """Every sample of `tars` once, in fixed-size batches; padding is marked with index -1.
    `order` is the sample indices the tars hold, in order; `decoder` a resolved name."""
    if len(order) == 0:
        return iter(())
    d = DECODERS[decoder]
    produce = getattr(importlib.import_module(d.module), d.function)
    extra = {"views": views} if d.views else {}
    return produce(tars, idxs, order, pre=pre, batch_size=batch_size, device=device, threads=threads,
                   **dict(d.options), **extra)
