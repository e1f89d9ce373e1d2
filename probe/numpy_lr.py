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

    def __init__(self, x: np.ndarray, y: np.ndarray, *, classes: int, l2: float, intercept: bool):
        n, d = x.shape
        self.x = np.empty((n, d + intercept), x.dtype)  # [n, D(+1)]: rows with a column of ones
        self.x[:, :d] = x
        if intercept:
            self.x[:, d] = 1
        self.classes, self.l2, self.intercept = classes, l2, intercept
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
        loss = lse / n - picked + 0.5 * self.l2 * np.einsum("kd,kd->", weights, weights)
        return float(loss), grad.ravel(order="F")


def fit(x: np.ndarray, y: np.ndarray, *, C: float, max_iter: int, tol: float,
        fit_intercept: bool = True, device: str = "cpu", dtype=None) -> tuple[np.ndarray, np.ndarray, int]:
    """scikit-learn's (coef_, intercept_, n_iter_) of `LogisticRegression(C)` fit on x [n, D] with
    labels y [n] in 0..K-1, every one present: coef [K, D] and intercept [K], or [1, D] and [1]
    for two classes (scikit-learn's own binary fit). On the CPU, in the rows' precision
    (`device` and `dtype` are probe.backends' common arguments)."""
    classes, dim = int(y.max()) + 1, x.shape[1]
    if classes < 3:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=C, max_iter=max_iter, fit_intercept=fit_intercept, tol=tol).fit(x, y)
        return model.coef_, np.atleast_1d(model.intercept_), int(model.n_iter_[0])
    from scipy import optimize

    loss = MultinomialLoss(np.ascontiguousarray(x), y, classes=classes, l2=1.0 / (C * len(x)),
                           intercept=fit_intercept)
    dof = dim + fit_intercept
    result = optimize.minimize(loss, np.zeros(classes * dof), method="L-BFGS-B", jac=True,
                               options={"maxiter": max_iter, "maxls": 50, "gtol": tol,
                                        "ftol": 64 * np.finfo(float).eps})
    w = result.x.reshape((classes, dof), order="F")
    intercept = w[:, dim] if fit_intercept else np.zeros(classes)
    return w[:, :dim], intercept, min(int(result.nit), max_iter)
