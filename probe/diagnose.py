"""python -m probe.diagnose STORE --encoder E: representation diagnostics beyond linear probes.

    python -m probe.diagnose out/embeddings.zarr --encoder vits16_800ep --out out/diagnose

Writes DIR/diagnostics.json, DIR/diagnostics.md and PNGs (spectrum, CKA, 2-D map):

- alignment (mean squared distance between L2-normalized views of one image) and uniformity
  (log mean exp(-2 ||f(x) - f(y)||^2) over distinct images), as defined by Wang & Isola;
  alignment needs a store embedded with `--views K` (K >= 2);
- instance discrimination: is an image's other view its nearest neighbour among all views of
  the split (top-1, top-5); `sd-sd` (view 0 -> view 1) and `d-sd` (plain -> view 0);
- effective rank of the embedding covariance (RankMe: exp of the entropy of the normalized
  singular values) and the sorted variance spectrum;
- kNN accuracy for every k up to 101 with plain (Euclidean), L2-normalized and
  mean-shifted-normalized features, train split as memory, majority vote;
- linear CKA between every pair of encoders whose groups of the split are complete and were
  built from the same shards (the others are listed as left out, with the reason);
- a t-SNE map of a class-balanced sample, colored by class.

Everything is batched in torch (on the GPU when there is one); pairwise quantities are
computed block by block or on a sample of `--max-rows` rows, never as one N x N matrix.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from embed.store import EmbeddingSet, StoreError, list_groups, open_embeddings, open_group
from msnpipe.runtime import UserError, pick_device, setup_logging
from probe.data import mean_std, open_pair

log = logging.getLogger("probe")
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


def knn_sweep(train: EmbeddingSet, test: torch.Tensor, test_y: torch.Tensor, mode: str,
              max_k: int = MAX_K) -> np.ndarray:
    """Majority-vote accuracy for k = 1..max_k; mode plain (Euclidean) | norm | shifted-norm.
    The train split streams in blocks (probe.knn.top_neighbours); test [Q, D] is in memory."""
    from probe.knn import top_neighbours

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
    correct = torch.zeros(idx.shape[1], dtype=torch.float64)
    for start in range(0, len(idx), 256):
        counts = F.one_hot(train_y[idx[start : start + 256]], classes).cumsum(1)  # [b, k, C]
        pred = counts.argmax(-1)  # [b, k]: the vote of the first j + 1 neighbours
        correct += (pred == test_y[start : start + 256, None]).sum(0).double().cpu()
    return (correct / len(test)).numpy()


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


def balanced_sample(labels: np.ndarray, classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices: up to `per_class` rows of each of the first `classes` classes."""
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)[:classes]]
    return np.sort(np.concatenate(keep))


def tsne_map(x: np.ndarray, y: np.ndarray, out: Path) -> Path:
    """2-D t-SNE (cuML on a GPU when installed, else scikit-learn) of rows x, colored by y."""
    from probe.backends import cuml_available

    if cuml_available():
        from cuml.manifold import TSNE
    else:
        from sklearn.manifold import TSNE
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    xy = np.asarray(TSNE(n_components=2, perplexity=perplexity, random_state=0).fit_transform(x))
    fig, ax = _figure()
    ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap="tab20", s=6)
    ax.set(title=f"t-SNE of {len(x)} rows, {len(np.unique(y))} classes", xticks=[], yticks=[])
    return _save(fig, out)


def spectrum_plot(eigenvalues: np.ndarray, out: Path, erank: float) -> Path:
    fig, ax = _figure()
    ax.semilogy(np.arange(1, len(eigenvalues) + 1), np.maximum(eigenvalues, 1e-12))
    ax.set(xlabel="component", ylabel="variance", title=f"covariance spectrum (effective rank {erank:.1f})")
    return _save(fig, out)


def cka_plot(names: list[str], matrix: np.ndarray, out: Path) -> Path:
    fig, ax = _figure()
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im)
    ax.set_title("linear CKA")
    return _save(fig, out)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(5.5, 4.5))


