"""Shards to model-ready batches, by one of two decoders that yield the same `Batch`.

    for b in batches("torchvision", tars, idxs, order, Preprocess(), 256, device, threads=8):
        b.images   # [B, 3, 224, 224] float32 on `device`;  b.indices  [B] sample index, -1 = padding

`dali` (default): NVIDIA DALI, nvJPEG (`mixed`) on a GPU, its CPU decoder otherwise; it also
makes augmented views (`--views`). `torchvision`: the shards' members read through their
`.idx`, `torchvision.io.decode_jpeg` (nvJPEG on CUDA, libjpeg-turbo on the CPU), then
torchvision's own resize/crop/normalize on tensors, a batch prepared ahead in a background
thread; for machines where DALI has no wheel. `torchvision-cpu`: the same, but decoded with
libjpeg-turbo on the CPU whatever the model's device, so pixels are PIL's (nvJPEG's differ by
about a grey level on average, more at some edges). All reproduce the reference transform
(`Resize(256)` bilinear antialiased, `CenterCrop(224)`, ImageNet mean/std), do not apply EXIF
orientation (PIL does not), index rows by the samples' keys (never arrival order, checked
against `order`) and pad the last batch to full size with index -1.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embed.encoders import Preprocess
from msnpipe.runtime import UserError

if TYPE_CHECKING:
    import torch

DECODERS = ("dali", "torchvision", "torchvision-cpu")


@dataclass(frozen=True)
class Batch:
    """images [B, 3, H, W] float32 (on the model's device), their sample indices [B] (-1 for
    padding), and K augmented views of each, K tensors [B, 3, H, W] (empty without --views)."""

    images: torch.Tensor
    indices: np.ndarray
    views: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class Views:
    """K views per sample with one augmentation (embed.views) and a seed."""

    k: int
    augment: str
    seed: int


def check_order(read: np.ndarray, order: np.ndarray, start: int) -> None:
    """The sample indices a decoder read must be the ones `order` expects from `start` on."""
    if not np.array_equal(read, order[start : start + len(read)]):
        want = order[start : start + 4].tolist()
        raise RuntimeError(f"read samples {read.tolist()[:4]}..., expected {want}...: shards and manifest "
                           "disagree")


def batches(decoder: str, tars: list[Path], idxs: list[Path], *, order: np.ndarray, pre: Preprocess,
            batch_size: int, device: torch.device, threads: int,
            views: Views | None = None) -> Iterator[Batch]:
    """Every sample of `tars` once, in fixed-size batches; padding is marked with index -1.
    `order` is the sample indices the tars hold, in order."""
    if len(order) == 0:
        return iter(())
    if decoder == "dali":
        from embed.decode_dali import dali_batches

        return dali_batches(tars, idxs, order, pre=pre, batch_size=batch_size, device=device, threads=threads,
                            views=views)
    if decoder in ("torchvision", "torchvision-cpu"):
        if views is not None:
            raise UserError("--views needs --decoder dali: augmented views are made by DALI")
        from embed.decode_torchvision import torchvision_batches

        return torchvision_batches(tars, idxs, order, pre=pre, batch_size=batch_size, device=device,
                                   threads=threads,
                                   cpu_decode=decoder == "torchvision-cpu")
    raise UserError(f"--decoder {decoder!r}: one of {', '.join(DECODERS)}")
