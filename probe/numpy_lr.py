"""scikit-learn's multinomial lbfgs fit, with a faster loss: `--backend numpy`.

    coef, intercept, n_iter = fit(x, y, C=1.0, max_iter=1000, tol=1e-4)   # x [n, D], y [n] in 0..K-1
    # probe.backends.fit("numpy", ...) makes a Head of them, predicts and scores it

The solve is scikit-learn's `LogisticRegression(C).fit` with lbfgs, step for step: the same
objective (mean log-loss + ||W||^2 / (2 C n), unpenalized intercept), the same start (zeros),
scipy's L-BFGS-B with scikit-learn's options (maxls 50, gtol = tol, ftol = 64 eps), in the
rows' precision (float32 rows: float32 products, as scikit-learn computes them). Only the loss
and gradient are computed differently, in row blocks that stay in cache:

    raw = [x, 1] @ W.T             [B, K]   one product per block, the intercept a column of W
    e   = exp(raw - max_k raw)     [B, K]   in place; lse = log(sum_k e) + max
    grad += e.T @ ([x, 1] / sum_k e)   [K, D+1]   the row scaling on the narrower side
    grad -= onehot(y).T @ [x, 1]   (fixed: computed once per fit; every term over n, the mean)

Measured on one core (1000 classes, D=64, 10,000 rows): 39 ms a call against scikit-learn's
110 ms, of which its Cython softmax loop took about 60; at D=1024 both take about 50 ms, the
same two products. On float64 rows the fits are scikit-learn's
(the same iterations and probabilities, tests/test_probe_numpy.py); on float32 rows both round
differently, and their answers differ as scikit-learn's own float32 and float64 fits do.
Two classes use scikit-learn itself: its binary parametrization is another objective, and a
binary fit has one weight vector, which its loss already handles quickly.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

BLOCK_ROWS = 1024  # rows per block: measured fastest (or within 3%) from 128 to 4096 rows, on
# one core, at K 100-1000 and D 64-1024


class MultinomialLoss:
    """scikit-learn's `LinearModelLoss(HalfMultinomialLoss).loss_gradient` for fixed rows:
    called with coef [K * (D+1)] (classes contiguous, scikit-learn's F-order ravel), returns
    (mean loss + penalty, gradient in the same layout)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, *, classes: int, l2: float | np.ndarray,
                 intercept: bool):
        n, d = x.shape
        self.x = np.empty((n, d + intercept), x.dtype)  # [n, D(+1)]: rows with a column of ones
        self.x[:, :d] = x
        if intercept:
            self.x[:, d] = 1
        self.classes, self.intercept = classes, intercept
        self.l2 = np.broadcast_to(np.asarray(l2, np.float64), (d,))  # [D]: each column's penalty
        self.last: tuple[np.ndarray, np.ndarray] | None = None  # (coef, gradient) of the last call
        self.block = min(n, BLOCK_ROWS)
        self.logits = np.empty((self.block, classes), x.dtype)  # [B, K], reused by every call
        self.scaled = np.empty((self.block, d + intercept), x.dtype)  # [B, D(+1)]
        onehot = sparse.csr_matrix((np.full(n, 1 / n), (y, np.arange(n))), shape=(classes, n))  # [K, n]
        # [K, D(+1)]: the rows of each label summed, over n; F-ordered like the gradient
        self.label_means = np.asfortranarray(onehot @ self.x.astype(np.float64))

    def __call__(self, coef: np.ndarray) -> tuple[float, np.ndarray]:
        n, dof = self.x.shape
        w = coef.reshape((self.classes, dof), order="F")  # [K, D(+1)] float64
        wt = w.T.astype(self.x.dtype)  # [D(+1), K] in the rows' precision, as scikit-learn casts it
        grad = np.zeros((self.classes, dof), order="F")  # [K, D(+1)], F: raveled for scipy in place
        lse = 0.0  # sum over rows of log sum_k exp(raw)
        for start in range(0, n, self.block):
            xb = self.x[start : start + self.block]  # [B, D(+1)]
            raw, scaled = self.logits[: len(xb)], self.scaled[: len(xb)]
            np.matmul(xb, wt, out=raw)
            top = raw.max(1, keepdims=True)  # [B, 1]
            np.subtract(raw, top, out=raw)
            np.exp(raw, out=raw)
            total = raw.sum(1, keepdims=True)  # [B, 1], >= 1
            lse += float(np.sum(np.log(total, dtype=np.float64) + top))
            total *= n  # softmax / n = e / (total n), the mean's 1/n on the rows' scale
            if self.classes <= dof:  # scaling the narrower side
                grad += (raw / total).T @ xb
            else:
                grad += raw.T @ np.divide(xb, total, out=scaled)  # sum over rows of softmax x row / n
        grad -= self.label_means  # the one-hot part of (softmax - onehot(y)) / n
        weights = w[:, : dof - self.intercept]  # the intercept is not penalized
        grad[:, : weights.shape[1]] += self.l2 * weights
        picked = np.einsum("kd,kd->", w, self.label_means)  # mean over rows of raw[y]
        loss = lse / n - picked + 0.5 * np.einsum("kd,kd,d->", weights, weights, self.l2)
        self.last = (coef, grad)
        return float(loss), grad.ravel(order="F")


