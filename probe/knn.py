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
from typing import TYPE_CHECKING

import numpy as np

from embed.store import EmbeddingSet
from msnpipe.remote import local_only, location
from msnpipe.runtime import UserError, command, pick_device
from probe.args import int_list, positive_float
from probe.data import open_pair
from probe.results import ResultFile, group_identity

if TYPE_CHECKING:  # torch is imported where neighbours are found, so --help answers at once
    import torch

log = logging.getLogger("probe")
KS = (10, 20, 100, 200)
TEMPERATURE = 0.07
VOTE_FLOATS = 1 << 25  # votes held at once: queries x k x classes, in a chunk of queries


def _blocks(e: EmbeddingSet, device: torch.device, rows: int, *, metric: str = "cosine",
            shift: torch.Tensor | None = None):
    """(start, train block [b, D]) prepared for `metric`: shifted, then L2-normalized for cosine."""
    import torch

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
    import torch

    q_n = len(queries)
    k = min(max_k, train.shape[0])
    best_s = torch.full((q_n, k), -torch.inf, device=queries.device)
    best_i = torch.zeros((q_n, k), dtype=torch.long, device=queries.device)
    for start, block in _blocks(train, queries.device, block_rows, metric=metric, shift=shift):
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


def vote_accuracy(sims: torch.Tensor, neighbour_labels: torch.Tensor, labels: torch.Tensor, *,
                  ks: tuple[int, ...], num_classes: int,
                  temperature: float | None = None) -> dict[int, tuple[float, float]]:
    """k -> (top-1, top-5) of the votes of the first k neighbours of each query: weighted by
    exp(sim / T) (DINO's kNN), or one vote each when `temperature` is None (majority vote).
    Ties go to the lower class index. Top-5 counts the true class when it got votes and fewer
    than 5 classes got more. sims, neighbour_labels [Q, K] (nearest first), labels [Q]."""
    import torch

    top = max(ks)
    weights = (sims[:, :top] / temperature).exp() if temperature else torch.ones_like(sims[:, :top])
    at = torch.tensor([k - 1 for k in ks], device=sims.device)
    hits1 = torch.zeros(len(ks), dtype=torch.float64)
    hits5 = torch.zeros(len(ks), dtype=torch.float64)
    step = max(1, VOTE_FLOATS // (top * num_classes))
    for q0 in range(0, len(sims), step):
        one = torch.zeros(*weights[q0 : q0 + step].shape, num_classes, device=sims.device)
        one.scatter_(2, neighbour_labels[q0 : q0 + step, :top, None], weights[q0 : q0 + step, :, None])
        votes = one.cumsum(1).index_select(1, at)  # [q, len(ks), C]: votes of the first k
        y = labels[q0 : q0 + step, None].expand(-1, len(ks))
        mine = votes.gather(2, y[..., None])  # [q, len(ks), 1]
        hits1 += (votes.argmax(2) == y).sum(0).double().cpu()
        hits5 += ((mine[..., 0] > 0) & ((votes > mine).sum(2) < 5)).sum(0).double().cpu()
    n = max(1, len(sims))
    return {k: (float(hits1[i] / n), float(hits5[i] / n)) for i, k in enumerate(ks)}


def evaluate(train: EmbeddingSet, test: EmbeddingSet, ks: tuple[int, ...], *, temperature: float,
             device: torch.device) -> list[dict]:
    """Top-1/top-5 for every k."""
    import torch

    queries = torch.cat([b for _, b in _blocks(test, device, 65536)])  # [Q, D], normalized
    sims, idx = top_neighbours(train, queries, max(ks))
    train_labels = torch.from_numpy(train.labels.astype(np.int64)).to(device)
    labels = torch.from_numpy(test.labels.astype(np.int64)).to(device)
    num_classes = int(max(train_labels.max().item(), labels.max().item())) + 1
    scores = vote_accuracy(sims, train_labels[idx], labels, ks=ks, num_classes=num_classes,
                           temperature=temperature)
    return [{"encoder": train.encoder, "k": k, "temperature": temperature, "top1": scores[k][0],
             "top5": scores[k][1]} for k in ks]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m probe.knn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=location, help="a Zarr store: a folder or a URL (s3://...)")
    p.add_argument("--encoder", required=True)
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="val")
    p.add_argument("--k", type=int_list, default=KS, help="comma-separated, default 10,20,100,200")
    p.add_argument("--temperature", type=positive_float, default=TEMPERATURE,
                   help="of the votes' weights exp(sim / T), default 0.07")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--out", type=local_only, default=None, help="append results to OUT/knn.csv")
    a = p.parse_args(argv)
    a.ks = a.k
    if 0 in a.ks:
        p.error("--k: whole numbers >= 1 like 10,20,100")
    return a


def run(a: argparse.Namespace) -> list[dict]:
    """Evaluate the requested ks (those not in OUT/knn.csv yet) and record them."""
    device = pick_device(a.device)
    train, test = open_pair(a.store, a.encoder, a.train_split, test_split=a.test_split)
    if max(a.ks) > train.shape[0]:
        raise UserError(f"--k {max(a.ks)}: {a.encoder}/{a.train_split} has only {train.shape[0]} rows; "
                        f"ask for k <= {train.shape[0]}")
    if a.out is None:
        return evaluate(train, test, a.ks, temperature=a.temperature, device=device)
    ident = group_identity(train, test, temperature=a.temperature)
    with ResultFile.open(a.out, "knn", ident, settings=vars(a)) as results:
        ks = tuple(k for k in a.ks if not results.has({"encoder": a.encoder, "k": k}))
        rows = evaluate(train, test, ks, temperature=a.temperature, device=device) if ks else []
        for r in rows:
            results.append(r)
    return rows


def _show(a: argparse.Namespace, rows: list[dict]) -> None:
    for r in rows:
        print(f"{a.encoder} k={r['k']:>4}: top-1 {100 * r['top1']:.2f}%  top-5 {100 * r['top5']:.2f}%")


def main(argv: list[str] | None = None) -> int:
    return command(_parse, run, argv, logger="probe", done=_show)


if __name__ == "__main__":
    sys.exit(main())
