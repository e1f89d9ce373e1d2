"""Multinomial L2 logistic regression on one backend: scikit-learn, numpy, cuML, or torch.

    fit = fit_predict("sklearn", x_train, y_train, x_test, C=1.0, max_iter=1000)
    fit.probs [N_test, K], fit.classes [K], fit.n_iter

All minimise scikit-learn's objective, C * sum(log loss) + ||W||^2 / 2 with an unpenalized
intercept (or none), and stop when max |gradient| of the mean-scaled objective <= tol:
scikit-learn (lbfgs, the CPU), numpy (probe.numpy_lr: scikit-learn's lbfgs solve with a
faster loss, the CPU), cuML (a GPU), torch (probe.torch_lr: a batched L-BFGS, CPU or GPU, that
fits many problems at once). `auto` is the measured fastest here: see `resolve`.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from msnpipe.runtime import UserError, cuda_available

BACKENDS = ("auto", "sklearn", "numpy", "torch", "cuml")
POOLED_BACKENDS = ("sklearn", "numpy")  # one fit at a time on the CPU: fits go to worker processes
TOL = 1e-4  # scikit-learn's default tol, for every backend
log = logging.getLogger("probe")


class Fit(NamedTuple):
    """Test probabilities [N, K] over `classes` [K], and the solver's iterations."""

    probs: np.ndarray
    classes: np.ndarray
    n_iter: int | None


def one_blas_thread():
    """A context in which BLAS runs one thread: scikit-learn's lbfgs steps are small products,
    faster on one thread than shared (measured on 2 cores: a 1000-class few-shot fit 2.3x, a
    probe.active run 2.7x), and fits run side by side in processes instead."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def cuml_available() -> bool:
    """cuML imports and a CUDA device is present."""
    try:
        import cuml  # noqa: F401
        import torch
    except Exception:  # cuML raises more than ImportError without a driver
        return False
    return torch.cuda.is_available()


def resolve(backend: str) -> str:
    """`auto`: torch on a CUDA machine (one batched solve per label count; bench/results has the
    figures), numpy on the CPU (scikit-learn's solve: a fit measured 1.1-2.9x faster than
    scikit-learn's own with many classes or a small D, 0.97x at 1000 classes and D=1024, within
    noise). `cuml` without cuML is an error."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "torch" if cuda_available() else "numpy"
    if backend == "cuml" and not cuml_available():
        raise UserError("--backend cuml: cuML cannot run here (not installed, or no GPU); "
                        "use --backend torch or sklearn, or install RAPIDS (environment.yaml)")
    return backend


SOLVER_DTYPES = ("auto", "float32", "float64")


def torch_dtype(device: str, requested: str = "auto"):
    """The torch backend's precision: float64 unless `requested` names another. Measured on an
    H200: float32 stops up to 0.025 in log-likelihood from a converged solve (the parity bar is
    0.01), while a float64 iteration cost about what a float32 one did (bench/results)."""
    import torch

    return torch.float64 if requested == "auto" else getattr(torch, requested)


def recorded_dtype(backend: str, device: str, requested: str = "auto") -> str | None:
    """The solver precision a result records: torch's always; for the other backends the one
    asked for, or None for `auto`, the rows' own (float32 from a store), as scikit-learn fits."""
    if backend == "torch":
        return str(torch_dtype(device, requested))
    return None if requested == "auto" else requested


def fit_predict(backend: str, x: np.ndarray, y: np.ndarray, *, x_test: np.ndarray, C: float,
                max_iter: int, fit_intercept: bool = True, device: str = "cpu", tol: float = TOL,
                solver_dtype: str = "auto") -> Fit:
    """Fit on (x [n, D], y [n]); return test probabilities, classes and iterations. `solver_dtype`:
    the precision to solve in (`auto`: float64 for torch, the rows' own for the others)."""
    if backend != "torch" and solver_dtype != "auto":
        x, x_test = x.astype(solver_dtype), x_test.astype(solver_dtype)
    if backend == "sklearn":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=C, max_iter=max_iter, fit_intercept=fit_intercept, tol=tol)
        model.fit(x, y)
        return Fit(model.predict_proba(x_test), model.classes_, int(model.n_iter_[0]))
    if backend == "numpy":
        from probe import numpy_lr

        return Fit(*numpy_lr.fit_predict(x, y, x_test, C=C, max_iter=max_iter, tol=tol,
                                         fit_intercept=fit_intercept))
    if backend == "torch":
        from probe import torch_lr

        probs, classes, n_iter = torch_lr.fit_predict(x, y, x_test, C=C, max_iter=max_iter, tol=tol,
                                                      fit_intercept=fit_intercept, device=device,
                                                      dtype=torch_dtype(device, solver_dtype))
        return Fit(probs, classes, n_iter)
    if backend == "cuml":
        import cupy as cp
        from cuml.linear_model import LogisticRegression

        model = LogisticRegression(C=C, max_iter=max_iter, fit_intercept=fit_intercept, penalty="l2",
                                   tol=tol, output_type="numpy")
        model.fit(cp.asarray(x), cp.asarray(y))
        n_iter = getattr(model, "n_iter_", None)
        return Fit(np.asarray(model.predict_proba(cp.asarray(x_test))), np.asarray(model.classes_),
                   int(np.ravel(n_iter)[0]) if n_iter is not None else None)
    raise UserError(f"unknown backend {backend!r}")
