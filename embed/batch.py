"""What every decoder yields: a `Batch` of model-ready images with their sample indices.

    Batch(images, indices, views)   # images [B, 3, 224, 224] float32 on the model's device;
                                    # indices [B] sample index, -1 = padding; views: K tensors
    check_order(read, order, start) # the indices a decoder read are the ones expected
    raise DecodeError(index, "dali-cpu", "[jpeg_parser] Invalid marker")   # one sample it cannot decode
    tiny_jpeg()                     # a 16x16 JPEG: can this decoder run here at all?
    test_jpegs()                    # photo-like JPEGs (4:2:0, progressive, grey): whose pixels are PIL's?
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Batch:
    """images [B, 3, H, W] float32 (on the model's device), their sample indices [B] (-1 for
    padding), and K augmented views of each, K tensors [B, 3, H, W] (empty without --views)."""

    images: torch.Tensor
    indices: np.ndarray
    views: list[torch.Tensor] = field(default_factory=list)


class DecodeError(Exception):
    """A decoder cannot decode sample `index`; the run names its shard, key and source path."""

    def __init__(self, index: int, decoder: str, message: str):
        super().__init__(f"sample {index}: {decoder}: {message}")
        self.index, self.decoder, self.message = index, decoder, message


def check_order(read: np.ndarray, order: np.ndarray, start: int) -> None:
    """The sample indices a decoder read must be the ones `order` expects from `start` on."""
    if not np.array_equal(read, order[start : start + len(read)]):
        want = order[start : start + 4].tolist()
        raise RuntimeError(f"read samples {read.tolist()[:4]}..., expected {want}...: shards and manifest "
                           "disagree")


def tiny_jpeg() -> bytes:
    """A 16x16 baseline JPEG, what a decoder's probe decodes to see that it runs."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 140, 200)).save(buf, format="JPEG")
    return buf.getvalue()


def test_jpegs() -> list[bytes]:
    """Three 192x256 photo-like JPEGs, baseline 4:2:0 (as most of ImageNet), progressive, and grey:
    smooth gradients, hard coloured edges (where chroma upsampling shows) and fine texture."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(20240607)
    y, x = np.mgrid[0:192, 0:256].astype(np.float32)
    img = np.stack([x, y, (x + y) / 2], -1) * 0.8 + 20  # [192, 256, 3] gradients
    for _ in range(12):  # saturated rectangles: sharp chroma edges
        t, left = rng.integers(0, 160), rng.integers(0, 220)
        img[t : t + rng.integers(8, 48), left : left + rng.integers(8, 64)] = rng.integers(0, 256, 3)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    out = []
    for mode, options in (("RGB", {}), ("RGB", {"progressive": True}), ("L", {})):
        buf = io.BytesIO()
        Image.fromarray(img).convert(mode).save(buf, format="JPEG", quality=90, **options)
        out.append(buf.getvalue())
    return out
