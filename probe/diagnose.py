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
from typing import TYPE_CHECKING

import numpy as np

from embed.store import EmbeddingSet, StoreError, list_groups, open_embeddings, open_group
from msnpipe.remote import local_only, location
from msnpipe.runtime import command, pick_device
from probe.args import at_least
from probe.data import open_pair

if TYPE_CHECKING:  # torch and the metrics are imported once the command line is parsed
    import torch

log = logging.getLogger("probe")


def _rows(e: EmbeddingSet, idx: np.ndarray) -> np.ndarray:
    return e.rows(idx)


def _timed(times: dict, name: str, fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    times[name] = round(time.perf_counter() - t, 3)
    return out


def _views_part(e: EmbeddingSet, idx: np.ndarray, x: torch.Tensor, *, times: dict) -> dict:
    import torch

    from probe.metrics import alignment, instance_discrimination

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


def _knn_part(train: EmbeddingSet | str, e: EmbeddingSet, x: torch.Tensor, *, idx: np.ndarray,
              times: dict) -> dict:
    if isinstance(train, str):
        return {"knn_note": train}
    import torch

    from probe.metrics import knn_sweep

    y = torch.from_numpy(e.labels[idx].astype(np.int64)).to(x.device)
    sweep = {}
    for mode in ("plain", "norm", "shifted-norm"):
        acc = _timed(times, f"knn_{mode}", knn_sweep, train, x, y, mode=mode)
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


def _cka_part(store: Path, e: EmbeddingSet, out: Path, *, times: dict, device: torch.device) -> dict:
    from probe.metrics import linear_cka
    from probe.plot import cka_plot

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


def diagnose(store: Path, encoder: str, split: str, *, train_split: str, out: Path, max_rows: int,
             tsne_classes: int, tsne_per_class: int, device: torch.device) -> dict:
    """Every diagnostic of (encoder, split); writes the PNGs and returns the JSON-able result."""
    import torch

    from probe.metrics import balanced_sample, covariance_spectrum, effective_rank, uniformity
    from probe.plot import spectrum_plot, tsne_map

    try:
        train, e = open_pair(store, encoder, train_split, test_split=split)
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
    result |= _views_part(e, idx, x, times=times)
    ev = _timed(times, "spectrum", covariance_spectrum, x)
    result["effective_rank"] = effective_rank(ev)
    result["variance_spectrum_top10"] = [float(v) for v in ev[:10]]
    spectrum_plot(ev, out / "spectrum.png", result["effective_rank"])
    result |= _knn_part(train, e, x, idx=idx, times=times)
    result |= _cka_part(store, e, out, times=times, device=device)
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


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m probe.diagnose", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=location, help="a Zarr store: a folder or a URL (s3://...)")
    p.add_argument("--encoder", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--train-split", default="train", help="kNN memory")
    p.add_argument("--out", type=local_only, default=Path("out/diagnose"))
    p.add_argument("--max-rows", type=at_least(2), default=20000, help="rows sampled for pairwise metrics")
    p.add_argument("--tsne-classes", type=at_least(1), default=20)
    p.add_argument("--tsne-per-class", type=at_least(1), default=50)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p.parse_args(argv)


def run(a: argparse.Namespace) -> dict:
    """Every diagnostic, written to OUT/diagnostics.json and .md."""
    t = time.perf_counter()
    r = diagnose(a.store, a.encoder, a.split, train_split=a.train_split, out=a.out, max_rows=a.max_rows,
                 tsne_classes=a.tsne_classes, tsne_per_class=a.tsne_per_class, device=pick_device(a.device))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "diagnostics.json").write_text(json.dumps(r, indent=1) + "\n")
    (a.out / "diagnostics.md").write_text(markdown(r))
    log.info("diagnostics in %.1f s -> %s", time.perf_counter() - t, a.out)
    return r


def main(argv: list[str] | None = None) -> int:
    return command(_parse, run, argv, logger="probe", done=lambda _, r: print(markdown(r)))


if __name__ == "__main__":
    sys.exit(main())
