"""probe.strategies and probe.active: each score against an independent numpy computation, the
behaviours the methods are known for, resume after kill -9, and the balanced curve being the
few-shot curve."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from probe import strategies as S
from probe.active import main as active_main

ROOT = Path(__file__).parents[1]


def _np_entropy(p):
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(-1)


def test_the_command_offers_every_strategy():
    from probe.active import NEED_A_MODEL, STRATEGY_NAMES
    assert STRATEGY_NAMES == tuple(S.STRATEGIES) and set(NEED_A_MODEL) < set(STRATEGY_NAMES)


def test_entropy_and_margin_against_numpy():
    p = np.random.default_rng(0).dirichlet(np.ones(5), 40)
    np.testing.assert_allclose(S.entropy_scores(torch.tensor(p)).numpy(), _np_entropy(p), rtol=1e-12)
    top = np.sort(p, 1)[:, ::-1]
    np.testing.assert_allclose(S.margin_scores(torch.tensor(p)).numpy(), -(top[:, 0] - top[:, 1]), rtol=1e-12)


def _state(x, labelled, head=None, targets=None, samples=20, seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    x = torch.tensor(x)
    mask = torch.zeros(len(x), dtype=torch.bool)
    mask[list(labelled)] = True
    return S.Round(x, x, mask, head, g, targets=None if targets is None else torch.tensor(targets),
                   samples=samples, classes=3)


@pytest.mark.parametrize("seed", [0, 3])
def test_coreset_from_a_cold_start_is_greedy_k_center_from_a_random_row(seed):
    """With no labels it picked one random row, then rows 0, 1, 2, ... (its distances started at 0)."""
    x = np.random.default_rng(2).normal(size=(50, 3))
    picks = S.coreset_picks(_state(x, [], seed=seed), 5).tolist()
    g = torch.Generator()
    g.manual_seed(seed)
    chosen = [int(torch.randint(len(x), (1,), generator=g))]
    for _ in range(4):
        d = np.min(np.linalg.norm(x[:, None] - x[chosen][None], axis=2), axis=1)
        d[chosen] = -1
        chosen.append(int(d.argmax()))
    assert picks == chosen and picks[1:] != [0, 1, 2, 3]


def test_coreset_is_greedy_k_center():
    x = np.random.default_rng(1).normal(size=(60, 2))
    picks = S.coreset_picks(_state(x, [0, 5]), 6).tolist()
    chosen, want = [0, 5], []
    for _ in range(6):  # numpy: the point farthest from everything chosen, each time
        d = np.min(np.linalg.norm(x[:, None] - x[chosen][None], axis=2), axis=1)
        d[chosen] = -1
        chosen.append(int(d.argmax()))
        want.append(chosen[-1])
    assert picks == want


def _head_3x2():
    w = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]], dtype=torch.float64)
    head = S.Head(w, torch.tensor([0.1, -0.2, 0.1], dtype=torch.float64))
    x = torch.tensor(np.random.default_rng(2).normal(size=(30, 2)))
    return S.laplace(head, x, C=1.0), x


def test_laplace_precision_is_the_diagonal_of_the_hessian():
    head, x = _head_3x2()
    z = x.numpy() @ head.weight.numpy().T + head.bias.numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    for k in range(3):
        for d in range(2):  # d^2 / dw_kd^2 of sum log-loss + |w|^2 / 2
            want = np.sum(p[:, k] * (1 - p[:, k]) * x.numpy()[:, d] ** 2) + 1
            assert head.precision_w[k, d].item() == pytest.approx(want)


def _mc_probs(head, x, m, seed):
    g = torch.Generator()
    g.manual_seed(seed)
    w, b = head.samples(m, g)
    z = np.einsum("nd,mkd->mnk", x, w.numpy()) + b.numpy()[:, None, :]
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def test_bald_and_epig_against_brute_force_monte_carlo():
    head, _ = _head_3x2()
    rng = np.random.default_rng(3)
    pool, targets = rng.normal(size=(12, 2)), rng.normal(size=(7, 2))
    m = 4000
    pp, pt = _mc_probs(head, pool, m, 5), _mc_probs(head, targets, m, 5)  # [M, n, 3], [M, t, 3]
    bald = _np_entropy(pp.mean(0)) - _np_entropy(pp).mean(0)
    np.testing.assert_allclose(S.bald_scores(torch.tensor(pp)).numpy(), bald, rtol=1e-9)
    epig = np.zeros(len(pool))
    for i in range(len(pool)):  # I(y; y*) with the joint summed over posterior samples, one pair at a time
        for j in range(len(targets)):
            joint = np.einsum("mk,ml->kl", pp[:, i], pt[:, j]) / m
            outer = np.outer(joint.sum(1), joint.sum(0))
            epig[i] += (joint * np.log(joint / outer)).sum() / len(targets)
    got = S.epig_scores(torch.tensor(pp), torch.tensor(pt)).numpy()
    np.testing.assert_allclose(got, epig, rtol=1e-8, atol=1e-12)
    assert (got >= -1e-12).all() and (got <= _np_entropy(pp.mean(0)) + 1e-9).all()
    state = _state(pool, [0], head=head, targets=targets, samples=64)  # the picks rank those scores
    picks = S.epig_picks(state, 3).tolist()
    assert 0 not in picks and len(set(picks)) == 3


def test_typicality_and_kmeans_against_numpy():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 3))
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(d, np.inf)
    want = 1 / np.sort(d, 1)[:, :20].mean(1)
    np.testing.assert_allclose(S.typicality(torch.tensor(x)).numpy(), want, rtol=1e-10)
    blobs = np.concatenate([rng.normal(c, 0.05, size=(30, 2)) for c in ((0, 0), (3, 0), (0, 3))])
    g = torch.Generator()
    g.manual_seed(0)
    assign = S.kmeans(torch.tensor(blobs), 3, g).numpy()
    assert sorted(np.bincount(assign)) == [30, 30, 30]
    assert all(len(set(assign[i * 30 : (i + 1) * 30])) == 1 for i in range(3))


def test_probcover_covers_greedily():
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 1, size=(80, 2))
    picks = S.probcover_picks(_state(x, [3]), 4, delta=0.3).tolist()
    within = np.linalg.norm(x[:, None] - x[None], axis=2) < 0.3
    covered, want = within[3].copy(), []
    for _ in range(4):  # numpy: the unlabelled point whose ball covers the most uncovered points
        gain = (within & ~covered[None]).sum(1).astype(float)
        gain[[3, *want]] = -1
        want.append(int(gain.argmax()))
        covered |= within[want[-1]]
    assert picks == want


def _store(root: Path, *, classes: int, per_class: int, dim: int, spread: float, outliers: float = 0.0,
           seed: int = 0) -> Path:
    """Gaussian classes (with a share of `outliers` drawn far and wide, labelled by class)."""
    from embed.from_npy import main as from_npy_main
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, dim)) * 3
    for split, n in (("train", per_class), ("val", 60)):
        y = np.repeat(np.arange(classes), n)
        x = means[y] + rng.normal(size=(len(y), dim)) * spread
        far = rng.random(len(y)) < outliers
        x[far] = rng.normal(size=(far.sum(), dim)) * 6
        np.save(root / f"embeddings_syn_{split}.npy", x.astype(np.float32))
        np.save(root / f"labels_{split}.npy", y)
    assert from_npy_main([str(root), "--encoder", "syn", "--out", str(root / "s.zarr")]) == 0
    return root / "s.zarr"


def _curves(out: Path) -> dict[tuple[str, int], list[float]]:
    with open(out / "active.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    curves: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        curves.setdefault((r["strategy"], int(r["round"])), []).append(float(r["test_acc"]))
    return {k: v for k, v in curves.items()}


def test_uncertainty_beats_random_at_mid_budgets_on_overlapping_classes(tmp_path):
    """Overlapping classes, 2 labels per class to start, 6 more a round: past the cold start
    (round 1, where uncertainty sampling is known to lose), entropy and margin sampling cut
    random acquisition's test error by more than a quarter over rounds 5-10 (10 seeds)."""
    store = _store(tmp_path, classes=3, per_class=400, dim=8, spread=2.0)
    assert active_main([str(store), "--encoder", "syn", "--out", str(tmp_path / "o"), "--strategies",
                        "random,entropy,margin", "--init", "2", "--rounds", "10", "--step", "6",
                        "--seeds", "0-9",
                        "--backend", "torch", "--device", "cpu"]) == 0
    c = _curves(tmp_path / "o")
    error = {s: 1 - np.mean([np.mean(c[(s, r)]) for r in range(5, 11)])
             for s in ("random", "entropy", "margin")}
    for s in ("entropy", "margin"):
        assert error[s] < 0.75 * error["random"], error


