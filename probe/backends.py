"""Multinomial L2 logistic regression on one backend: cuML on a GPU, scikit-learn on the CPU.

    probs, classes = fit_predict("sklearn", x_train, y_train, x_test, C=1.0, max_iter=1000)

Both minimise the same objective, C * sum(log loss) + ||W||^2 / 2 with an intercept, with
(L-)BFGS-type solvers, and return test probabilities [N_test, K] over `classes`.
"""

from __future__ import annotations

import logging

import numpy as np

from msnpipe.runtime import UserError

BACKENDS = ("auto", "cuml", "sklearn")
log = logging.getLogger("probe")


def cuml_available() -> bool:
    """cuML imports and a CUDA device is present."""
    try:
        import cuml  # noqa: F401
        import torch
    except Exception:  # cuML raises more than ImportError without a driver
        return False
    return torch.cuda.is_available()


def resolve(backend: str) -> str:
    """`auto` is cuML when it can run here, else scikit-learn; `cuml` without it is an error."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "cuml" if cuml_available() else "sklearn"
    if backend == "cuml" and not cuml_available():
        raise UserError("--backend cuml: cuML cannot run here (not installed, or no GPU); "
                           "use --backend sklearn or install RAPIDS (environment.yaml)")
    return backend


def fit_predict(backend: str, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, *, C: float,
                max_iter: int, fit_intercept: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Fit on (x [n, D], y [n]); return (test probabilities [N, K], classes [K])."""
    if backend == "sklearn":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=C, max_iter=max_iter, fit_intercept=fit_intercept)
        model.fit(x, y)
        return model.predict_proba(x_test), model.classes_
    if backend == "cuml":
        import cupy as cp
        from cuml.linear_model import LogisticRegression

        model = LogisticRegression(C=C, max_iter=max_iter, fit_intercept=fit_intercept, penalty="l2",
                                   output_type="numpy")
        model.fit(cp.asarray(x), cp.asarray(y))
        return np.asarray(model.predict_proba(cp.asarray(x_test))), np.asarray(model.classes_)
    raise ValueError(f"unknown backend {backend!r}")