def _save(fig, out: Path) -> Path:
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _rows(e: EmbeddingSet, idx: np.ndarray) -> np.ndarray:
    return e.rows(idx)


def _timed(times: dict, name: str, fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    times[name] = round(time.perf_counter() - t, 3)
    return out


def _views_part(e: EmbeddingSet, idx: np.ndarray, x: torch.Tensor, times: dict) -> dict:
    if e.views is None or e.views.shape[1] < 2:
        return {"alignment": None, "instance_discrimination": None,
                "views_note": "no views in the store: embed with --views 2 (or more) for these"}
    v = torch.from_numpy(np.asarray(e.views.get_orthogonal_selection((idx, slice(None), slice(None))),
                                    dtype=np.float32)).to(x.device)  # [n, K, D]
    return {"alignment": _timed(times, "alignment", alignment, v),
            "instance_discrimination": {
                "sd-sd": _timed(times, "instance_sd_sd", instance_discrimination, v[:, 0], v[:, 1]),
                "d-sd": _timed(times, "instance_d_sd", instance_discrimination, x, v[:, 0])},
            "views": int(v.shape[1])}


def _knn_part(train: EmbeddingSet | str, e: EmbeddingSet, x: torch.Tensor, idx: np.ndarray,
              times: dict) -> dict:
    if isinstance(train, str):
        return {"knn_note": train}
    y = torch.from_numpy(e.labels[idx].astype(np.int64)).to(x.device)
    sweep = {}
    for mode in ("plain", "norm", "shifted-norm"):
        acc = _timed(times, f"knn_{mode}", knn_sweep, train, x, y, mode)
        sweep[mode] = {"best_k": int(acc.argmax()) + 1, "best_top1": float(acc.max()),
                       "top1_by_k": [round(float(a), 5) for a in acc]}
    return {"knn": sweep}


def _source(attrs: dict, rows: int) -> tuple:
    """What a group's rows are rows of: its shards, or (imported groups) just their number."""
    sha = attrs.get("shards_manifest_sha256")
    return ("shards", sha) if sha else ("rows", rows)


def cka_groups(store: Path, e: EmbeddingSet) -> tuple[list[EmbeddingSet], dict[str, str]]:
    """The groups of e's split that CKA can compare with e (complete, same shards), and the
    others with the reason each was left out."""
    sets, left_out = [], {}
    for name in [enc for enc, s in list_groups(store) if s == e.split]:
        g = open_group(store, name, e.split)
        if not g.attrs.get("complete", False):
            left_out[name] = "incomplete"
        elif _source(g.attrs.asdict(), g["embeddings"].shape[0]) != _source(e.attrs, e.shape[0]):
            left_out[name] = "built from other shards"
        else:
            sets.append(e if name == e.encoder else open_embeddings(store, name, e.split))
    return sets, left_out


def _cka_part(store: Path, e: EmbeddingSet, out: Path, times: dict, device: torch.device) -> dict:
    sets, left_out = cka_groups(store, e)
    if len(sets) < 2:
        return {"cka": None, "cka_left_out": left_out,
                "cka_note": f"no other complete group of {e.split} from the same shards; CKA needs two"}
    t = time.perf_counter()
    m = np.eye(len(sets))
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            m[i, j] = m[j, i] = linear_cka(sets[i], sets[j], device)
    times["cka"] = round(time.perf_counter() - t, 3)
    cka_plot([s.encoder for s in sets], m, out / "cka.png")
    return {"cka": {"encoders": [s.encoder for s in sets], "matrix": m.round(5).tolist()},
            "cka_left_out": left_out}


def diagnose(store: Path, encoder: str, split: str, train_split: str, out: Path, *, max_rows: int,
             tsne_classes: int, tsne_per_class: int, device: torch.device) -> dict:
    """Every diagnostic of (encoder, split); writes the PNGs and returns the JSON-able result."""
    try:
        train, e = open_pair(store, encoder, train_split, split)
    except StoreError as err:  # no train split: everything but the kNN sweep
        e, train = open_embeddings(store, encoder, split), f"no kNN sweep: {err}"
    for group in (e, train) if isinstance(train, EmbeddingSet) else (e,):
        group.require_finite()  # before anything is computed or written
    n = e.shape[0]
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(n, size=min(n, max_rows), replace=False))
    x = torch.from_numpy(_rows(e, idx)).to(device)  # [n, D]
    times: dict[str, float] = {}
    result = {"encoder": encoder, "split": split, "rows": n, "sampled_rows": len(idx),
              "uniformity": _timed(times, "uniformity", uniformity, x)}
    result |= _views_part(e, idx, x, times)
    ev = _timed(times, "spectrum", covariance_spectrum, x)
    result["effective_rank"] = effective_rank(ev)
    result["variance_spectrum_top10"] = [float(v) for v in ev[:10]]
    spectrum_plot(ev, out / "spectrum.png", result["effective_rank"])
    result |= _knn_part(train, e, x, idx, times)
    result |= _cka_part(store, e, out, times, device)
    pick = balanced_sample(e.labels, tsne_classes, tsne_per_class)
    _timed(times, "tsne", tsne_map, _rows(e, pick), e.labels[pick], out / "tsne.png")
    result["seconds"] = times
    return result


