"""The reference transform's geometry, and a resize of only the region the center crop keeps.

    resized_size(h, w, 256)          # (nh, nw): torchvision's Resize(256) size rule
    crop_anchor(nh, nw, 224)         # (top, left): torchvision's CenterCrop anchor (round half even)
    resized_crop(img, resize=256, crop=224)   # uint8 [C, H, W] -> float32 [C, 224, 224], 0..255
    resized_crops(images, 256, 224)  # uint8 [C, H_i, W_i] each -> float32 [B, C, 224, 224], batched
    normalized(x, mean, std)         # float32 0..255 -> (x / 255 - mean) / std
    reference_transform(img, pre)    # uint8 [3, H, W] -> float32 [3, 224, 224]: torchvision's on a tensor

`resized_crop` gives the pixels of Resize(256) then CenterCrop(224) (antialiased bilinear, the
triangle filter torch and PIL use) without making the resized image: each output row and column
is a weighted sum of the input pixels under its filter, computed for the 224 kept rows and
columns only, one axis after the other. A 1x10000 strip resizes to 256x2,560,000 (2 GB of
uint8) before its crop; this takes 224x224 and the strip. Its pixels are within one grey level
of torchvision's (tests/test_embed_resize.py). `resized_crops` does it for a whole batch of
images of any sizes: images of like sizes share a padded uint8 batch, each pass is a few
gathers over it (no kernels per image but one copy), and each image's pixels are exactly those
it gets alone. The GPU paths of the torchvision and nvImageCodec decoders use it; their CPU
paths run torchvision's own transform (`reference_transform`), and resized_crop where the full
resize would be large (FULL_RESIZE_PIXELS).
"""

from __future__ import annotations

import numpy as np
import torch

from embed.encoders import Preprocess

FULL_RESIZE_PIXELS = 1 << 22  # a resized image above this is not made: resized_crop instead
GROUP_STEP = 64  # resized_crops groups images whose sides round up to the same multiple of this
GROUP_BYTES = 1 << 27  # the most uint8 one padded group holds (128 MiB)


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


def resized_crop(img: torch.Tensor, resize: int = 256, crop: int = 224) -> torch.Tensor:
    """uint8 [C, H, W] -> float32 [C, crop, crop] in 0..255 (rounded as a uint8 image is): the
    center crop of the image resized to `resize` on its shorter side, made from the kept region."""
    return resized_crops([img], resize, crop)[0]


def _stacked(per_image: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Taps of several images as [B, L, K] arrays, padded with zero-weight taps to the widest."""
    k = max(idx.shape[1] for idx, _ in per_image)
    idx = np.stack([np.pad(i, ((0, 0), (0, k - i.shape[1]))) for i, _ in per_image])
    w = np.stack([np.pad(x, ((0, 0), (0, k - x.shape[1]))) for _, x in per_image])
    return idx, w


def _groups(sizes: list[tuple[int, int]], channels: int) -> list[list[int]]:
    """Positions of the images grouped by size (rounded up to GROUP_STEP), each group's padded
    uint8 batch within GROUP_BYTES: a 2,000-pixel image never pads a batch of 500x375 ones."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(sizes):
        by_size.setdefault((-(-h // GROUP_STEP), -(-w // GROUP_STEP)), []).append(i)
    groups = []
    for (h, w), positions in sorted(by_size.items()):
        per = max(1, GROUP_BYTES // (channels * h * w * GROUP_STEP**2))
        groups += [positions[i : i + per] for i in range(0, len(positions), per)]
    return groups


def _on(array: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host array on `device`; to a GPU from pinned memory without blocking the host (the
    copy is ordered on the current stream, as the gathers that read it are)."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    t = t.to(dtype) if dtype is not None else t
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def _weighed(x: torch.Tensor, idx: np.ndarray, w: np.ndarray, dim: int) -> torch.Tensor:
    """x [B, C, H, W] (uint8 or float32) resampled along `dim` (3: columns, 2: rows) by taps
    (idx, w) [B, L, K]: sum over k of x[.., idx[b, l, k], ..] * w[b, l, k], tap after tap, as
    float32 (one multiply and one add each: the same sums for an image whatever its batch)."""
    b, c, h, width = x.shape
    i, weights = _on(idx, x.device), _on(w, x.device, torch.float32)
    length = idx.shape[1]
    shape = (b, c, h, length) if dim == 3 else (b, c, length, width)
    out = torch.zeros(shape, dtype=torch.float32, device=x.device)
    for k in range(idx.shape[2]):
        if dim == 3:
            tap, wk = i[:, None, None, :, k].expand(shape), weights[:, None, None, :, k]
        else:
            tap, wk = i[:, None, :, k, None].expand(shape), weights[:, None, :, k, None]
        out += torch.gather(x, dim, tap).to(torch.float32).mul_(wk)
    return out


def resized_crops(images: list[torch.Tensor], resize: int = 256, crop: int = 224) -> torch.Tensor:
    """uint8 [C, H_i, W_i] images (one device) -> float32 [B, C, crop, crop] in 0..255: the center
    crop of each resized to `resize` on its shorter side, made from the kept region alone.

    Images of like sizes go together into a zero-padded uint8 batch [b, C, H, W]; the columns the
    crop keeps are weighed out of it ([b, C, H, crop]), then the rows ([b, C, crop, crop]), by
    gathers over the whole group. Padding never enters: every tap points inside its image."""
    c, dev = images[0].shape[0], images[0].device
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    out = torch.empty(len(images), c, crop, crop, dtype=torch.float32, device=dev)
    for group in _groups(sizes, c):
        hmax, wmax = max(sizes[i][0] for i in group), max(sizes[i][1] for i in group)
        x = torch.zeros(len(group), c, hmax, wmax, dtype=torch.uint8, device=dev)  # [b, C, H, W]
        for j, i in enumerate(group):  # one copy each: the images are of many sizes
            x[j, :, : sizes[i][0], : sizes[i][1]] = images[i]
        cols, rows = [], []
        for i in group:
            h, w = sizes[i]
            nh, nw = resized_size(h, w, resize)
            top, left = crop_anchor(nh, nw, crop)
            cols.append(taps(w, nw, left, crop))
            rows.append(taps(h, nh, top, crop))
        x = _weighed(x, *_stacked(cols), dim=3)  # [b, C, H, crop]
        x = _weighed(x, *_stacked(rows), dim=2)  # [b, C, crop, crop]
        out[_on(np.array(group), dev)] = x.round_().clamp_(0, 255)
    return out


def normalized(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """float32 [..., C, H, W] in 0..255 -> (x / 255 - mean) / std, per channel."""
    m = _on(np.array(mean, dtype=np.float32), x.device).view(-1, 1, 1)
    s = _on(np.array(std, dtype=np.float32), x.device).view(-1, 1, 1)
    return (x / 255 - m) / s


def reference_transform(img: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 [3, H, W] -> float32 [3, crop, crop]: the reference transform on a tensor, torchvision's
    own ops (an image whose resize would be huge, a long strip, is resized in its kept region alone)."""
    from torchvision.transforms.v2 import functional as F

    nh, nw = resized_size(img.shape[-2], img.shape[-1], pre.resize)
    if nh * nw > FULL_RESIZE_PIXELS:
        x = resized_crop(img, pre.resize, pre.crop)  # [3, 224, 224] float32 in 0..255
    else:
        x = F.resize(img, [pre.resize], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
        x = F.center_crop(x, [pre.crop, pre.crop]).to(torch.float32)  # [3, 224, 224]
    return F.normalize(x.div_(255), list(pre.mean), list(pre.std))