def test_typical_points_beat_random_from_a_cold_start(tmp_path):
    """Well-clustered classes with 20% outliers, no labels to start (--init 0), a label per class
    a round: TypiClust and ProbCover pick cluster cores and beat random at 1 and 2 labels per
    class; greedy k-center picks the outliers and loses to random (Hacohen et al. 2022)."""
    store = _store(tmp_path, classes=8, per_class=60, dim=16, spread=0.8, outliers=0.2, seed=1)
    assert active_main([str(store), "--encoder", "syn", "--out", str(tmp_path / "o"), "--strategies",
                        "random,coreset,typiclust,probcover", "--init", "0", "--rounds", "2",
                        "--seeds", "0-9",
                        "--backend", "torch", "--device", "cpu"]) == 0
    c = _curves(tmp_path / "o")
    assert not any(r == 0 for _, r in c)  # a cold start's round 0 has no model to score
    for r in (1, 2):
        rand = np.mean(c[("random", r)])
        for s in ("typiclust", "probcover"):
            assert np.mean(c[(s, r)]) > rand + 0.05, (s, r, np.mean(c[(s, r)]), rand)
        assert np.mean(c[("coreset", r)]) < rand - 0.05, (r, np.mean(c[("coreset", r)]), rand)


def test_a_cold_start_refuses_strategies_that_need_a_model(tmp_path, capsys):
    store = _store(tmp_path, classes=3, per_class=20, dim=4, spread=1.0)
    with pytest.raises(SystemExit):
        active_main([str(store), "--encoder", "syn", "--out", str(tmp_path / "o"), "--init", "0",
                     "--strategies", "random,margin,bald"])
    err = capsys.readouterr().err
    assert "--init 0 starts with no labels, so no model: bald, margin rank rows by one" in err


