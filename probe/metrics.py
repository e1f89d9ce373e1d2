"""Representation metrics of embeddings, in torch on any device; `probe.diagnose` runs them.

    alignment(views [N, K, D])                  Wang & Isola: E ||f(a) - f(b)||^2 over views
    uniformity(x [N, D])                        log E exp(-2 ||f(x) - f(y)||^2), block by block
    instance_discrimination(queries, gallery)   is each query's own row its top-1 / top-5
    covariance_spectrum(x), effective_rank(ev)  the variance spectrum and RankMe
    knn_sweep(train, test, labels, mode)        majority-vote kNN for every k (probe.knn's votes)
    linear_cka(a, b)                            linear CKA of two encoders' rows of one split
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from embed.store import EmbeddingSet
from probe.data import mean_std

MAX_K = 101
UNIFORMITY_T = 2.0


def _blocks(x: torch.Tensor, rows: int = 4096):
    for start in range(0, len(x), rows):
        yield start, x[start : start + rows]


def alignment(views: torch.Tensor) -> float:
    """E ||f(v_a) - f(v_b)||^2 over all view pairs a < b of each image; views [N, K, D]."""
    z = F.normalize(views.float(), dim=-1)
    k = z.shape[1]
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    return float(np.mean([(z[:, a] - z[:, b]).pow(2).sum(-1).mean().item() for a, b in pairs]))


def uniformity(x: torch.Tensor, t: float = UNIFORMITY_T) -> float:
    """log E_{i != j} exp(-t ||f(x_i) - f(x_j)||^2), block by block; x [N, D]."""
    z = F.normalize(x.float(), dim=-1)
    n, total = len(z), 0.0
    for _, block in _blocks(z):
        d2 = (2 - 2 * block @ z.T).clamp_min(0)  # [b, N]
        total += torch.exp(-t * d2).sum().item() - len(block)  # drop i == j (distance 0)
    return float(np.log(total / (n * (n - 1))))


def instance_discrimination(queries: torch.Tensor, gallery: torch.Tensor) -> dict[str, float]:
    """Share of queries whose own gallery row (same index) is the top-1 / in the top-5 by cosine."""
    q, g = F.normalize(queries.float(), dim=-1), F.normalize(gallery.float(), dim=-1)
    top1 = top5 = 0
    for start, block in _blocks(q):
        sims = block @ g.T  # [b, N]
        own = sims[torch.arange(len(block)), torch.arange(start, start + len(block))]
        better = (sims > own[:, None]).sum(1)
        top1 += (better == 0).sum().item()
        top5 += (better < 5).sum().item()
    return {"top1": top1 / len(q), "top5": top5 / len(q)}


def covariance_spectrum(x: torch.Tensor) -> np.ndarray:
    """Eigenvalues of the covariance [D], descending, accumulated in float64 over blocks."""
    mean = x.double().mean(0)
    cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    for _, block in _blocks(x):
        c = block.double() - mean
        cov += c.T @ c
    ev = torch.linalg.eigvalsh(cov / max(1, len(x) - 1)).clamp_min(0).flip(0)
    return ev.cpu().numpy()


def effective_rank(eigenvalues: np.ndarray) -> float:
    """RankMe: exp(entropy of p_k = s_k / sum s), s = singular values of the centered matrix."""
    s = np.sqrt(np.maximum(eigenvalues, 0))
    p = s / s.sum() + 1e-12
    return float(np.exp(-(p * np.log(p)).sum()))


def knn_sweep(train: EmbeddingSet, test: torch.Tensor, test_y: torch.Tensor, *, mode: str,
              max_k: int = MAX_K) -> np.ndarray:
    """Majority-vote accuracy for k = 1..max_k (k up to the train rows); mode plain (Euclidean)
    | norm | shifted-norm. The train split streams in blocks and the votes are probe.knn's."""
    from probe.knn import top_neighbours, vote_accuracy

    shift = None
    if mode == "shifted-norm":
        shift = torch.from_numpy(mean_std(train)[0]).to(test.device)
        test = test - shift
    metric = "euclidean" if mode == "plain" else "cosine"
    if metric == "cosine":
        test = F.normalize(test, dim=-1)
    _, idx = top_neighbours(train, test, max_k, metric=metric, shift=shift)  # [Q, k]
    train_y = torch.from_numpy(train.labels.astype(np.int64)).to(test.device)
    classes = int(max(train_y.max(), test_y.max()).item()) + 1
    ks = tuple(range(1, idx.shape[1] + 1))
    scores = vote_accuracy(torch.ones_like(idx, dtype=torch.float32), train_y[idx], test_y, ks=ks,
                           num_classes=classes)
    return np.array([scores[k][0] for k in ks])


def linear_cka(x: EmbeddingSet, y: EmbeddingSet, device: torch.device | str = "cpu") -> float:
    """Linear CKA of two encoders' rows of the same split, from D x D products accumulated over
    row blocks in float64 on `device`."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same rows: {x.encoder} has {x.shape[0]}, {y.encoder} {y.shape[0]}")
    mx, my = (torch.from_numpy(mean_std(e)[0]).to(device, torch.float64) for e in (x, y))
    xy = xx = yy = 0.0
    for start in range(0, x.shape[0], 8192):
        rows = np.arange(start, min(start + 8192, x.shape[0]))
        a = torch.from_numpy(x.rows(rows)).to(device, torch.float64) - mx  # [b, D1]
        b = torch.from_numpy(y.rows(rows)).to(device, torch.float64) - my  # [b, D2]
        xy, xx, yy = xy + a.T @ b, xx + a.T @ a, yy + b.T @ b  # [D1, D2], [D1, D1], [D2, D2]
    return float((xy**2).sum() / torch.sqrt((xx**2).sum() * (yy**2).sum()))


def balanced_sample(labels: np.ndarray, classes: int, per_class: int, *, seed: int = 0) -> np.ndarray:
    """Sorted row indices: up to `per_class` rows of each of the first `classes` classes."""
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)[:classes]]
    return np.sort(np.concatenate(keep))
