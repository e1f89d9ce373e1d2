"""Probe answers that belong to the problem, not the solver: every backend at the certified
optimum on a 1000-class problem of realistic (correlated, overlapping) embeddings; the
certificate's claim checked against a far tighter solve; warm starts that change the time and
not the answer; and --protocol seed, bit for bit the seed script on a problem where the paths
diverge."""

import csv

import numpy as np
import pytest

from bench.synthetic import realistic_embeddings
from probe import backends
from probe.__main__ import main
from probe.precondition import LOGIT_BOUND, Basis, certify


def _standardized(classes, dim, per_class, val=5, seed=0):
    data = realistic_embeddings(classes, dim, {"train": per_class, "val": val}, seed=seed)
    (x, y), (xt, yt) = data["train"], data["val"]
    mean, std = x.mean(0), x.std(0)
    return (x - mean) / std, y, (xt - mean) / std, yt


@pytest.fixture(scope="module")
def thousand():
    """1000 classes, D=64, one label a class: scikit-learn's default tol stops well short here."""
    return _standardized(1000, 64, 1)


@pytest.fixture(scope="module")
def optimum(thousand):
    """scikit-learn's own solve on float64 rows at tol 1e-12: the reference optimum."""
    from sklearn.linear_model import LogisticRegression

    x, y, xt, yt = thousand
    model = LogisticRegression(C=1.0, tol=1e-12, max_iter=20000).fit(x.astype(np.float64), y)
    head = backends.Head(model.coef_, model.intercept_, model.classes_)
    return head, backends.score(head, xt.astype(np.float64), yt)


@pytest.mark.parametrize("backend", ["numpy", "torch", "sklearn"])
def test_every_backend_reaches_the_float64_optimum(thousand, optimum, backend):
    """At scikit-learn's tol 1e-4 the fits of such a problem stop where rounding puts them (0.3 to
    1.1 points apart across backends at ImageNet's size); certified, all are the optimum's."""
    x, y, xt, yt = thousand
    head = backends.fit(backend, x, y, C=1.0, max_iter=5000)
    acc, loglik = backends.score(head, xt, yt)
    want_acc, want_loglik = optimum[1]
    assert head.converged and head.grad_norm < 1e-5
    assert abs(acc - want_acc) <= 0.001 and abs(loglik - want_loglik) <= 0.002, (acc, loglik, optimum[1])


def test_the_default_tol_stops_short_and_says_so(thousand, optimum):
    x, y, xt, yt = thousand
    head = backends.fit("sklearn", x, y, C=1.0, max_iter=1000, tol=1e-4)
    assert head.converged is False and head.grad_norm > 1e-5


def test_the_certificate_bounds_the_distance_to_the_optimum(thousand, optimum):
    """What `converged` claims: every training logit within LOGIT_BOUND of the optimum's."""
    x, y, _, _ = thousand
    head = backends.fit("numpy", x, y, C=1.0, max_iter=5000)
    best = optimum[0]
    gap = np.abs(x @ head.coef.T + head.intercept - (x @ best.coef.T + best.intercept)).max()
    assert head.converged and gap <= LOGIT_BOUND
    cert = certify(x, y, head.coef, head.intercept, C=1.0)
    assert cert.bound <= LOGIT_BOUND and cert.converged  # the same numbers, computed again