def _binary(x, y, *, C, max_iter, tol, fit_intercept):
    """scikit-learn's own binary fit (its parametrization is another objective)."""
    from probe.backends import _sklearn_fit

    return _sklearn_fit(x, y, C=C, max_iter=max_iter, tol=tol, fit_intercept=fit_intercept, device="cpu",
                        dtype=None)


def fit(x: np.ndarray, y: np.ndarray, *, C: float, max_iter: int, tol: float | None,
        fit_intercept: bool = True, device: str = "cpu", dtype=None,
        init: tuple[np.ndarray, np.ndarray | None] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(coef [K, D], intercept [K], iterations) of L2 logistic regression on x [n, D] with labels
    y [n] in 0..K-1, every one present; two classes: scikit-learn's binary ([1, D], [1]).

    `tol` None (the default protocol): solved in the preconditioned basis (probe.precondition)
    from `init` (a warm start: another fit's coef and intercept) or zeros, in float64, until the
    certificate holds (or max_iter). A number: scikit-learn's solve step for step (its start, its
    stopping rule max |gradient| <= tol, the rows' precision)."""
    classes = int(y.max()) + 1
    if classes < 3:
        return _binary(x, y, C=C, max_iter=max_iter, tol=tol, fit_intercept=fit_intercept)
    if tol is not None:
        return _sklearn_steps(x, y, C=C, max_iter=max_iter, tol=tol, fit_intercept=fit_intercept)
    return _certified(x, y, C=C, max_iter=max_iter, fit_intercept=fit_intercept, init=init, classes=classes)


def _sklearn_steps(x, y, *, C, max_iter, tol, fit_intercept):
    from scipy import optimize

    classes, dim = int(y.max()) + 1, x.shape[1]
    loss = MultinomialLoss(np.ascontiguousarray(x), y, classes=classes, l2=1.0 / (C * len(x)),
                           intercept=fit_intercept)
    dof = dim + fit_intercept
    result = optimize.minimize(loss, np.zeros(classes * dof), method="L-BFGS-B", jac=True,
                               options={"maxiter": max_iter, "maxls": 50, "gtol": tol,
                                        "ftol": 64 * np.finfo(float).eps})
    w = result.x.reshape((classes, dof), order="F")
    intercept = w[:, dim] if fit_intercept else np.zeros(classes)
    return w[:, :dim], intercept, min(int(result.nit), max_iter)


def _certified(x, y, *, C, max_iter, fit_intercept, init, classes):
    """The preconditioned solve, stopped by the certificate (probe.precondition): float32
    products while they make progress (half the time of float64's), then float64 to the end."""
    from probe.precondition import Basis, radius

    m = len(x)
    basis = Basis.of(x, C=C, classes=classes, center=fit_intercept)
    z = basis.rows(x)  # [m, r] float64
    r = z.shape[1]
    dof = r + fit_intercept
    theta = np.zeros((classes, dof))
    if init is not None:
        w0, b0 = basis.transformed(*init)
        theta[:, :r] = w0
        if fit_intercept:
            theta[:, r] = b0
    reach = radius(x, center=fit_intercept)
    frequency = np.maximum(np.bincount(y, minlength=classes) / m, 1 / m)
    theta, spent = theta.ravel(order="F"), 0
    for dtype in (np.float32, np.float64):
        loss = MultinomialLoss(z.astype(dtype), y, classes=classes, l2=basis.penalty / (C * m),
                               intercept=fit_intercept)
        # float32 gives up at its first step that a few halvings cannot make descend: its rounding
        # floor, where float64 takes over
        theta, nit, done = _minimise(loss, theta, max_iter - spent, C=C, m=m, reach=reach, a=basis.a,
                                     frequency=frequency if fit_intercept else None,
                                     backtracks=4 if dtype == np.float32 else 30)
        spent += nit
        if done or spent >= max_iter:
            break
    w = theta.reshape((classes, dof), order="F")
    coef, intercept = basis.original(w[:, :r], w[:, r] if fit_intercept else None)
    return coef, intercept if fit_intercept else np.zeros(classes), spent


MEMORY = 10  # L-BFGS history pairs
ARMIJO = 1e-4


def _direction(g: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    """-H g by the L-BFGS two-loop recursion over (s, y, 1 / s.y) pairs, oldest first."""
    q, alphas = g.copy(), []
    for s, y, rho in reversed(pairs):
        alpha = rho * float(s @ q)
        q -= alpha * y
        alphas.append(alpha)
    if pairs:
        s, y, rho = pairs[-1]
        q *= 1.0 / (rho * float(y @ y))  # s.y / y.y: the newest pair scales the initial Hessian
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        q += (alpha - rho * float(y @ q)) * s
    return -q


def _minimise(loss: MultinomialLoss, theta: np.ndarray, max_iter: int, *, C: float, m: int, reach: float,
              a: np.ndarray, frequency: np.ndarray | None,
              backtracks: int = 30) -> tuple[np.ndarray, int, bool]:
    """L-BFGS (backtracking Armijo steps; on a preconditioned problem the first, 1, is nearly
    always taken) from theta until the certificate holds, max_iter, or no step decreases the
    objective; (theta, iterations, certified)."""
    from probe.precondition import LOGIT_BOUND

    r = len(a)

    def certified(grad: np.ndarray) -> bool:
        g = grad.reshape((-1, r + (frequency is not None)), order="F")  # [K, r(+1)], mean-scaled
        bound = C * m * float(np.linalg.norm(g[:, :r] / a)) * reach
        gap = float((np.abs(g[:, r]) / frequency).max()) if frequency is not None else 0.0
        return bound <= LOGIT_BOUND and gap <= LOGIT_BOUND

    f, g = loss(theta)
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    for it in range(max_iter):
        if certified(g):
            return theta, it, True
        d = _direction(g, pairs)
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction: start the history again
            pairs, d = [], -g
            slope = float(g @ d)
        step = 1.0 if pairs else min(1.0, 1.0 / max(float(np.linalg.norm(g)), 1e-300))
        for _ in range(backtracks):
            trial = theta + step * d
            f_new, g_new = loss(trial)
            if f_new <= f + ARMIJO * step * slope:
                break
            step /= 2
        else:
            return theta, it, certified(g)  # no decrease: as far as this precision goes
        s, y = trial - theta, g_new - g
        sy = float(s @ y)
        if sy > 1e-10 * float(y @ y):
            pairs = [*pairs[-(MEMORY - 1):], (s, y, 1.0 / sy)]
        theta, f, g = trial, f_new, g_new
    return theta, max_iter, certified(g)
