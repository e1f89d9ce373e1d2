"""Acquisition strategies for probe.active: which unlabelled pool rows to label next.

    picks = STRATEGIES["entropy"](state, k)     # k pool indices, none of them labelled yet

Each strategy is a small function of the round's state (`Round`: the pool's L2-normalised
rows, which are labelled, the current linear head, a generator seeded per seed and round, the
target inputs for EPIG) and a number k. Pool-sized work runs in torch on the pool's device, in
blocks of rows (CELLS entries of pairwise work at a time), so no N x N matrix is ever held.

- balanced: the reference's class-balanced draw (probe.active handles it: it redraws n per
  class as `python -m probe` does, so the two curves agree); random: uniform over the pool.
- entropy, margin: the head's predictive entropy, the smallest gap between its top two
  probabilities (Settles 2009).
- coreset: greedy k-center on the normalised rows (Sener & Savarese 2018), from a random row
  on a cold start.
- typiclust: k-means (`kmeans`: k-means++ start, 20 Lloyd iterations, in torch) into |L| + k
  clusters (at most 500), then per pick the most typical unlabelled row of the largest cluster
  with the fewest labels, clusters of 5 rows or fewer left out (Hacohen, Dekel & Weinshall
  2022); typicality = 1 / mean Euclidean distance to the 20 nearest rows of the cluster (the
  paper's formula; the authors' code uses squared distances).
- probcover: greedy max coverage of delta-balls (Yehuda et al. 2022); delta is the largest
  radius whose balls are 95% pure under a k-means into as many clusters as classes: the 5th
  percentile of each row's distance to its nearest row of another cluster (the paper searches
  a grid for the same criterion).
- bald, epig: mutual information under a diagonal Laplace approximation of the head's
  posterior (C times the log-likelihood plus a unit Gaussian prior on the weights, a flat one
  on the intercept), M samples: BALD (Houlsby et al. 2011), and EPIG with target inputs drawn
  from the test split (Bickford Smith et al. 2023). With more than EPIG_CLASSES classes,
  EPIG's joint is taken over each input's EPIG_CLASSES most probable classes and one class
  for the rest (exact for that coarser label, a lower bound on the full one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

CELLS = 2**24  # entries of a block of pairwise work: 128 MiB in float64
EPIG_CLASSES = 16
TYPICAL_K, MIN_CLUSTER, MAX_CLUSTERS = 20, 5, 500
PURITY = 0.95


@dataclass
class Head:
    """A linear head on the pool's space: logits = x @ weight.T + bias over `num_classes` classes,
    and the diagonal of its posterior precision (for the Laplace approximation)."""

    weight: torch.Tensor  # [K, D]
    bias: torch.Tensor  # [K]
    precision_w: torch.Tensor | None = None  # [K, D]
    precision_b: torch.Tensor | None = None  # [K]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias

    def samples(self, m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """M weight and bias draws [M, K, D], [M, K] from the diagonal Laplace posterior (the
        noise drawn by the CPU generator, so any device gives the same draws)."""
        ew = torch.randn((m, *self.weight.shape), generator=generator).to(self.weight)
        eb = torch.randn((m, *self.bias.shape), generator=generator).to(self.bias)
        return self.weight + ew / self.precision_w.sqrt(), self.bias + eb / self.precision_b.sqrt()


def laplace(head: Head, x: torch.Tensor, C: float) -> Head:
    """The head with the diagonal of the posterior precision of C * sum log-likelihood + a unit
    Gaussian prior on the weights (scikit-learn's objective), at labelled rows x [n, D]."""
    p = torch.softmax(head.logits(x), -1)  # [n, K]
    curvature = p * (1 - p)  # the diagonal of the softmax Hessian per row and class
    head.precision_w = C * curvature.T @ (x * x) + 1  # [K, D]
    head.precision_b = C * curvature.sum(0) + 1e-6  # [K]: a flat prior, kept invertible
    return head


@dataclass
class Round:
    """What a strategy sees: the pool's rows [N, D] L2-normalised (`pool`, for geometry) and as
    the head sees them (`features`, standardized), the labelled mask [N], the current head, a
    generator for this (seed, round), EPIG's target rows (as the head sees them), and a cache of
    what depends on the pool alone (ProbCover's delta and balls), kept across rounds and seeds."""

    pool: torch.Tensor
    features: torch.Tensor
    labelled: torch.Tensor
    head: Head | None
    generator: torch.Generator
    targets: torch.Tensor | None = None
    samples: int = 20  # posterior draws for bald / epig
    classes: int = 0
    cache: dict = field(default_factory=dict)

    def unlabelled(self) -> torch.Tensor:
        return (~self.labelled).nonzero()[:, 0]


def _blocks(n: int, width: int):
    """(start, stop) of row blocks of n rows whose [rows, width] work fits in CELLS entries."""
    rows = max(1, CELLS // max(1, width))
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


def _top_unlabelled(state: Round, scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k unlabelled rows with the highest scores [N] (ties by index)."""
    scores = scores.masked_fill(state.labelled, -torch.inf)
    return torch.topk(scores, k).indices


def _probs(state: Round) -> torch.Tensor:
    """The head's probabilities on the pool [N, K], block by block."""
    return torch.cat([torch.softmax(state.head.logits(state.features[a:b]), -1)
                      for a, b in _blocks(len(state.features), state.head.weight.shape[0])])


def entropy_scores(probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy [N] of probabilities [N, K]."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1)


def margin_scores(probs: torch.Tensor) -> torch.Tensor:
    """Minus the gap between the two most probable classes [N]: higher is more uncertain."""
    top = probs.topk(2, dim=-1).values
    return -(top[:, 0] - top[:, 1])


def random_picks(state: Round, k: int) -> torch.Tensor:
    free = state.unlabelled()
    order = torch.randperm(len(free), generator=state.generator, device="cpu").to(free.device)
    return free[order[:k]]


def entropy_picks(state: Round, k: int) -> torch.Tensor:
    return _top_unlabelled(state, entropy_scores(_probs(state)), k)


def margin_picks(state: Round, k: int) -> torch.Tensor:
    return _top_unlabelled(state, margin_scores(_probs(state)), k)


def _nearest_distance(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Euclidean distance [N] from each row of x to its nearest center, block by block."""
    return torch.cat([torch.cdist(x[a:b], centers).min(1).values for a, b in _blocks(len(x), len(centers))])


def coreset_picks(state: Round, k: int) -> torch.Tensor:
    """Greedy k-center: k times, the row farthest from every labelled row and every pick (from a
    random row when none is labelled)."""
    x = state.pool
    picks, sq = [], (x * x).sum(1)  # [N]

    def distance_to(i: int) -> torch.Tensor:  # [N] Euclidean distance of every row to row i
        return (sq - 2 * (x @ x[i]) + sq[i]).clamp_min(0).sqrt()

    if state.labelled.any():
        far = _nearest_distance(x, x[state.labelled])
    else:  # a cold start: the first center at random, the rest farthest from it and each other
        picks.append(int(torch.randint(len(x), (1,), generator=state.generator)))
        far = distance_to(picks[0])
        far[picks[0]] = -1
    while len(picks) < k:
        i = int(far.masked_fill(state.labelled, -1).argmax())
        picks.append(i)
        far = torch.minimum(far, distance_to(i))
        far[i] = -1
    return torch.tensor(picks, device=x.device)


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, *, iters: int = 20) -> torch.Tensor:
    """Cluster index [N] of each row by Lloyd's k-means from a k-means++ start (torch, blocks),
    stopping early once no row changes cluster."""
    n, sq = len(x), (x * x).sum(1)  # [N]

    def dist2(i: int) -> torch.Tensor:  # squared distance [N] of every row to row i, no [N, D] temporary
        return (sq - 2 * (x @ x[i]) + sq[i]).clamp_min(0)

    first = int(torch.randint(n, (1,), generator=generator))
    chosen, d2 = [first], dist2(first)
    for _ in range(1, k):  # k-means++: the next center drawn in proportion to squared distance
        weights = (d2 / d2.sum()).double().cpu() if d2.sum() > 0 else torch.ones(n, dtype=torch.double)
        chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
        d2 = torch.minimum(d2, dist2(chosen[-1]))
    centers = x[torch.tensor(chosen, device=x.device)].clone()  # [k, D]
    assign = None
    for _ in range(iters):
        new = torch.cat([torch.cdist(x[a:b], centers).argmin(1) for a, b in _blocks(n, k)])
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        full = counts > 0  # an emptied cluster keeps its center
        centers[full] = sums[full] / counts[full, None]
    return torch.cat([torch.cdist(x[a:b], centers).argmin(1) for a, b in _blocks(n, k)])


def typicality(x: torch.Tensor) -> torch.Tensor:
    """1 / mean distance to the K nearest other rows [n] (K = min(20, n // 2), at least 1),
    block by block."""
    kk = max(1, min(TYPICAL_K, len(x) // 2))
    out = []
    for a, b in _blocks(len(x), len(x)):
        d = torch.cdist(x[a:b], x)  # [b, n]
        d[torch.arange(b - a), torch.arange(a, b)] = torch.inf
        out.append(1 / (d.topk(kk, largest=False).values.mean(1) + 1e-12))
    return torch.cat(out)


def typiclust_picks(state: Round, k: int) -> torch.Tensor:
    """TypiClust: per pick, the most typical unlabelled row of the largest cluster with the fewest
    labelled rows (clusters of MIN_CLUSTER rows or fewer left out while others remain)."""
    clusters = min(int(state.labelled.sum()) + k, MAX_CLUSTERS, len(state.pool))
    assign = kmeans(state.pool, clusters, state.generator)
    sizes = torch.bincount(assign, minlength=clusters)
    labelled = torch.bincount(assign[state.labelled], minlength=clusters)
    free = sizes - labelled
    taken, typical, picks = state.labelled.clone(), {}, []
    for _ in range(k):
        eligible = (sizes > MIN_CLUSTER) & (free > 0)
        eligible = eligible if eligible.any() else free > 0
        fewest = labelled.masked_fill(~eligible, torch.iinfo(labelled.dtype).max).min()
        c = int(torch.where(eligible & (labelled == fewest), sizes, -1).argmax())
        if c not in typical:
            members = (assign == c).nonzero()[:, 0]
            typical[c] = (members, typicality(state.pool[members]))
        members, typ = typical[c]
        i = int(members[typ.masked_fill(taken[members], -1).argmax()])
        picks.append(i)
        taken[i], labelled[c], free[c] = True, labelled[c] + 1, free[c] - 1
    return torch.tensor(picks, device=state.pool.device)


def _ball_edges(x: torch.Tensor, delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(source, target) of every pair of rows within distance delta (both ways, self included)."""
    src, dst = [], []
    for a, b in _blocks(len(x), len(x)):
        near = (torch.cdist(x[a:b], x) < delta).nonzero()
        src.append(near[:, 0] + a)
        dst.append(near[:, 1])
    return torch.cat(src), torch.cat(dst)


def other_cluster_distance(x: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Each row's distance [N] to its nearest row of another cluster: its ball is pure below it."""
    out = []
    for a, b in _blocks(len(x), len(x)):
        d = torch.cdist(x[a:b], x).masked_fill(assign[a:b, None] == assign[None, :], torch.inf)
        out.append(d.min(1).values)
    return torch.cat(out)


def choose_delta(x: torch.Tensor, clusters: int, generator: torch.Generator) -> float:
    """ProbCover's delta: the largest radius at which PURITY of the balls hold rows of their own
    k-means cluster only, i.e. a quantile of the distance to the nearest other cluster."""
    d = other_cluster_distance(x, kmeans(x, clusters, generator))
    d = d[torch.isfinite(d)]
    return float(torch.quantile(d.double().cpu(), 1 - PURITY)) if len(d) else 1.0


def probcover_picks(state: Round, k: int, delta: float | None = None) -> torch.Tensor:
    """ProbCover: k times, the row whose delta-ball covers the most rows not yet covered (by a
    labelled row or a pick); random rows once everything is covered. Delta (chosen with a
    generator seeded 0: a property of the pool) and the balls are computed once per pool."""
    x = state.pool
    if delta is None:
        if "delta" not in state.cache:
            state.cache["delta"] = choose_delta(x, max(2, state.classes), torch.Generator().manual_seed(0))
        delta = state.cache["delta"]
    if state.cache.get("balls", (None,))[0] != delta:
        state.cache["balls"] = (delta, *_ball_edges(x, delta))
    _, src, dst = state.cache["balls"]
    covered = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    covered[dst[state.labelled[src]]] = True
    taken, picks = state.labelled.clone(), []
    for _ in range(k):
        live = src[~covered[dst]]  # edges into rows not yet covered
        gain = torch.bincount(live, minlength=len(x)).float().masked_fill(taken, -1)
        if gain.max() <= 0:
            free = (~taken).nonzero()[:, 0]
            i = int(free[torch.randint(len(free), (1,), generator=state.generator)])
        else:
            i = int(gain.argmax())
        picks.append(i)
        taken[i] = True
        covered[dst[src == i]] = True
    return torch.tensor(picks, device=x.device)


def _sampled_probs(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Probabilities [M, n, K] of rows x under M sampled heads."""
    return torch.softmax(torch.einsum("nd,mkd->mnk", x, w) + b[:, None, :], -1)


def bald_scores(probs: torch.Tensor) -> torch.Tensor:
    """BALD [n] from sampled probabilities [M, n, K]: H[mean p] - mean H[p]."""
    return entropy_scores(probs.mean(0)) - entropy_scores(probs.reshape(-1, probs.shape[-1])).reshape(
        probs.shape[:2]).mean(0)


def _coarsen(pool: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities [M, n, K] cut to each row's EPIG_CLASSES most probable classes plus one for
    the rest (identity when K is small enough)."""
    def cut(p: torch.Tensor) -> torch.Tensor:
        if p.shape[-1] <= EPIG_CLASSES:
            return p
        top = p.mean(0).topk(EPIG_CLASSES, dim=-1).indices  # [n, c]
        kept = p.gather(-1, top.expand(p.shape[0], -1, -1))  # [M, n, c]
        return torch.cat([kept, (1 - kept.sum(-1, keepdim=True)).clamp_min(0)], -1)
    return cut(pool), cut(target)


def epig_scores(pool: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """EPIG [n]: the mean over targets of I(y; y*) under the joint of M sampled heads, from
    probabilities pool [M, n, K] and target [M, t, K]."""
    pool, target = _coarsen(pool, target)
    joint = torch.einsum("mnk,mtl->ntkl", pool, target) / pool.shape[0]  # [n, t, K, K]
    h_joint = entropy_scores(joint.flatten(-2))  # [n, t]
    # I(y; y*) = H(y) + H(y*) - H(y, y*): the joint's marginals are the mean probabilities
    mi = entropy_scores(pool.mean(0))[:, None] + entropy_scores(target.mean(0))[None, :] - h_joint
    return mi.mean(1)


def _bayes_picks(state: Round, k: int, score: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    w, b = state.head.samples(state.samples, state.generator)
    n, width = len(state.features), state.samples * len(state.head.bias)  # [M, rows, K] a block
    scores = torch.cat([score(_sampled_probs(state.features[a:z], w, b)) for a, z in _blocks(n, width)])
    return _top_unlabelled(state, scores, k)


def bald_picks(state: Round, k: int) -> torch.Tensor:
    return _bayes_picks(state, k, bald_scores)


def epig_picks(state: Round, k: int) -> torch.Tensor:
    w, b = state.head.samples(state.samples, state.generator)
    target = _sampled_probs(state.targets, w, b).float()  # [M, t, K]; float32 from here: the joint is big
    classes = min(EPIG_CLASSES + 1, len(state.head.bias))
    # a block holds [M, rows, K] probabilities and a [rows, t, c, c] joint
    width = max(state.samples * len(state.head.bias), len(state.targets) * classes**2)
    scores = torch.cat([epig_scores(_sampled_probs(state.features[a:z], w, b).float(), target)
                        for a, z in _blocks(len(state.features), width)])
    return _top_unlabelled(state, scores, k)


STRATEGIES: dict[str, Callable[[Round, int], torch.Tensor] | None] = {
    "balanced": None,  # the reference's class-balanced draw, done by probe.active itself
    "random": random_picks, "entropy": entropy_picks, "margin": margin_picks, "coreset": coreset_picks,
    "typiclust": typiclust_picks, "probcover": probcover_picks, "bald": bald_picks, "epig": epig_picks,
}
