"""python -m probe.plot DIR [DIR ...] --out fewshot.png: accuracy and log-likelihood vs labels;
and the figures of probe.diagnose (spectrum, CKA matrix, t-SNE map).

    python -m probe.plot out/probe --out out/probe/fewshot.png
    python -m probe.plot out/probe ../msn-embeddings/results --out compare.png --logx

Each DIR is a probe output (fewshot.csv), a probe.active output (active.csv: a line per
strategy, `balanced` being the few-shot curve), or a folder of the reference's results
(<encoder>/testing_seedNN.csv, or testing_seedNN.csv directly), so published curves can be
overlaid. Lines are mean ± standard error across seeds, one per encoder (and per C when a C
sweep was run, unless --best-C picks the best C per label count, as the legend then says).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from msnpipe.remote import local_only
from msnpipe.runtime import UserError
from probe.results import read_results

SEED_FILE = re.compile(r"testing_seed(\d+)\.csv")


def _rows_from_fewshot(path: Path, tag: str) -> list[dict]:
    return [{"encoder": r["encoder"] + tag, "seed": int(r["seed"]), "n_labels": int(r["n_labels"]),
             "acc": float(r["test_acc"]), "loglik": float(r["test_loglik"]), "C": float(r["C"])}
            for r in read_results(path)]


def _rows_from_active(path: Path, tag: str) -> list[dict]:
    return [{"encoder": f"{r['encoder']} [{r['strategy']}]{tag}", "seed": int(r["seed"]),
             "n_labels": int(r["n_labels"]), "acc": float(r["test_acc"]), "loglik": float(r["test_loglik"]),
             "C": None} for r in read_results(path)]


def _rows_from_seed_files(folder: Path, encoder: str) -> list[dict]:
    rows = []
    for path in sorted(folder.iterdir()):
        m = SEED_FILE.fullmatch(path.name)
        if not m:
            continue
        with open(path, newline="") as f:
            rows += [{"encoder": encoder, "seed": int(m.group(1)), "n_labels": int(r["n_labels"]),
                      "acc": float(r["test_acc"]), "loglik": float(r["test_loglik"]), "C": None}
                     for r in csv.DictReader(f)]
    return rows


def load(dirs: list[Path]) -> list[dict]:
    """Every (encoder, seed, n_labels) result found in `dirs`; an active.csv's strategies as
    encoders named "<encoder> [<strategy>]"."""
    rows = []
    for d in dirs:
        tag = f" [{d.name}]" if len(dirs) > 1 else ""
        if (d / "fewshot.csv").exists() or (d / "active.csv").exists():
            for name, read in (("fewshot.csv", _rows_from_fewshot), ("active.csv", _rows_from_active)):
                rows += read(d / name, tag) if (d / name).exists() else []
        elif any(SEED_FILE.fullmatch(p.name) for p in d.iterdir()):
            rows += _rows_from_seed_files(d, d.name + tag)
        else:
            for sub in sorted(p for p in d.iterdir() if p.is_dir()):
                rows += _rows_from_seed_files(sub, sub.name + tag)
    if not rows:
        raise UserError(f"no fewshot.csv, active.csv or testing_seedNN.csv found in "
                        f"{', '.join(map(str, dirs))}")
    return rows


def curves(rows: list[dict], best_c: bool) -> dict[str, dict[str, np.ndarray]]:
    """label -> {n_labels, acc_mean, acc_sem, loglik_mean, loglik_sem}, sorted by n_labels."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["encoder"], r["C"], r["n_labels"])].append(r)
    stats = {k: _mean_sem(v) for k, v in groups.items()}
    Cs = {r["C"] for r in rows if r["C"] is not None}
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for (enc, C, n), s in sorted(stats.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2])):
        if best_c and C is not None:
            if s["acc_mean"] < max(v["acc_mean"] for (e, _, m), v in stats.items() if e == enc and m == n):
                continue
            label = f"{enc} (best C per label count)"
        else:
            label = enc if len(Cs) <= 1 or C is None else f"{enc}, C={C:g}"
        out[label]["n_labels"].append(n)
        for k, v in s.items():
            out[label][k].append(v)
    return {k: {m: np.array(v) for m, v in d.items()} for k, d in out.items()}


def _mean_sem(rows: list[dict]) -> dict[str, float]:
    out = {}
    for metric in ("acc", "loglik"):
        v = np.array([r[metric] for r in rows], dtype=float) * (100 if metric == "acc" else 1)
        out[f"{metric}_mean"] = float(v.mean())
        out[f"{metric}_sem"] = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    return out


def plot(lines: dict[str, dict[str, np.ndarray]], out: Path, logx: bool = False) -> Path:
    """Two panels (accuracy %, log-likelihood) with mean ± standard error bands."""
    fig, axes = _figure(ncols=2, figsize=(9, 3.4))
    for label, c in lines.items():
        for ax, metric in zip(axes, ("acc", "loglik")):
            m, s = c[f"{metric}_mean"], c[f"{metric}_sem"]
            ax.plot(c["n_labels"], m, label=label, marker=".")
            ax.fill_between(c["n_labels"], m - s, m + s, alpha=0.3)
    for ax, name in zip(axes, ("Test accuracy (%)", "Test expected log likelihood")):
        ax.set(xlabel="Number of labels", ylabel=name)
        ax.grid(visible=True, axis="y")
        if logx:
            ax.set_xscale("log")
    axes[1].legend(loc="lower right", fontsize=8)
    return _save(fig, out, bbox_inches="tight")


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


def _figure(**kw):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(**({"figsize": (5.5, 4.5)} | kw))


def _save(fig, out: Path, **kw) -> Path:
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120, **kw)
    plt.close(fig)
    return out


def writable_format(path: Path) -> None:
    """A UserError, before anything is read, when matplotlib cannot write `path`'s format."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    ext = path.suffix.lstrip(".").lower()
    if ext not in formats:
        raise UserError(f"{path}: matplotlib cannot write '.{ext}'; give a name ending in one of "
                        f"{', '.join('.' + f for f in sorted(formats))}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m probe.plot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", type=Path, nargs="+")
    p.add_argument("--out", type=local_only, required=True, help="image file (.png, .svg, .pdf)")
    p.add_argument("--logx", action="store_true", help="log-scale number of labels")
    p.add_argument("--best-C", action="store_true", help="best C per label count (C sweeps)")
    a = p.parse_args(argv)
    try:
        writable_format(a.out)
        missing = [d for d in a.dirs if not d.is_dir()]
        if missing:
            raise UserError(f"{missing[0]}: not a folder")
        lines = curves(load(a.dirs), a.best_C)
    except UserError as e:
        print(f"probe.plot: {e}", file=sys.stderr)
        return 1
    print(plot(lines, a.out, a.logx))
    return 0


if __name__ == "__main__":
    sys.exit(main())