def test_the_basis_keeps_the_logits_and_the_penalty():
    """The change of variables is exact: same logits, same ||W||^2, fewer columns than D when
    there are fewer rows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 50)) @ np.diag(np.linspace(3, 0.01, 50))  # 30 rows, 50 correlated dims
    basis = Basis.of(x, C=2.0, classes=7)
    assert basis.v.shape == (50, 29)  # centred: rank 29
    w, b = rng.normal(size=(7, 29)), rng.normal(size=7)
    coef, intercept = basis.original(w, b)
    np.testing.assert_allclose(x @ coef.T + intercept, basis.rows(x) @ w.T + b, atol=1e-10)
    np.testing.assert_allclose((coef**2).sum(), (basis.penalty * (w**2).sum(0)).sum(), rtol=1e-10)
    back = basis.transformed(coef, intercept)
    np.testing.assert_allclose(back[0], w, atol=1e-9)
    np.testing.assert_allclose(back[1], b, atol=1e-9)


def test_a_warm_start_changes_the_time_not_the_answer():
    x, y, xt, yt = _standardized(200, 64, 3)
    first = np.concatenate([np.flatnonzero(y == c)[:2] for c in range(200)])
    warm_from = backends.fit("numpy", x[first], y[first], C=1.0, max_iter=5000)
    cold = backends.fit("numpy", x, y, C=1.0, max_iter=5000)
    warm = backends.fit("numpy", x, y, C=1.0, max_iter=5000, init=warm_from)
    assert cold.converged and warm.converged
    (a1, l1), (a2, l2) = backends.score(cold, xt, yt), backends.score(warm, xt, yt)
    assert abs(a1 - a2) <= 0.001 and abs(l1 - l2) <= 1e-3
    for backend in ("numpy", "torch"):  # started at a certified optimum, a fit has nothing left to do
        again = backends.fit(backend, x, y, C=1.0, max_iter=5000, init=cold)
        assert again.converged and again.n_iter == 0, backend


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory):
    """The seed's .npy files of a 1000-class problem, and the store imported from them."""
    from embed.from_npy import main as from_npy_main

    root = tmp_path_factory.mktemp("seed")
    data = realistic_embeddings(1000, 32, {"train": 3, "val": 2}, seed=1)
    for split, (x, y) in data.items():
        np.save(root / f"embeddings_e_{split}.npy", x)
        np.save(root / f"labels_{split}.npy", y)
    assert from_npy_main([str(root), "--encoder", "e", "--out", str(root / "s.zarr")]) == 0
    return root


def test_protocol_seed_is_the_seed_script_bit_for_bit_at_1000_classes(seed_files, tmp_path, caplog):
    """The seed's float32 standardization and scikit-learn fits, number for number; the default
    protocol's are the optimum's and differ from them here (the paths diverge)."""
    from bench.reference_probe import reference_curve

    store = seed_files / "s.zarr"
    args = [str(store), "--encoder", "e", "--per-class", "1-2", "--seeds", "0"]
    assert main([*args, "--protocol", "seed", "--out", str(tmp_path / "seed")]) == 0
    x, y = np.load(seed_files / "embeddings_e_train.npy"), np.load(seed_files / "labels_train.npy")
    tx, ty = np.load(seed_files / "embeddings_e_val.npy"), np.load(seed_files / "labels_val.npy")
    ref = reference_curve(x, y, tx, test_y=ty, seed=0, n_labels_end=2000)
    got = _csv(tmp_path / "seed" / "fewshot.csv")
    assert [float(r["test_acc"]) for r in got] == [r["test_acc"] for r in ref]
    assert [float(r["test_loglik"]) for r in got] == [r["test_loglik"] for r in ref]
    assert {r["converged"] for r in got} == {"0"}  # tol 1e-4 stops short on such a problem
    assert "stopped short of the optimum" in caplog.text
    assert main([*args, "--out", str(tmp_path / "converged")]) == 0
    best = _csv(tmp_path / "converged" / "fewshot.csv")
    assert {r["converged"] for r in best} == {"1"}
    assert max(abs(float(a["test_loglik"]) - float(b["test_loglik"])) for a, b in zip(best, got)) > 1e-3


def test_a_resume_with_the_other_protocol_is_refused(seed_files, tmp_path, caplog):
    store = seed_files / "s.zarr"
    args = [str(store), "--encoder", "e", "--per-class", "1", "--seeds", "0", "--out", str(tmp_path)]
    assert main([*args, "--protocol", "seed"]) == 0
    assert main(args) == 1
    assert "protocol: 'seed' != 'converged'" in caplog.text
    with pytest.raises(SystemExit) as e:  # the seed's solver is scikit-learn's, its tol 1e-4
        main([*args, "--protocol", "seed", "--backend", "numpy"])
    assert e.value.code == 2


def test_a_fit_cut_short_is_flagged_in_the_log_and_the_table(seed_files, tmp_path, caplog, capsys):
    from probe import table

    store = seed_files / "s.zarr"
    assert main([str(store), "--encoder", "e", "--per-class", "1", "--seeds", "0", "--max-iter", "3",
                 "--out", str(tmp_path)]) == 0
    assert {r["converged"] for r in _csv(tmp_path / "fewshot.csv")} == {"0"}
    assert "seed 0: 1 fits stopped short of the optimum (n=1 C=1)" in caplog.text
    assert table.main([str(tmp_path)]) == 0
    assert "not converged" in capsys.readouterr().out
