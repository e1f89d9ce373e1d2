"""Multinomial L2 logistic regression: the one home of fitting a linear head and scoring it.

    head = fit("numpy", x, y, C=1.0, max_iter=1000)   # Head: coef [K, D], intercept [K], classes [K]
    heads = fit_batch(xs, ys, Cs, classes=classes, device="cuda")  # torch: P problems, one solve
    probs = predict_proba(head, x_test)               # [N, K], as scikit-learn's predict_proba
    acc, loglik = score(head, x_test, y_test)         # scikit-learn's accuracy and -log_loss
    positions = class_positions(head.classes, y_test) # [N] rows of head.classes, -1 where absent

Every backend minimises scikit-learn's objective, C * sum(log loss) + ||W||^2 / 2 with an
unpenalized intercept (or none): scikit-learn (lbfgs, the CPU), numpy (probe.numpy_lr, the
CPU), cuML (a GPU), torch (probe.torch_lr: a batched L-BFGS, CPU or GPU, that fits many
problems at once). `auto` is the measured fastest here: see `resolve`.

`tol=None` (the default) solves to the optimum: numpy and torch in the preconditioned basis
(probe.precondition) until its certificate holds, scikit-learn and cuML with their own solvers
at a tolerance tightened (from a warm start) until it holds. A number stops each solver at
max |gradient| of the mean-scaled objective <= tol, as scikit-learn's tol does. Either way
every Head carries its certificate (`grad_norm`, `converged`), computed here the same way for
every backend, so a fit that stopped short is named, never averaged in silently.

A Head always has one row per class: scikit-learn's binary fit (one weight vector w) is the
head [0, w], whose softmax is scikit-learn's [1 - sigmoid, sigmoid]. Its arrays are numpy
(scikit-learn, numpy, cuML) or torch tensors on the solve's device (torch); `logits`,
`predict_proba` and `score` take rows of the same kind. Logits are computed in the rows'
precision for numpy heads (float32 rows: float32 coefficients, as scikit-learn's
decision_function does), in the head's for torch ones.

Adding a backend: a `fit(x, codes, *, C, max_iter, tol, fit_intercept, device, dtype) ->
(coef, intercept, n_iter)` function (codes in 0..K-1, every class present; coef [K, D] or [1, D]
for two classes), and a Backend entry in BACKENDS.
"""

from __future__ import annotations

import importlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from msnpipe.runtime import UserError, cuda_available

TOL = 1e-4  # scikit-learn's default tol: the seed protocol's (the default is None: certified)
SOLVER_DTYPES = ("auto", "float32", "float64")
log = logging.getLogger("probe")


@dataclass(frozen=True)
class Backend:
    """One solver: where its fit is, whether its fits go one per worker process (a CPU solve
    that runs one fit at a time), and what it needs to run."""

    name: str
    title: str  # how messages name it
    fit: str  # "module:function"
    pooled: bool = False
    needs_cuda: bool = False
    needs: str | None = None  # a package it imports

    def unusable(self) -> str | None:
        """Why this backend cannot run here, or None."""
        if self.needs and not _imports(self.needs):
            return f"{self.needs} is not installed"
        if self.needs_cuda and not cuda_available():
            return "no GPU here"
        return None


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("sklearn", "scikit-learn", "probe.backends:sklearn_fit", pooled=True),
    Backend("numpy", "numpy", "probe.numpy_lr:fit", pooled=True),
    Backend("torch", "torch", "probe.torch_lr:fit"),
    Backend("cuml", "cuML", "probe.backends:_cuml_fit", needs_cuda=True, needs="cuml"),
)}
CHOICES = ("auto", *BACKENDS)
POOLED_BACKENDS = tuple(n for n, b in BACKENDS.items() if b.pooled)


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # cuML raises more than ImportError without a driver
        return False
    return True


def cuml_available() -> bool:
    """cuML imports and a CUDA device is present."""
    return BACKENDS["cuml"].unusable() is None


