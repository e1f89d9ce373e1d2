"""Embeddings for probing: train statistics in one chunked pass, and only the rows a fit needs.

The train split is never loaded whole: its mean and std come from a pass over row blocks,
and a seed's draws are read as one sorted selection. The test split is loaded whole
(ImageNet val at D=1024 is 200 MB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embed.store import EmbeddingSet


def mean_std(e: EmbeddingSet) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and population std [1, D] over all rows, merged block by block
    (Chan et al.) in float64; a std below float32 epsilon becomes 1, as in the reference."""
    n, mean, m2 = 0, None, None
    for _, block in e.row_blocks():  # [b, D]
        b = block.astype(np.float64)
        bm, bn = b.mean(0), len(b)
        bm2 = ((b - bm) ** 2).sum(0)
        if mean is None:
            n, mean, m2 = bn, bm, bm2
            continue
        delta, total = bm - mean, n + bn
        mean = mean + delta * bn / total
        m2 = m2 + bm2 + delta**2 * n * bn / total
        n = total
    std = np.sqrt(m2 / n)
    std[std < np.finfo(np.float32).eps] = 1
    return mean[None].astype(np.float32), std[None].astype(np.float32)


@dataclass(frozen=True)
class Standardized:
    """A whole split in memory, standardized with the train statistics."""

    x: np.ndarray  # [N, D] float32
    y: np.ndarray  # [N] int


def load_standardized(e: EmbeddingSet, mean: np.ndarray, std: np.ndarray) -> Standardized:
    """Read a (test) split block by block and standardize it."""
    x = np.empty(e.shape, dtype=np.float32)
    for start, block in e.row_blocks():
        x[start : start + len(block)] = (block - mean) / std
    return Standardized(x, e.labels.astype(np.int64))


def read_rows(e: EmbeddingSet, indices: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Standardized rows [len(indices), D] in the order given, read as one sorted selection."""
    unique, inverse = np.unique(indices, return_inverse=True)
    rows = np.asarray(e.embeddings.get_orthogonal_selection((unique, slice(None))), dtype=np.float32)
    return ((rows - mean) / std)[inverse]


class ClassSampler:
    """Class-balanced draws identical to the reference's `sample_n_per_class`.

    The reference scans all labels once per class per draw; the index arrays it passes to
    `rng.choice` are the same as these, built once, so the same rng gives the same draws.
    """

    def __init__(self, labels: np.ndarray, class_names: list[str] | None = None):
        self.classes = np.unique(labels)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], self.classes, side="left").tolist() + [len(labels)]
        self.members = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]  # each sorted
        self.names = class_names

    def check(self, n_per_class: int, split: str) -> None:
        """A clear error when some class has fewer than `n_per_class` samples."""
        small = [(c, len(m)) for c, m in zip(self.classes, self.members) if len(m) < n_per_class]
        if small:
            c, k = small[0]
            name = f" ({self.names[c]})" if self.names and c < len(self.names) else ""
            raise ValueError(f"class {c}{name} has only {k} samples in {split} ({len(small)} classes "
                             f"have fewer than {n_per_class}); lower --per-class to at most "
                             f"{min(len(m) for m in self.members)}")

    def draw(self, n_per_class: int, rng: np.random.Generator) -> np.ndarray:
        """n per class, then one permutation of the whole draw: the reference's order of calls."""
        parts = [rng.choice(m, size=n_per_class, replace=False) for m in self.members]
        return rng.permutation(np.concatenate(parts))
