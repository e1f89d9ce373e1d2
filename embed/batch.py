"""What every decoder yields: a `Batch` of model-ready images with their sample indices.

    Batch(images, indices, views)   # images [B, 3, 224, 224] float32 on the model's device;
                                    # indices [B] sample index, -1 = padding; views: K tensors
    check_order(read, order, start) # the indices a decoder read are the ones expected
    raise DecodeError(index, "dali-cpu", "[jpeg_parser] Invalid marker")   # one sample it cannot decode
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