def resolve(backend: str) -> str:
    """`auto`: torch on a CUDA machine (one batched solve per label count; bench/results has the
    figures), numpy on the CPU (scikit-learn's solve: a fit measured 1.1-2.9x faster than
    scikit-learn's own with many classes or a small D, 0.97x at 1000 classes and D=1024, within
    noise). A backend that cannot run here is an error."""
    if backend == "auto":
        return "torch" if cuda_available() else "numpy"
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; one of {', '.join(CHOICES)}")
    if (why := BACKENDS[backend].unusable()) is not None:
        raise UserError(f"--backend {backend}: {BACKENDS[backend].title} cannot run here ({why}); use "
                        "--backend torch or sklearn"
                        + (", or install RAPIDS (environment.yaml)" if backend == "cuml" else ""))
    return backend


def one_blas_thread():
    """A context in which BLAS runs one thread: scikit-learn's lbfgs steps are small products,
    faster on one thread than shared (measured on 2 cores: a 1000-class few-shot fit 2.3x, a
    probe.active run 2.7x), and fits run side by side in processes instead."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def torch_dtype(requested: str = "auto"):
    """The torch backend's precision: float64 unless `requested` names another. Measured on an
    H200: float32 stops up to 0.025 in log-likelihood from a converged solve (the parity bar is
    0.01), while a float64 iteration cost about what a float32 one did (bench/results)."""
    import torch

    return torch.float64 if requested == "auto" else getattr(torch, requested)


def recorded_dtype(backend: str, requested: str = "auto") -> str | None:
    """The solver precision a result records: torch's always; for the other backends the one
    asked for, or None for `auto`, the rows' own (float32 from a store), as scikit-learn fits."""
    if backend == "torch":
        return str(torch_dtype(requested))
    return None if requested == "auto" else requested


@dataclass
class Head:
    """A fitted linear head: logits = x @ coef.T + intercept over `classes` [K] (the labels it
    was fit on, sorted); coef [K, D], intercept [K], numpy arrays or torch tensors."""

    coef: Any
    intercept: Any
    classes: np.ndarray
    n_iter: int | None = None
    grad_norm: float | None = None  # max |gradient| of the mean-scaled objective at the solution
    converged: bool | None = None  # whether probe.precondition's certificate holds

    def certified(self, x, codes: np.ndarray, *, C: float, fit_intercept: bool = True) -> Head:
        """This head with its certificate on the rows x [n, D] and class codes [n] it was fit on."""
        from probe.precondition import certify

        coef, intercept = self.coef, self.intercept
        if isinstance(coef, np.ndarray) != isinstance(x, np.ndarray):  # rows and head of one kind
            import torch

            if isinstance(x, np.ndarray):
                x = torch.as_tensor(x, device=coef.device)
            else:
                coef = torch.as_tensor(coef, device=x.device)
                intercept = torch.as_tensor(intercept, device=x.device)
        cert = certify(x, codes, coef, intercept if fit_intercept else None, C=C)
        self.grad_norm, self.converged = cert.grad_norm, cert.converged
        return self


def two_row_head(coef, intercept):
    """scikit-learn's binary (coef [1, D], intercept [1]) as the two-row head [0, w]; others as they are."""
    if coef.shape[0] != 1:
        return coef, intercept
    if isinstance(coef, np.ndarray):
        return (np.concatenate([np.zeros_like(coef), coef]),
                np.concatenate([np.zeros_like(intercept), intercept]))
    import torch

    return torch.cat([torch.zeros_like(coef), coef]), torch.cat([torch.zeros_like(intercept), intercept])


