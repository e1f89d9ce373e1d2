"""probe.backends: scikit-learn, numpy and torch against an independent scipy fit of the same
objective; cuML against scikit-learn on a GPU."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import log_softmax

from msnpipe.runtime import UserError
from probe.backends import cuda_available, cuml_available, fit, predict_proba, resolve
from tests.conftest import gaussian_mixture


def scipy_fit(x, y, C, fit_intercept=True):
    """argmin C * sum(-log p(y|x)) + ||W||^2 / 2 (intercept not penalised), with L-BFGS."""
    k, d = y.max() + 1, x.shape[1]
    onehot = np.eye(k)[y]

    def objective(theta):
        w, b = theta[: k * d].reshape(d, k), (theta[k * d :] if fit_intercept else np.zeros(k))
        logp = log_softmax(x @ w + b, axis=1)
        p = np.exp(logp)
        loss = -C * (onehot * logp).sum() + 0.5 * (w**2).sum()
        g = C * (p - onehot)
        grad_w = x.T @ g + w
        return loss, np.concatenate([grad_w.ravel(), g.sum(0)] if fit_intercept else [grad_w.ravel()])

    theta0 = np.zeros(k * d + (k if fit_intercept else 0))
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-9})
    w, b = res.x[: k * d].reshape(d, k), (res.x[k * d :] if fit_intercept else np.zeros(k))
    return lambda xt: np.exp(log_softmax(xt @ w + b, axis=1))


@pytest.mark.parametrize("backend", ["sklearn", "numpy", "torch"])
@pytest.mark.parametrize("C, fit_intercept", [(1.0, True), (0.1, True), (4.0, False)])
def test_backends_solve_the_stated_objective(backend, C, fit_intercept):
    x, y = gaussian_mixture(6, 5, 8, seed=1)
    xt, _ = gaussian_mixture(20, 5, 8, seed=2)
    head = fit(backend, x, y, C=C, max_iter=5000, fit_intercept=fit_intercept)
    probs = predict_proba(head, xt if backend != "torch" else torch.tensor(xt))
    assert head.classes.tolist() == [0, 1, 2, 3, 4] and head.n_iter > 5
    np.testing.assert_allclose(probs, scipy_fit(x, y, C, fit_intercept)(xt), atol=1e-2)
    # the bar separates objectives: half the C, or the other intercept choice, is far off
    assert np.abs(probs - scipy_fit(x, y, C / 2, fit_intercept)(xt)).max() > 0.03
    assert np.abs(probs - scipy_fit(x, y, C, not fit_intercept)(xt)).max() > 0.03


def test_backend_resolution():
    assert resolve("sklearn") == "sklearn" and resolve("torch") == "torch" and resolve("numpy") == "numpy"
    assert resolve("auto") == ("torch" if cuda_available() else "numpy")
    with pytest.raises(UserError, match="unknown backend"):
        resolve("jax")
    if not cuml_available():
        with pytest.raises(UserError, match="cuML cannot run here"):
            resolve("cuml")


@pytest.mark.gpu
def test_cuml_agrees_with_sklearn():
    pytest.importorskip("cuml")
    x, y = gaussian_mixture(10, 20, 64, seed=3)
    xt, yt = gaussian_mixture(30, 20, 64, seed=3)
    p1 = predict_proba(fit("sklearn", x, y, C=1.0, max_iter=1000), xt)
    p2 = predict_proba(fit("cuml", x.astype(np.float32), y, C=1.0, max_iter=1000), xt.astype(np.float32))
    assert abs((p1.argmax(1) == yt).mean() - (p2.argmax(1) == yt).mean()) <= 0.005
    np.testing.assert_allclose(p1, p2, atol=0.02)
