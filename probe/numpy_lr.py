"""Multinomial L2 logistic regression in numpy: `--backend numpy`.

    coef, intercept, n_iter = fit(x, y, C=1.0, max_iter=1000, tol=None)   # x [n, D], y [n] in 0..K-1
    # probe.backends.fit("numpy", ...) makes a Head of them, predicts and scores it

The objective is scikit-learn's (mean log-loss + ||W||^2 / (2 C n), unpenalized intercept).
`tol` None (the default): solved to the optimum in probe.precondition's basis by our L-BFGS
(_minimise), stopped by the certificate. Its loss is RefinedLoss: float64 values and gradients
at the cost of float32 products (mixed-precision refinement around an exact anchor); fits too
large for its anchor take float32 steps until their rounding floor, then float64 ones. At
1000 classes, D=384, 10,000 rows and two threads: 22.6 s a fit against 30.1 s for float32 then
float64 (its 142 iterations against 171).

`tol` a number: scikit-learn's `LogisticRegression(C).fit` with lbfgs step for step: its start
(zeros), scipy's L-BFGS-B with its options (maxls 50, gtol = tol, ftol = 64 eps), in the rows'
precision. Only the loss and gradient are computed differently (MultinomialLoss), in row
blocks that stay in cache:

    raw = [x, 1] @ W.T             [B, K]   one product per block, the intercept a column of W
    e   = exp(raw - max_k raw)     [B, K]   in place; lse = log(sum_k e) + max
    grad += e.T @ ([x, 1] / sum_k e)   [K, D+1]   the row scaling on the narrower side
    grad -= onehot(y).T @ [x, 1]   (fixed: computed once per fit; every term over n, the mean)

Measured on one core (1000 classes, D=64, 10,000 rows): 39 ms a call against scikit-learn's
110 ms, of which its Cython softmax loop took about 60; at D=1024 both take about 50 ms, the
same two products. On float64 rows the fits are scikit-learn's (the same iterations and
probabilities, tests/test_probe_numpy.py). Two classes use scikit-learn itself: its binary
parametrization is another objective, and a binary fit has one weight vector.
"""

from __future__ import annotations

from collections.abc import Callable

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
        return self.finish(coef, grad, lse)

    def finish(self, coef: np.ndarray, grad: np.ndarray, lse: float) -> tuple[float, np.ndarray]:
        """(value, gradient) at coef from x^T softmax / n [K, D(+1)] (F-ordered, completed in place)
        and the sum over rows of log sum_k exp(logits)."""
        n, dof = self.x.shape
        w = coef.reshape((self.classes, dof), order="F")  # [K, D(+1)] float64
        grad -= self.label_means  # the one-hot part of (softmax - onehot(y)) / n
        weights = w[:, : dof - self.intercept]  # the intercept is not penalized
        grad[:, : weights.shape[1]] += self.l2 * weights
        picked = np.einsum("kd,kd->", w, self.label_means)  # mean over rows of raw[y]
        loss = lse / n - picked + 0.5 * np.einsum("kd,kd,d->", weights, weights, self.l2)
        return float(loss), grad.ravel(order="F")


REFINED_ENTRIES = 10**8  # rows x classes up to which RefinedLoss keeps its anchor's [n, K]
# float32 probabilities (400 MB); larger fits take float32 steps, then float64 ones
REANCHOR_LOGIT = 4.0  # a step that moves some logit this far from the anchor's re-anchors
EXACT_LOGIT = 20.0  # a trial this far from the anchor is evaluated exactly (exp(step) in range)
VANISHED = 1e-2  # ... and one where a row's total probability 1 + s fell below this (its float32
# rounding would be 1e-5 of it and more: at 0, log1p(s) is -inf)