def sklearn_fit(x, codes, *, C, max_iter, tol, fit_intercept, device, dtype, init=None):
    """scikit-learn's own solve: at `tol`, or (None) from `init` at a tolerance divided by 100
    until the certificate holds (its lbfgs has no other stopping rule to give it)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if tol is not None:
        model = LogisticRegression(C=C, max_iter=max_iter, fit_intercept=fit_intercept, tol=tol).fit(x, codes)
        return model.coef_, np.atleast_1d(model.intercept_), int(model.n_iter_[0])
    x = np.asarray(x, np.float64)  # float32 products stall far short of the optimum
    model = LogisticRegression(C=C, max_iter=max_iter, fit_intercept=fit_intercept, tol=1e-4, warm_start=True)
    binary = int(codes.max()) == 1
    if init is not None and not binary:
        model.coef_, model.intercept_ = (np.asarray(init[0], np.float64).copy(),
                                         np.asarray(init[1], np.float64).copy())
    spent = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        while True:
            model.max_iter = max(1, max_iter - spent)
            model.fit(x, codes)
            spent += int(model.n_iter_[0])
            coef, intercept = two_row_head(model.coef_, np.atleast_1d(model.intercept_))
            head = Head(coef, intercept, np.arange(coef.shape[0])).certified(
                x, codes, C=C, fit_intercept=fit_intercept)
            if head.converged or spent >= max_iter or model.tol < 1e-15:
                return model.coef_, np.atleast_1d(model.intercept_), spent
            model.tol /= 100


def _cuml_fit(x, codes, *, C, max_iter, tol, fit_intercept, device, dtype, init=None):
    import cupy as cp
    from cuml.linear_model import LogisticRegression

    # cuML's quasi-Newton solver takes no warm start: `tol` None asks it for the optimum
    model = LogisticRegression(C=C, max_iter=max_iter, fit_intercept=fit_intercept, penalty="l2",
                               tol=1e-10 if tol is None else tol, output_type="numpy")
    model.fit(cp.asarray(x), cp.asarray(codes))
    n_iter = getattr(model, "n_iter_", None)
    intercept = np.atleast_1d(np.asarray(model.intercept_)) if fit_intercept else np.zeros(1)
    coef = np.asarray(model.coef_)
    return coef, np.broadcast_to(intercept, (coef.shape[0],)).copy(), (int(np.ravel(n_iter)[0])
                                                                       if n_iter is not None else None)


def fit(backend: str, x, y: np.ndarray, *, C: float, max_iter: int, fit_intercept: bool = True,
        device: str = "cpu", tol: float | None = None, solver_dtype: str = "auto",
        init: Head | None = None) -> Head:
    """The head fit on rows x [n, D] (numpy; torch also takes a tensor) with labels y [n], over
    the classes of y, with its certificate. `tol`: None solves to the optimum, a number stops
    at max |gradient| <= tol. `init`: a warm start (another fit's head over the same classes;
    it changes how long the solve takes, not where a certified one ends). `solver_dtype`: the
    precision to solve in (`auto`: float64 for torch, the rows' own for the others)."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; one of {', '.join(CHOICES)}")
    classes, codes = np.unique(np.asarray(y), return_inverse=True)
    if backend != "torch" and solver_dtype != "auto":
        x = x.astype(solver_dtype)
    module, function = BACKENDS[backend].fit.split(":")
    solve = getattr(importlib.import_module(module), function)
    dtype = torch_dtype(solver_dtype) if backend == "torch" else None
    start = None
    if init is not None and len(init.classes) == len(classes) and np.array_equal(init.classes, classes):
        start = tuple(np.asarray(a.cpu() if hasattr(a, "cpu") else a, np.float64)
                      for a in (init.coef, init.intercept))
    coef, intercept, n_iter = solve(x, codes, C=C, max_iter=max_iter, tol=tol, fit_intercept=fit_intercept,
                                    device=device, dtype=dtype, init=start)
    head = Head(*two_row_head(coef, intercept), classes, n_iter)
    return head.certified(x, codes, C=C, fit_intercept=fit_intercept)


def fit_batch(xs, ys, Cs, *, classes: np.ndarray, max_iter: int, tol: float | None = None,
              device: str = "cpu",
              dtype=None, init: list[Head] | None = None) -> list[Head]:
    """P problems in one torch solve: rows xs [P, n, D] (a tensor), class positions ys [P, n] in
    0..K-1 (every class present in each), one C each, optional warm starts; a Head for each
    (torch tensors), with its certificate."""
    import torch

    from probe import torch_lr

    start = None
    if init is not None:
        start = (torch.stack([h.coef for h in init]).to(xs), torch.stack([h.intercept for h in init]).to(xs))
    fit = torch_lr.fit_many(xs, ys, torch.as_tensor(Cs, dtype=torch.float64), num_classes=len(classes),
                            max_iter=max_iter, tol=tol, init=start)
    bias = fit.bias if fit.bias is not None else torch.zeros(fit.weights.shape[:2]).to(fit.weights)
    codes = ys.cpu().numpy()
    return [Head(fit.weights[i], bias[i], classes, int(fit.n_iter[i])).certified(xs[i], codes[i],
                                                                                  C=float(Cs[i]))
            for i in range(len(fit.weights))]


def convergence(head: Head | None) -> dict:
    """A result row's columns of how a fit stopped: grad_norm (3 digits) and converged (1, 0, or
    empty for no fit)."""
    if head is None or head.converged is None:
        return {"grad_norm": None, "converged": None}
    return {"grad_norm": f"{head.grad_norm:.3g}", "converged": int(head.converged)}


def logits(head: Head, x):
    """[N, K] for rows x [N, D]: numpy heads in the rows' precision (scikit-learn's
    decision_function), torch heads in theirs."""
    if isinstance(head.coef, np.ndarray):
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        return x.astype(dtype, copy=False) @ head.coef.T.astype(dtype) + head.intercept.astype(dtype)
    import torch

    return torch.as_tensor(x).to(head.coef) @ head.coef.T + head.intercept


def predict_proba(head: Head, x) -> np.ndarray:
    """scikit-learn's `predict_proba` [N, K] (float64, numpy) for rows x [N, D]."""
    z = logits(head, x)
    if isinstance(z, np.ndarray):
        from scipy.special import softmax

        return softmax(z.astype(np.float64), axis=1)
    import torch

    return torch.softmax(z.double(), -1).cpu().numpy()


def class_positions(classes: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The row of `classes` (sorted) holding each label of y [N], -1 for a label it lacks."""
    position = np.searchsorted(classes, y).clip(max=max(len(classes) - 1, 0))
    return np.where(classes[position] == y, position, -1) if len(classes) else np.full(len(y), -1)


SCORE_ROWS = 2048  # test rows scored at once (a block of logits in float64)


def score_logits(z, positions) -> tuple[float, float]:
    """(accuracy, log-likelihood) of logits z [N, K] (numpy, or torch on any device) against
    class positions [N] of the same kind, as scikit-learn's accuracy and -log_loss compute them
    (float64, probabilities clipped to [eps, 1 - eps]); position -1, a class the head never saw,
    is never right and scores eps."""
    eps = np.finfo(np.float64).eps
    if isinstance(z, np.ndarray):
        picked = np.empty(len(z))  # [N]: log p of each row's class, in float64 blocks that stay in cache
        for start in range(0, len(z), SCORE_ROWS):
            zb = z[start : start + SCORE_ROWS].astype(np.float64)  # [B, K]
            top = zb.max(1, keepdims=True)
            np.subtract(zb, top, out=zb)
            mine = np.take_along_axis(zb, positions[start : start + SCORE_ROWS].clip(0)[:, None], 1)[:, 0]
            picked[start : start + len(zb)] = mine - np.log(np.exp(zb, out=zb).sum(1))
        picked = np.where(positions >= 0, picked, math.log(eps))
        loglik = np.clip(picked, math.log(eps), math.log1p(-eps)).mean()
        return float(np.mean(z.argmax(1) == positions)), float(loglik)
    import torch

    z = z.double()
    picked = torch.log_softmax(z, -1).gather(-1, positions.clamp_min(0)[:, None])[:, 0]
    picked = torch.where(positions >= 0, picked, torch.full_like(picked, math.log(eps)))
    loglik = picked.clamp(math.log(eps), math.log1p(-eps)).mean()
    return float((z.argmax(-1) == positions).double().mean()), float(loglik)


def score(head: Head, x, y: np.ndarray) -> tuple[float, float]:
    """(accuracy, log-likelihood) of the head on rows x [N, D] with labels y [N] (numpy)."""
    positions = class_positions(head.classes, np.asarray(y))
    if not isinstance(head.coef, np.ndarray):
        import torch

        positions = torch.as_tensor(positions, device=head.coef.device)
    return score_logits(logits(head, x), positions)
