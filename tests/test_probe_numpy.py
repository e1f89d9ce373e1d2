"""probe --backend numpy against scikit-learn itself: its loss and gradient call for call, and,
at a given tol, on float64 rows its fits iteration for iteration (the certified fits, to the
optimum, are in test_probe_converged.py; the CLI curve in test_probe_torch.py)."""

import numpy as np
import pytest
from sklearn._loss.loss import HalfMultinomialLoss
from sklearn.linear_model import LogisticRegression
from sklearn.linear_model._linear_loss import LinearModelLoss

from bench.synthetic import realistic_embeddings
from probe import numpy_lr
from probe.backends import fit, predict_proba


@pytest.mark.parametrize("classes, dim", [(7, 12), (30, 5)])  # softmax scaled on either side
@pytest.mark.parametrize("intercept", [True, False])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 2e-5)])
def test_the_loss_and_gradient_are_scikit_learns(classes, dim, intercept, dtype, rtol, monkeypatch):
    monkeypatch.setattr(numpy_lr, "BLOCK_ROWS", 16)  # several blocks and a short last one
    rng = np.random.default_rng(0)
    n = 61
    x, y = (rng.normal(size=(n, dim)) * 2).astype(dtype), rng.integers(0, classes, n)
    coef = rng.normal(size=classes * (dim + intercept))
    ours = numpy_lr.MultinomialLoss(x, y, classes=classes, l2=0.07, intercept=intercept)
    ref = LinearModelLoss(base_loss=HalfMultinomialLoss(n_classes=classes), fit_intercept=intercept)
    for scale in (0.1, 3.0, 40.0):  # large logits: the max is subtracted before exp
        loss, grad = ours(coef * scale)
        ref_loss, ref_grad = ref.loss_gradient(coef * scale, x, y.astype(dtype), None, 0.07)
        np.testing.assert_allclose(loss, ref_loss, rtol=rtol)
        np.testing.assert_allclose(grad, ref_grad, rtol=rtol, atol=rtol * np.abs(ref_grad).max())


def _rows(classes: int, dim: int, per_class: int, seed: int):
    data = realistic_embeddings(classes, dim, {"train": per_class, "val": 20}, seed=seed)
    (x, y), (xt, yt) = data["train"], data["val"]
    mean, std = x.mean(0), x.std(0)
    return (x - mean) / std, y, (xt - mean) / std, yt


@pytest.mark.filterwarnings("ignore:The number of unique classes")
@pytest.mark.parametrize("C, intercept", [(1.0, True), (0.3, False)])
def test_on_float64_rows_every_fit_is_scikit_learns(C, intercept):
    """The same solver on the same objective in the same precision: the same iterations and
    the same probabilities, at the default tol where a solver stops is fragile."""
    for seed, (classes, dim, per_class) in enumerate([(40, 32, 1), (40, 32, 3), (12, 64, 5)]):
        x, y, xt, _ = (a.astype(np.float64) if a.dtype.kind == "f" else a
                       for a in _rows(classes, dim, per_class, seed))
        head = fit("numpy", x, y, C=C, max_iter=1000, tol=1e-4, fit_intercept=intercept)
        probs, labels, n_iter = predict_proba(head, xt), head.classes, head.n_iter
        ref = LogisticRegression(C=C, max_iter=1000, fit_intercept=intercept).fit(x, y)
        assert n_iter == ref.n_iter_[0] > 10
        assert labels.tolist() == ref.classes_.tolist()
        np.testing.assert_allclose(probs, ref.predict_proba(xt), atol=1e-6)


def test_on_float32_rows_both_round_alike():
    """float32 rows: both compute the products in float32 and round differently, so their
    default-tol answers differ, as scikit-learn's own float32 and float64 fits do."""
    x, y, xt, yt = _rows(200, 32, 2, seed=4)
    acc = lambda p, c: np.mean(c[p.argmax(1)] == yt)  # noqa: E731
    head = fit("numpy", x, y, C=1.0, max_iter=1000, tol=1e-4)
    probs, labels = predict_proba(head, xt), head.classes
    sk32 = LogisticRegression(max_iter=1000).fit(x, y)
    sk64 = LogisticRegression(max_iter=1000).fit(x.astype(np.float64), y)
    p32, p64 = sk32.predict_proba(xt), sk64.predict_proba(xt)
    spread = np.abs(p32 - p64).max()
    assert np.abs(probs - p32).max() <= 3 * spread
    assert abs(acc(probs, labels) - acc(p32, sk32.classes_)) <= 0.01


def test_two_classes_are_scikit_learns_binary_fit():
    x, y, xt, _ = _rows(2, 16, 20, seed=5)
    head = fit("numpy", x, y, C=0.5, max_iter=1000, tol=1e-4)
    ref = LogisticRegression(C=0.5, max_iter=1000).fit(x, y)
    np.testing.assert_allclose(predict_proba(head, xt), ref.predict_proba(xt), atol=1e-6)  # float32 softmax
    assert head.n_iter == ref.n_iter_[0]


