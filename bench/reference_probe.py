"""The reference probe (msn-embeddings' evaluate_embeddings.py), loop for loop, written out
independently of probe/: class-balanced draws, scikit-learn's LogisticRegression, one process
per seed. It imports numpy and scikit-learn only, as the script does, so its start-up is the
script's.

    python -m bench.reference_probe FOLDER --encoder E --seed S [--n-per-class 10]
"""

from __future__ import annotations

import numpy as np


def sample_n_per_class(labels: np.ndarray, n_per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Class-balanced draw, exactly as the reference script makes it."""
    sampled = []
    for _class in np.unique(labels):
        class_inds = np.flatnonzero(labels == _class)
        sampled += [rng.choice(class_inds, size=n_per_class, replace=False)]
    return rng.permutation(np.concatenate(sampled))


def reference_curve(train_x, train_y, test_x, *, test_y, seed: int, n_labels_end: int,
                    C: float = 1.0, max_iter: int = 1000) -> list[dict]:
    """One seed of the reference few-shot curve: n per class = 1, 2, ... until n_labels_end."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(seed)
    mean, std = train_x.mean(0, keepdims=True), train_x.std(0, keepdims=True)
    std[std < np.finfo(train_x.dtype).eps] = 1
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    rows, n = [], 1
    while True:
        inds = sample_n_per_class(train_y, n, rng)
        model = LogisticRegression(C=C, max_iter=max_iter).fit(train_x[inds], train_y[inds])
        probs = model.predict_proba(test_x)
        rows.append({"n_labels": len(inds), "test_acc": model.score(test_x, test_y),
                     "test_loglik": -log_loss(test_y, probs, labels=model.classes_), "inds": inds})
        if len(inds) >= n_labels_end:
            return rows
        n += 1


def evaluate_seed(folder, encoder: str, seed: int, *, n_per_class_end: int) -> list[dict]:
    """evaluate_embeddings.py for one seed: load the .npy files, fit the curve, write
    <folder>/<encoder>/testing_seedNN.csv as the reference does."""
    from pathlib import Path

    folder = Path(folder)
    train_x, test_x = (np.load(folder / f"embeddings_{encoder}_{s}.npy") for s in ("train", "val"))
    train_y, test_y = (np.load(folder / f"labels_{s}.npy") for s in ("train", "val"))
    end = n_per_class_end * len(np.unique(train_y))
    rows = reference_curve(train_x, train_y, test_x, test_y=test_y, seed=seed, n_labels_end=end)
    out = folder / encoder
    out.mkdir(exist_ok=True)
    lines = ["n_labels,test_acc,test_loglik"] + [
        f"{r['n_labels']:03},{r['test_acc']:.4f},{r['test_loglik']:.4f}" for r in rows]
    (out / f"testing_seed{seed:02}.csv").write_text("\n".join(lines) + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    """python -m bench.reference_probe FOLDER --encoder E --seed S [--n-per-class N]: one seed of the
    reference's evaluate_embeddings.py, one process per seed as its README loops it."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.reference_probe", description=main.__doc__)
    p.add_argument("folder")
    p.add_argument("--encoder", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--n-per-class", type=int, default=10)
    a = p.parse_args(argv)
    evaluate_seed(a.folder, a.encoder, a.seed, n_per_class_end=a.n_per_class)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