@pytest.mark.parametrize("backend", ["sklearn", "numpy"])
@pytest.mark.parametrize("pool_max", ["100000", "30"])
def test_balanced_is_the_few_shot_curve(tmp_path, backend, pool_max):
    """Also when the train split is larger than --pool-max (ImageNet's 1.28M rows against 100,000):
    the reference's draws come from the whole split, as python -m probe makes them, not from the
    subsample that pool-sized work uses."""
    from probe.__main__ import main as probe_main
    store = _store(tmp_path, classes=5, per_class=20, dim=6, spread=1.5)
    assert active_main([str(store), "--encoder", "syn", "--out", str(tmp_path / "a"), "--strategies",
                        "balanced", "--init", "1", "--rounds", "3", "--seeds", "0-2",
                        "--backend", backend, "--pool-max", pool_max]) == 0
    assert probe_main([str(store), "--encoder", "syn", "--out", str(tmp_path / "p"), "--per-class", "1-4",
                       "--seeds", "0-2", "--backend", backend, "--jobs", "1"]) == 0
    with open(tmp_path / "p" / "fewshot.csv", newline="") as f:
        few = {(int(r["seed"]), int(r["n_labels"])): float(r["test_acc"]) for r in csv.DictReader(f)}
    with open(tmp_path / "a" / "active.csv", newline="") as f:
        act = {(int(r["seed"]), int(r["n_labels"])): float(r["test_acc"]) for r in csv.DictReader(f)}
    assert act.keys() == few.keys() and len(act) == 12
    for k in act:
        assert act[k] == pytest.approx(few[k], abs=1e-9), k
    from probe import plot, table  # the readers draw and tabulate a strategy as "<encoder> [<strategy>]"
    lines = plot.curves(plot.load([tmp_path / "a"]), best_c=False)
    assert list(lines) == ["syn [balanced]"] and list(lines["syn [balanced]"]["n_labels"]) == [5, 10, 15, 20]
    want = np.mean([few[(s, 10)] for s in range(3)]) * 100
    assert lines["syn [balanced]"]["acc_mean"][1] == pytest.approx(want)
    columns, cells = table.collect([tmp_path / "a"])
    assert columns == ["5 labels", "10 labels", "15 labels", "20 labels"]
    assert cells["syn [balanced]"]["10 labels"] == pytest.approx(want)