def test_two_classes_certified_reach_scikit_learns_binary_optimum():
    """tol None: scikit-learn's binary fit, tightened from a warm start until its certificate holds."""
    x, y, xt, _ = _rows(2, 16, 20, seed=5)
    head = fit("numpy", x, y, C=0.5, max_iter=1000)
    ref = LogisticRegression(C=0.5, max_iter=10000, tol=1e-12).fit(x.astype(np.float64), y)
    assert head.converged and head.grad_norm < 1e-6
    np.testing.assert_allclose(predict_proba(head, xt), ref.predict_proba(xt), atol=1e-4)


@pytest.mark.parametrize("intercept", [True, False])
def test_the_refined_loss_is_the_float64_loss_at_float32_cost(intercept, monkeypatch):
    """RefinedLoss against MultinomialLoss on float64 rows: exact at its anchor, within float32's
    rounding of the change elsewhere (so ever closer as the change shrinks), and exact again for
    a step too far from the anchor for exp."""
    monkeypatch.setattr(numpy_lr, "BLOCK_ROWS", 16)
    rng = np.random.default_rng(3)
    n, dim, classes = 70, 9, 11
    x, y = rng.normal(size=(n, dim)) * 2, rng.integers(0, classes, n)
    l2 = rng.uniform(0.01, 0.1, dim)
    exact = numpy_lr.MultinomialLoss(x, y, classes=classes, l2=l2, intercept=intercept)
    refined = numpy_lr.RefinedLoss(x, y, classes=classes, l2=l2, intercept=intercept)
    theta0 = rng.normal(size=classes * (dim + intercept)) * 0.3
    f0, g0 = refined.anchor(theta0)
    ref_f0, ref_g0 = exact(theta0)
    np.testing.assert_allclose(f0, ref_f0, rtol=1e-13)
    np.testing.assert_allclose(g0, ref_g0, rtol=1e-12, atol=1e-14)
    errors = []
    for size in (1e-1, 1e-3, 1e-5):
        theta = theta0 + size * rng.normal(size=theta0.size)
        (f, g), (ref_f, ref_g) = refined(theta), exact(theta)
        assert refined.moved < numpy_lr.EXACT_LOGIT
        errors.append(max(abs(f - ref_f), float(np.abs(g - ref_g).max())))
        assert errors[-1] <= 1e-6 * size  # float32 rounding of the change, not of the logits
    assert errors[-1] < errors[0] / 100
    far = theta0 + 30.0 * rng.normal(size=theta0.size)
    f, g = refined(far)
    assert refined.moved > numpy_lr.EXACT_LOGIT
    np.testing.assert_allclose(g, exact(far)[1], rtol=1e-12, atol=1e-14)


def test_refined_loss_is_exact_where_a_rows_likely_classes_all_fall():
    """A trial (within EXACT_LOGIT) that drops the anchor's likely class by 19 logits leaves each
    row a total probability 1 + s of about 1e-7, below float32's rounding of s: evaluated
    exactly, not as log1p(-1) = -inf."""
    rng = np.random.default_rng(0)
    n, dim, classes = 40, 5, 4
    x, y = rng.normal(size=(n, dim)) * 0.01, rng.integers(0, classes, n)
    l2 = np.full(dim, 0.1)
    exact = numpy_lr.MultinomialLoss(x, y, classes=classes, l2=l2, intercept=True)
    refined = numpy_lr.RefinedLoss(x, y, classes=classes, l2=l2, intercept=True)
    theta0 = np.zeros((classes, dim + 1))
    theta0[0, dim] = 17.0  # class 0 holds all but 3 e-8 of every row's probability
    theta0 = theta0.ravel(order="F")
    refined.anchor(theta0)
    trial = theta0.reshape((classes, dim + 1), order="F").copy()
    trial[0, dim] -= 19.0
    trial = trial.ravel(order="F")
    with np.errstate(all="raise"):
        f, g = refined(trial)
    assert refined.moved < numpy_lr.EXACT_LOGIT
    ref_f, ref_g = exact(trial)
    np.testing.assert_allclose(f, ref_f, rtol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-10, atol=1e-14)


def test_a_weakly_penalized_fit_is_certified_though_f_stops_changing():
    """At C=100 the last steps change f by less than its rounding: judged by their slope there
    (approximate Armijo), the solve goes on to its certificate instead of stopping short (it
    stopped after 686 iterations before)."""
    from bench.synthetic import realistic_embeddings
    from probe.backends import fit

    x, y = realistic_embeddings(100, 64, {"train": 20}, seed=0)["train"]
    head = fit("numpy", x, y, C=100.0, max_iter=1000)
    assert head.converged and head.n_iter < 1000