class RefinedLoss:
    """MultinomialLoss's float64 value and gradient at float32 products' cost (mixed-precision
    iterative refinement). At an anchor theta0 the probabilities P0 [n, K], each row's
    log-sum-exp lse0 [n] and x^T P0 / n are computed in float64 (`anchor`: exact); elsewhere,
    with delta = theta - theta0 and every [n, K] operation in float32,

        e = expm1(x @ delta^T)      [n, K]   the change of the logits, exponentiated
        s = sum_k P0 e              [n]      P = P0 (1 + e) / (1 + s)
        lse = lse0 + log1p(s),   P - P0 = P0 (e - s) / (1 + s)
        grad = x^T P0 / n + x^T (P - P0) / n - label means + penalty

    float32's rounding is relative to e and P - P0, which vanish near the optimum, where a plain
    float32 loss stalls at its rounding floor. `moved` is the largest logit change of the last
    call: the caller re-anchors when it grows (REANCHOR_LOGIT)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, *, classes: int, l2: np.ndarray, intercept: bool):
        self.exact = MultinomialLoss(np.asarray(x, np.float64), y, classes=classes, l2=l2,
                                     intercept=intercept)
        self.x32 = self.exact.x.astype(np.float32)  # [n, D(+1)]
        n = len(x)
        self.probs0, self.lse0 = np.empty((n, classes), np.float32), np.empty(n)  # [n, K], [n]
        self.theta0, self.xtp0, self.moved = None, None, 0.0

    def anchor(self, coef: np.ndarray) -> tuple[float, np.ndarray]:
        """The exact float64 value and gradient at coef, which becomes the anchor."""
        ex = self.exact
        n, dof = ex.x.shape
        wt = coef.reshape((ex.classes, dof), order="F").T  # [D(+1), K] float64
        xtp = np.zeros((ex.classes, dof))
        for start in range(0, n, ex.block):
            blk = slice(start, start + ex.block)
            p = ex.x[blk] @ wt  # [B, K] float64 logits, then probabilities
            top = p.max(1, keepdims=True)
            np.exp(np.subtract(p, top, out=p), out=p)
            total = p.sum(1, keepdims=True)
            p /= total
            self.lse0[blk] = np.log(total[:, 0]) + top[:, 0]
            self.probs0[blk] = p
            xtp += p.T @ ex.x[blk]
        self.theta0, self.xtp0, self.moved = coef.copy(), xtp / n, 0.0
        return ex.finish(coef, np.array(self.xtp0, order="F"), float(self.lse0.sum()))

    def __call__(self, coef: np.ndarray) -> tuple[float, np.ndarray]:
        ex = self.exact
        n, dof = ex.x.shape
        delta = (coef - self.theta0).reshape((ex.classes, dof), order="F").T.astype(np.float32)  # [D(+1), K]
        change = np.zeros((ex.classes, dof))  # x^T (P - P0), a float64 sum of float32 block products
        lse, moved = 0.0, 0.0
        for start in range(0, n, ex.block):
            blk = slice(start, start + ex.block)
            e = self.x32[blk] @ delta  # [B, K] float32: the logits' change
            moved = max(moved, float(e.max()), -float(e.min()))
            if moved > EXACT_LOGIT:  # far from the anchor (an early trial step): exp would overflow
                self.moved = moved
                return ex(coef)
            np.expm1(e, out=e)
            p0 = self.probs0[blk]
            s = np.einsum("bk,bk->b", p0, e)[:, None]  # [B, 1]
            if float(s.min()) < VANISHED - 1:  # a row's likely classes all fell: 1 + s is rounding
                self.moved = moved
                return ex(coef)
            lse += float(self.lse0[blk].sum() + np.log1p(s, dtype=np.float64).sum())
            e -= s
            e *= p0
            e /= 1 + s  # P - P0 [B, K]
            change += e.T @ self.x32[blk]
        self.moved = moved
        return ex.finish(coef, np.asfortranarray(self.xtp0 + change / n), lse)


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
        from probe.backends import sklearn_fit  # its binary parametrization is another objective

        return sklearn_fit(x, y, C=C, max_iter=max_iter, tol=tol, fit_intercept=fit_intercept, device="cpu",
                           dtype=None)
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
    """The preconditioned solve, stopped by the certificate (probe.precondition): with
    RefinedLoss (float64 answers at float32 products' cost) where its anchor fits REFINED_ENTRIES,
    else float32 products while they make progress, then float64 to the end."""
    from probe.precondition import Basis, holds, radius, terms

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

    def certified(grad: np.ndarray) -> bool:
        g = grad.reshape((classes, dof), order="F")  # [K, r(+1)], of the mean-scaled objective
        return bool(holds(*terms(g[:, :r], g[:, r] if fit_intercept else None, a=basis.a, cm=C * m,
                                 reach=reach, frequency=frequency)))

    theta, spent = theta.ravel(order="F"), 0
    l2 = basis.penalty / (C * m)
    if m * classes <= REFINED_ENTRIES:
        losses = [RefinedLoss(z, y, classes=classes, l2=l2, intercept=fit_intercept)]
    else:  # float32 gives up at its first step that a few halvings cannot make descend (its
        # rounding floor), where float64 takes over
        losses = [MultinomialLoss(z.astype(dt), y, classes=classes, l2=l2, intercept=fit_intercept)
                  for dt in (np.float32, np.float64)]
    for loss in losses:
        theta, nit, done = _minimise(loss, theta, max_iter - spent, certified=certified,
                                     backtracks=4 if loss is not losses[-1] else 30)
        spent += nit
        if done or spent >= max_iter:
            break
    w = theta.reshape((classes, dof), order="F")
    coef, intercept = basis.original(w[:, :r], w[:, r] if fit_intercept else None)
    return coef, intercept if fit_intercept else np.zeros(classes), spent


MEMORY = 10  # L-BFGS history pairs
ARMIJO = 1e-4
# Where f's change is lost in its rounding (below FTOL |f|, scikit-learn's ftol), a step is judged
# by its slope instead: for a quadratic, f(t) - f(0) = t (f'(0) + f'(t)) / 2, so Armijo with
# APPROX is f'(t) <= (2 APPROX - 1) f'(0) (Hager and Zhang's approximate Wolfe condition)
FTOL = 64 * np.finfo(np.float64).eps
APPROX = 0.1


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


def _minimise(loss: MultinomialLoss | RefinedLoss, theta: np.ndarray, max_iter: int, *,
              certified: Callable[[np.ndarray], bool], backtracks: int = 30) -> tuple[np.ndarray, int, bool]:
    """L-BFGS (backtracking Armijo steps, or approximate ones where f's change is rounding; on a
    preconditioned problem the first, 1, is nearly always taken) from theta until
    `certified(gradient)`, max_iter, or no step decreases the objective; (theta, iterations,
    certified). A RefinedLoss is re-anchored (exact) when its steps have moved a logit
    REANCHOR_LOGIT, when no step decreases it, and before certifying."""
    exact = getattr(loss, "anchor", loss)
    f, g = exact(theta)
    fresh = True  # f, g exact (not refined)
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    for it in range(max_iter):
        if certified(g):
            if fresh:
                return theta, it, True
            (f, g), fresh = exact(theta), True
            continue
        d = _direction(g, pairs)
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction: start the history again
            pairs, d = [], -g
            slope = float(g @ d)
        step = 1.0 if pairs else min(1.0, 1.0 / max(float(np.linalg.norm(g)), 1e-300))
        # refined values carry rounding of the order of 1e-7 of the logits' move from the anchor:
        # a step that a few halvings cannot make descend is tried again from an exact anchor
        for _ in range(backtracks if fresh else min(backtracks, 4)):
            trial = theta + step * d
            f_new, g_new = loss(trial)
            if f_new <= f + ARMIJO * step * slope or (
                    f_new <= f + FTOL * max(abs(f), 1.0) and float(g_new @ d) <= (2 * APPROX - 1) * slope):
                break
            step /= 2
        else:
            if not fresh:  # the refinement's rounding, perhaps: again from an exact anchor
                (f, g), fresh = exact(theta), True
                continue
            return theta, it, certified(g)  # no decrease: as far as this precision goes
        s, y = trial - theta, g_new - g
        sy = float(s @ y)
        if sy > 1e-10 * float(y @ y):
            pairs = [*pairs[-(MEMORY - 1):], (s, y, 1.0 / sy)]
        theta, f, g = trial, f_new, g_new
        fresh = exact is loss
        if getattr(loss, "moved", 0.0) > REANCHOR_LOGIT:
            (f, g), fresh = exact(theta), True
    return theta, max_iter, certified(g) and fresh
