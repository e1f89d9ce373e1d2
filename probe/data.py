"""Embeddings for probing: train statistics in one chunked pass, and only the rows a fit needs.

The train split is never loaded whole: its mean and std come from a pass over row blocks,
and a seed's draws are read as one sorted selection. The test split is loaded whole
(ImageNet val at D=1024 is 200 MB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embed.store import EmbeddingSet, open_embeddings
from msnpipe.runtime import UserError, difference


def open_pair(store, encoder: str, train_split: str, *, test_split: str) -> tuple[EmbeddingSet, EmbeddingSet]:
    """The (train, test) groups of an encoder; an error if their class lists differ, since their
    labels would then mean different classes."""
    train = open_embeddings(store, encoder, train_split)
    test = open_embeddings(store, encoder, test_split)
    a, b = train.classes, test.classes
    if a != b and a is not None and b is not None:
        raise UserError(f"{encoder}/{train_split} and {encoder}/{test_split} have different classes: "
                        f"{difference(train_split, a, test_split, b=b)}; shard both splits with one "
                        "class list (python -m shard --classes-from)")
    if (a is None or b is None) and train.labels.ndim == test.labels.ndim == 1:  # imported: labels only
        extra = np.setdiff1d(test.labels, train.labels)
        if len(extra):
            named = ", ".join(map(str, extra[:5])) + (" ..." if len(extra) > 5 else "")
            raise UserError(f"{encoder}/{test_split} has labels {encoder}/{train_split} lacks ({named}): no "
                            f"fit on {train_split} can predict them; import splits labelled alike")
    return train, test


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


def seed_mean_std(e: EmbeddingSet, order: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The seed script's statistics, bit for bit: the whole split in memory as float32 rows in
    its files' order (`order`: the sample of each row, None for the store's), then numpy's own
    float32 `mean(0)` and `std(0)` (their summation order is the rows'), a std below float32
    epsilon set to 1. Holds the split twice, as the seed does ([N, D] float32 and a temporary)."""
    x = np.empty(e.shape, np.float32)
    for start, block in e.row_blocks():
        x[start : start + len(block)] = block
    if order is not None:
        x = x[order]
    mean, std = x.mean(0, keepdims=True), x.std(0, keepdims=True)
    std[std < np.finfo(x.dtype).eps] = 1
    return mean, std


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


def read_rows(e: EmbeddingSet, indices: np.ndarray, mean: np.ndarray, *, std: np.ndarray) -> np.ndarray:
    """Standardized rows [len(indices), D] in the order given, read as one sorted selection."""
    return (e.rows(indices) - mean) / std


class ClassSampler:
    """Class-balanced draws identical to the reference's `sample_n_per_class`.

    The reference scans all labels once per class per draw; the index arrays it passes to
    `rng.choice` are the same as these, built once, so the same rng gives the same draws. With
    `order` (the sample index of each row of the reference's files, `embed.store.row_order`), draws
    are made by position in that order, as the reference picks rows of its own files, and given
    back as store rows.
    """

    def __init__(self, labels: np.ndarray, class_names: list[str] | None = None, where: str = "train",
                 order: np.ndarray | None = None):
        self.order = order
        labels = labels if order is None else labels[order]
        self.classes = np.unique(labels)
        if len(self.classes) < 2:
            raise UserError(f"{where} has a single class ({', '.join(map(str, self.classes)) or 'none'}): "
                            "a classifier needs two or more")
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
            raise UserError(f"class {c}{name} has only {k} samples in {split} ({len(small)} classes "
                             f"have fewer than {n_per_class}); lower --per-class to at most "
                             f"{min(len(m) for m in self.members)}")

    def draw(self, n_per_class: int, rng: np.random.Generator) -> np.ndarray:
        """n per class, then one permutation of the whole draw: the reference's order of calls."""
        parts = [rng.choice(m, size=n_per_class, replace=False) for m in self.members]
        drawn = rng.permutation(np.concatenate(parts))
        return drawn if self.order is None else self.order[drawn]
