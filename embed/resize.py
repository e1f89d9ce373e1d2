"""The reference transform's geometry, and a resize of only the region the center crop keeps.

    resized_size(h, w, 256)          # (nh, nw): torchvision's Resize(256) size rule
    crop_anchor(nh, nw, 224)         # (top, left): torchvision's CenterCrop anchor (round half even)
    resized_crop(img, resize=256, crop=224)   # uint8 [C, H, W] -> float32 [C, 224, 224], 0..255

`resized_crop` gives the pixels of Resize(256) then CenterCrop(224) (antialiased bilinear, the
triangle filter torch and PIL use) without making the resized image: each output row and column
is a weighted sum of the input pixels under its filter, computed for the 224 kept rows and
columns only, one axis after the other. A 1x10000 strip resizes to 256x2,560,000 (2 GB of
uint8) before its crop; this takes 224x224 and the strip. Its pixels are within one grey level
of torchvision's (tests/test_embed_resize.py); the decoders use it where the full resize would
be large (FULL_RESIZE_PIXELS), and torchvision's own transform below that.
"""

from __future__ import annotations

import numpy as np
import torch

FULL_RESIZE_PIXELS = 1 << 22  # a resized image above this is not made: resized_crop instead


def resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(new h, new w) with the shorter side at `size`, the longer as torchvision computes it."""
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def crop_anchor(h: int, w: int, crop: int) -> tuple[int, int]:
    """(top, left) of torchvision's center crop: Python's round of half the margin."""
    return round((h - crop) / 2.0), round((w - crop) / 2.0)


def taps(in_size: int, out_size: int, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(input indices [length, K], weights [length, K]) of output pixels start..start+length-1 of an
    antialiased bilinear resize from in_size to out_size, as torch computes them (the triangle
    filter widened by the scale when shrinking; weights normalised; K the widest filter)."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(start, start + length) + 0.5)  # [L]
    lo = np.maximum((center - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((center + support + 0.5).astype(np.int64), in_size)
    k = int((hi - lo).max())
    idx = lo[:, None] + np.arange(k)[None, :]  # [L, K]
    w = np.clip(1.0 - np.abs((idx - center[:, None] + 0.5) * invscale), 0.0, None)
    w[idx >= hi[:, None]] = 0.0
    w /= w.sum(1, keepdims=True)
    return np.minimum(idx, in_size - 1), w


def _along_last(x: torch.Tensor, idx: np.ndarray, w: np.ndarray) -> torch.Tensor:
    """x [..., N] resampled along its last axis to [..., L] by taps (idx, w) [L, K]."""
    i = torch.as_tensor(idx, device=x.device)
    weights = torch.as_tensor(w, device=x.device, dtype=x.dtype)
    return (x[..., i] * weights).sum(-1)  # [..., L, K] -> [..., L]


def resized_crop(img: torch.Tensor, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """uint8 [C, H, W] -> float32 [C, crop, crop] in 0..255 (rounded as a uint8 image is): the
    center crop of the image resized to `resize` on its shorter side, made from the kept region."""
    _, h, w = img.shape
    nh, nw = resized_size(h, w, resize)
    top, left = crop_anchor(nh, nw, crop)
    x = _along_last(img.to(torch.float32), *taps(w, nw, left, crop))  # [C, H, crop], kept in float32
    x = _along_last(x.transpose(1, 2), *taps(h, nh, top, crop)).transpose(1, 2)  # [C, crop, crop]
    return x.round_().clamp_(0, 255)