def markdown(r: dict) -> str:
    """A short human summary of a diagnostics result."""
    lines = [f"# Diagnostics: {r['encoder']} / {r['split']}", "",
             f"- rows: {r['rows']} (sampled {r['sampled_rows']} for pairwise metrics)",
             f"- uniformity (t=2): {r['uniformity']:.4f}",
             f"- effective rank (RankMe): {r['effective_rank']:.2f}"]
    if r.get("alignment") is not None:
        lines.append(f"- alignment ({r['views']} views): {r['alignment']:.4f}")
        for mode, v in r["instance_discrimination"].items():
            lines.append(f"- instance discrimination {mode}: top-1 {v['top1']:.4f}, top-5 {v['top5']:.4f}")
    else:
        lines.append(f"- alignment, instance discrimination: {r['views_note']}")
    for mode, v in r.get("knn", {}).items():
        lines.append(f"- kNN {mode}: best k {v['best_k']}, top-1 {v['best_top1']:.4f}")
    if r.get("knn_note"):
        lines.append(f"- {r['knn_note']}")
    if r.get("cka"):
        lines.append(f"- linear CKA: {r['cka']['encoders']} -> {r['cka']['matrix']}")
    elif r.get("cka_note"):
        lines.append(f"- linear CKA: {r['cka_note']}")
    if r.get("cka_left_out"):
        lines.append(f"- left out of CKA: {r['cka_left_out']}")
    lines.append(f"- seconds: {r['seconds']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(prog="python -m probe.diagnose", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=Path)
    p.add_argument("--encoder", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--train-split", default="train", help="kNN memory")
    p.add_argument("--out", type=Path, default=Path("out/diagnose"))
    p.add_argument("--max-rows", type=int, default=20000, help="rows sampled for pairwise metrics")
    p.add_argument("--tsne-classes", type=int, default=20)
    p.add_argument("--tsne-per-class", type=int, default=50)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    a = p.parse_args(argv)
    t = time.perf_counter()
    try:
        device = pick_device(a.device)
        r = diagnose(a.store, a.encoder, a.split, a.train_split, a.out, max_rows=a.max_rows,
                     tsne_classes=a.tsne_classes, tsne_per_class=a.tsne_per_class, device=device)
    except UserError as e:
        log.error("%s", e)
        return 1
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "diagnostics.json").write_text(json.dumps(r, indent=1) + "\n")
    (a.out / "diagnostics.md").write_text(markdown(r))
    print(markdown(r))
    log.info("diagnostics in %.1f s -> %s", time.perf_counter() - t, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