@pytest.mark.parametrize("backend", ["sklearn", "numpy"])
def test_cpu_fits_run_with_one_blas_thread(tmp_path, monkeypatch, backend):
    # lbfgs over a few hundred rows runs 2.7x faster with one BLAS thread than with two (a
    # 6-round balanced run, 100 classes, D=384: 16.2 s against 6.1 s), as probe's fits do
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info

    from probe import numpy_lr
    owner, name = (LogisticRegression, "fit") if backend == "sklearn" else (numpy_lr, "fit")
    threads, fit = [], getattr(owner, name)

    def counting_fit(*args, **kwargs):
        threads.append(max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"))
        return fit(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting_fit)
    store = _store(tmp_path, classes=4, per_class=10, dim=6, spread=1.5)
    assert active_main([str(store), "--encoder", "syn", "--out", str(tmp_path / "a"), "--strategies",
                        "entropy", "--rounds", "2", "--seeds", "0", "--backend", backend]) == 0
    assert threads == [1, 1, 1]


@pytest.mark.parametrize("classes", [2, 3])
def test_a_fit_head_gives_scikit_learns_probabilities_over_the_pools_classes(classes):
    # the head spans the pool's 4 classes; only the labelled ones can win, with scikit-learn's
    # probabilities (its binary parametrization too), whichever backend fits it
    from sklearn.linear_model import LogisticRegression

    from probe.active import Plan, Pool, fit_head
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    x = rng.normal(size=(40, 5)) + labels[:, None]  # [40, 5]
    pool = Pool(np.arange(40), torch.tensor(x), None, labels, None, None, 4)
    at = np.flatnonzero(labels < classes)[::2]
    want = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x[at], labels[at]).predict_proba(x)
    for backend in ("sklearn", "numpy", "torch"):
        head, _, _ = fit_head(pool, at, Plan(strategies=("entropy",), seeds=(0,), init=1, budgets=(4,),
                                           backend=backend, max_iter=10_000))
        got = torch.softmax(head.logits(torch.tensor(x)), dim=1).numpy()  # [40, 4]
        assert np.abs(got[:, classes:]).max() < 1e-12
        np.testing.assert_allclose(got[:, :classes], want, atol=2e-3)


def test_other_settings_and_bad_budgets_are_refused(tmp_path, caplog):
    store = _store(tmp_path, classes=3, per_class=20, dim=4, spread=1.0)
    args = [str(store), "--encoder", "syn", "--out", str(tmp_path / "o"), "--strategies", "random",
            "--rounds", "1", "--seeds", "0", "--backend", "sklearn"]
    assert active_main(args) == 0
    assert active_main([*args, "--C", "0.5"]) == 1
    assert "was written with other settings (C: 1.0 != 0.5" in caplog.text
    b_out, c_out = str(tmp_path / "b"), str(tmp_path / "c")
    assert active_main([*args[:-2], "--backend", "sklearn", "--budgets", "2,9", "--out", b_out]) == 1
    assert "--budgets 2,9: must rise, from above the 3 labels" in caplog.text
    assert active_main([*args[:5], "--strategies", "balanced", "--step", "2", "--out", c_out]) == 1
    assert "every budget must be a multiple of the 3 classes" in caplog.text


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in csv.DictReader(f)]


@pytest.mark.slow
def test_a_killed_run_resumes_with_the_same_selections(tmp_path):
    store = _store(tmp_path, classes=8, per_class=150, dim=16, spread=1.5)
    args = ["--encoder", "syn", "--strategies", "random,entropy,coreset,typiclust,probcover,bald,epig",
            "--rounds", "4", "--step", "16", "--seeds", "0-1", "--backend", "torch", "--device", "cpu"]
    assert active_main([str(store), *args, "--out", str(tmp_path / "ref")]) == 0
    cmd = [sys.executable, "-m", "probe.active", str(store), *args, "--out", str(tmp_path / "k")]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    target, deadline = tmp_path / "k" / "active" / "entropy" / "seed0.npz", time.monotonic() + 120
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "finished before it could be killed"
    assert active_main([str(store), *args, "--out", str(tmp_path / "k")]) == 0
    assert _rows(tmp_path / "k" / "active.csv") == _rows(tmp_path / "ref" / "active.csv")
    for f in (tmp_path / "ref" / "active").rglob("*.npz"):
        a, b = np.load(f), np.load(tmp_path / "k" / f.relative_to(tmp_path / "ref"))
        assert [k for k in a.files if k != "select_seconds"] == [k for k in b.files if k != "select_seconds"]
        assert all(np.array_equal(a[k], b[k]) for k in a.files if k != "select_seconds")
