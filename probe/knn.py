"""python -m probe.knn STORE --encoder E: weighted kNN on cosine similarity (DINO's evaluation).

    python -m probe.knn out/embeddings.zarr --encoder vits16_800ep --k 10,20,100,200 --out out/probe

Train split = memory, test split = queries. Features are L2-normalized; the top max(k)
neighbours of every query are found once, in one pass over train blocks (on the GPU when
there is one), keeping a running top-k, so no N x N matrix is ever held; each k then votes
with weights exp(sim / T). Prints top-1/top-5 per k and, with --out, appends them to
DIR/knn.csv (a k already there is not computed again; DIR/knn.json records the settings).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from embed.store import EmbeddingSet
from msnpipe.runtime import UserError, pick_device, setup_logging
from probe.data import open_pair
from probe.results import ResultFile

log = logging.getLogger("probe")
KS = (10, 20, 100, 200)
TEMPERATURE = 0.07


def _blocks(e: EmbeddingSet, device: torch.device, rows: int, metric: str = "cosine",
            shift: torch.Tensor | None = None):
    """(start, train block [b, D]) prepared for `metric`: shifted, then L2-normalized for cosine."""
    for start, block in e.row_blocks(rows):
        x = torch.from_numpy(block).to(device)
        if shift is not None:
            x = x - shift
        yield start, (torch.nn.functional.normalize(x, dim=1) if metric == "cosine" else x)


def top_neighbours(train: EmbeddingSet, queries: torch.Tensor, max_k: int, *, metric: str = "cosine",
                   shift: torch.Tensor | None = None, block_rows: int = 16384,
                   query_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [Q, k], train indices [Q, k]) of the k nearest train rows per query, in one pass.

    metric "cosine": queries must be L2-normalized, score = cosine similarity; "euclidean":
    score = 2 q.t - ||t||^2, which orders rows as -||q - t||^2 does. `shift` is subtracted
    from train rows first (queries must be shifted by the caller)."""
    q_n = len(queries)
    k = min(max_k, train.shape[0])
    best_s = torch.full((q_n, k), -torch.inf, device=queries.device)
    best_i = torch.zeros((q_n, k), dtype=torch.long, device=queries.device)
    for start, block in _blocks(train, queries.device, block_rows, metric, shift):
        sq = (block * block).sum(1) if metric == "euclidean" else None  # [b]
        for q0 in range(0, q_n, query_rows):
            sims = queries[q0 : q0 + query_rows] @ block.T  # [q, b]
            if sq is not None:
                sims = 2 * sims - sq
            s = torch.cat([best_s[q0 : q0 + query_rows], sims], dim=1)
            ids = torch.arange(start, start + len(block), device=queries.device).expand_as(sims)
            i = torch.cat([best_i[q0 : q0 + query_rows], ids], dim=1)
            top = s.topk(k, dim=1)
            best_s[q0 : q0 + query_rows], best_i[q0 : q0 + query_rows] = top.values, i.gather(1, top.indices)
    return best_s, best_i


def knn_accuracy(sims: torch.Tensor, neighbour_labels: torch.Tensor, labels: torch.Tensor, k: int,
                 num_classes: int, temperature: float) -> tuple[float, float]:
    """(top-1, top-5) of exp(sim/T)-weighted votes of the first k neighbours. Top-5 counts the
    true class when it got votes and fewer than 5 classes got more (no ties among zeros)."""
    weights = (sims[:, :k] / temperature).exp()  # [Q, k]
    votes = torch.zeros(len(sims), num_classes, device=sims.device)
    votes.scatter_add_(1, neighbour_labels[:, :k], weights)  # [Q, C]
    mine = votes.gather(1, labels[:, None])  # [Q, 1]
    top1 = votes.argmax(1) == labels
    top5 = (mine[:, 0] > 0) & ((votes > mine).sum(1) < 5)
    return top1.float().mean().item(), top5.float().mean().item()


def evaluate(train: EmbeddingSet, test: EmbeddingSet, ks: tuple[int, ...], temperature: float,
             device: torch.device) -> list[dict]:
    """Top-1/top-5 for every k."""
    queries = torch.cat([b for _, b in _blocks(test, device, 65536)])  # [Q, D], normalized
    sims, idx = top_neighbours(train, queries, max(ks))
    train_labels = torch.from_numpy(train.labels.astype(np.int64)).to(device)
    labels = torch.from_numpy(test.labels.astype(np.int64)).to(device)
    num_classes = int(max(train_labels.max().item(), labels.max().item())) + 1
    rows = []
    for k in ks:
        top1, top5 = knn_accuracy(sims, train_labels[idx], labels, k, num_classes, temperature)
        rows.append({"encoder": train.encoder, "k": k, "temperature": temperature,
                     "top1": top1, "top5": top5})
    return rows


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m probe.knn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=Path)
    p.add_argument("--encoder", required=True)
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="val")
    p.add_argument("--k", default=",".join(map(str, KS)), help="comma-separated, default 10,20,100,200")
    p.add_argument("--temperature", type=float, default=TEMPERATURE)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, default=None, help="append results to OUT/knn.csv")
    a = p.parse_args(argv)
    try:
        a.ks = tuple(int(k) for k in a.k.split(","))
        if min(a.ks) < 1:
            raise ValueError
    except ValueError:
        p.error(f"--k {a.k!r}: expected whole numbers >= 1 like 10,20,100")
    return a


def run(a: argparse.Namespace) -> list[dict]:
    """Evaluate the requested ks (those not in OUT/knn.csv yet) and record them."""
    device = pick_device(a.device)
    train, test = open_pair(a.store, a.encoder, a.train_split, a.test_split)
    if max(a.ks) > train.shape[0]:
        raise UserError(f"--k {max(a.ks)}: {a.encoder}/{a.train_split} has only {train.shape[0]} rows; "
                        f"ask for k <= {train.shape[0]}")
    if a.out is None:
        return evaluate(train, test, a.ks, a.temperature, device)
    ident = {"encoder": a.encoder, "train_split": a.train_split, "test_split": a.test_split,
             "train_identity": train.attrs.get("identity"), "test_identity": test.attrs.get("identity"),
             "temperature": a.temperature}
    with ResultFile.open(a.out, "knn", ident, vars(a)) as results:
        ks = tuple(k for k in a.ks if not results.has({"encoder": a.encoder, "k": k}))
        rows = evaluate(train, test, ks, a.temperature, device) if ks else []
        for r in rows:
            results.append(r)
    return rows


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    a = _parse(argv)
    try:
        rows = run(a)
    except UserError as e:
        log.error("%s", e)
        return 1
    for r in rows:
        print(f"{a.encoder} k={r['k']:>4}: top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
