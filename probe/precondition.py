"""The basis a logistic-regression probe converges in, and the check that a fit has converged.

    basis = Basis.of(x, C=1.0, classes=1000)   # x [m, D]
    z = basis.rows(x)                            # [m, r] float64: centred, rotated, scaled rows
    coef, intercept = basis.original(w, b)       # a solution in z's coordinates -> x's
    w, b = basis.transformed(coef, intercept)    # a warm start, x's coordinates -> z's
    cert = certify(x, codes, coef, intercept, C=1.0)   # Certificate: grad_norm, bound, converged

The objective is scikit-learn's, C * sum_i logloss(W x_i + b, y_i) + ||W||^2 / 2. Few-shot rows
of SSL embeddings are strongly correlated, so its Hessian spans orders of magnitude and L-BFGS
stops (at scikit-learn's tol) far from the optimum, at a place that depends on rounding. The
change of variables that removes most of that:

    x_i - mean = sum_j s_j u_ij v_j        (the SVD of the centred rows; r = rank <= min(m, D))
    z_ij = a_j s_j u_ij,  a_j = 1 / sqrt(c s_j^2 + 1),  c = C / K
    W = W' diag(a) V^T,   b = b' - W mean

gives the same logits (z W'^T + b' = W x + b) and the same penalty, now diagonal:
||W||^2 = sum_j a_j^2 ||W'_j||^2 (V's columns are orthonormal). Column j of the data term's
Hessian is about C s_j^2 a_j^2 / K (the softmax's curvature at the start is 1/K), its penalty
a_j^2, so each column's curvature is about (c s_j^2 + 1) a_j^2 = 1: the problem is well
conditioned whatever the rows' spectrum, and the optimum is the same point. W has no part
outside the rows' span at the optimum (its gradient lies in it), so r columns suffice: fewer
than D when there are fewer rows than dimensions.

Converged means certified, not "the gradient fell below a tolerance tuned to small problems":
the objective is 1-strongly convex in W, so ||W - W*||_F <= ||grad_W||_F (the intercept at its
optimum for W), and every training logit is within ||grad_W||_F * max_i ||x_i - mean|| of the
optimum's; the intercept's gradient is the gap between each class's mean predicted
probability and its frequency. A fit converged when the logit bound is at most LOGIT_BOUND and
each class's mean probability is within LOGIT_BOUND (relative) of its frequency. Two certified
fits may still differ by a constant added to every class's intercept: the softmax ignores it
(the unpenalized intercept is free along it), so compare logits less their mean over classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOGIT_BOUND = 0.01  # the most a converged fit's training logits may be from the optimum's


@dataclass(frozen=True)
class Basis:
    """Centre [D], orthonormal directions V [D, r] and column scales a [r] of one fit's rows."""

    mean: np.ndarray
    v: np.ndarray
    a: np.ndarray

    @staticmethod
    def of(x: np.ndarray, *, C: float, classes: int, center: bool = True, scale: bool = True) -> Basis:
        """The basis that preconditions the fit of rows x [m, D] at this C and number of classes
        (`center`: the fit has an intercept to absorb the mean; `scale`: a = 1, a rotation only,
        for solvers whose penalty must stay isotropic)."""
        x = np.asarray(x, np.float64)
        mean = x.mean(0) if center else np.zeros(x.shape[1])
        xc = x - mean  # [m, D]
        m, d = xc.shape
        if m >= d:
            s2, v = np.linalg.eigh(xc.T @ xc)  # [D], [D, D], ascending
        else:  # fewer rows than dimensions: the m x m Gram matrix, V = xc^T U / s
            s2, u = np.linalg.eigh(xc @ xc.T)
            v = None
        keep = s2 > max(float(s2[-1]), 1.0) * max(m, d) * np.finfo(np.float64).eps
        s2 = s2[keep]
        if v is None:
            v = (xc.T @ u[:, keep]) / np.sqrt(s2)
        else:
            v = v[:, keep]
        a = 1.0 / np.sqrt(C / classes * s2 + 1.0) if scale else np.ones(len(s2))
        return Basis(mean, np.ascontiguousarray(v), a)

    @property
    def penalty(self) -> np.ndarray:
        """[r]: ||W||^2 = sum_j penalty_j ||W'_j||^2."""
        return self.a**2

    def rows(self, x: np.ndarray) -> np.ndarray:
        """[m, r] float64: x in the basis's coordinates."""
        return ((np.asarray(x, np.float64) - self.mean) @ self.v) * self.a

    def original(self, w: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(coef [K, D], intercept [K]) of W' [K, r], b' [K]."""
        coef = (w * self.a) @ self.v.T
        return coef, None if b is None else b - coef @ self.mean

    def transformed(self, coef: np.ndarray,
                    intercept: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """(W' [K, r], b' [K]) of coef [K, D], intercept [K] (the part of coef in the rows' span)."""
        w = (np.asarray(coef, np.float64) @ self.v) / self.a
        return w, None if intercept is None else np.asarray(intercept, np.float64) + coef @ self.mean


@dataclass(frozen=True)
class Certificate:
    """How close one fit is to the optimum of its objective."""

    grad_norm: float  # max |gradient| of the mean-scaled objective (what scikit-learn's tol bounds;
    # W's part with the rows centred)
    bound: float  # the most any training logit may be from the optimum's (W's part)
    frequency_gap: float  # the largest relative gap of a class's mean probability to its frequency
    converged: bool


def terms(grad_w, grad_b, *, a, cm, reach, frequency):
    """(logit bound, frequency gap) of a gradient of the mean-scaled objective, numpy or torch,
    batched over leading dims: grad_w [..., K, r] in a basis with column scales a [..., r] (None:
    x's own coordinates), grad_b [..., K] (None: no intercept), cm [...] C times the rows, reach
    [...] the rows' radius, frequency [..., K] each class's (at least 1 / rows). The bound is
    ||grad_W||_F of the summed objective (in x's coordinates: the basis's W' = W V diag(a)) times
    the radius; the gap is each class's mean probability's from its frequency, relative."""
    g = grad_w if a is None else grad_w / a[..., None, :]
    bound = cm * ((g * g).sum((-2, -1))) ** 0.5 * reach
    if grad_b is None:
        return bound, 0.0 * bound
    ratio = abs(grad_b) / frequency
    return bound, ratio.amax(-1) if hasattr(ratio, "amax") else ratio.max(-1)


def holds(bound, gap):
    """Whether the certificate holds (numpy or torch, elementwise)."""
    return (bound <= LOGIT_BOUND) & (gap <= LOGIT_BOUND)


def _softmax_residual(x, codes, coef, intercept):
    """softmax - onehot [m, K] in float64, numpy or torch alike."""
    z = x @ coef.T  # [m, K]
    if intercept is not None:
        z = z + intercept
    if isinstance(z, np.ndarray):
        from scipy.special import softmax

        p = softmax(z, axis=1)
        p[np.arange(len(codes)), codes] -= 1
    else:
        import torch

        p = z.softmax(-1)
        p[torch.arange(len(codes), device=p.device), codes] -= 1
    return p


def radius(x, *, center: bool) -> float:
    """max_i ||x_i - mean|| (mean 0 without `center`), numpy or torch rows."""
    xc = x - x.mean(0) if center else x
    return float(((xc**2).sum(1).max()) ** 0.5) if len(x) else 0.0


def certify(x, codes: np.ndarray, coef, intercept, *, C: float) -> Certificate:
    """The certificate of a softmax head coef [K, D], intercept [K] (None: no intercept) fit on
    x [m, D], codes [m]: numpy arrays, or torch tensors (computed where they are, in float64). A
    binary head [0, w] is scikit-learn's binary fit: only w is a variable, its objective's."""
    torch_rows = not isinstance(x, np.ndarray)
    if torch_rows:
        import torch

        x, coef = x.double(), coef.to(x.device).double()
        intercept = None if intercept is None else intercept.to(x.device).double()
        codes = torch.as_tensor(np.asarray(codes), device=x.device)
    else:
        x, coef = np.asarray(x, np.float64), np.asarray(coef, np.float64)
        intercept = None if intercept is None else np.asarray(intercept, np.float64)
    m = len(x)
    p = _softmax_residual(x, codes, coef, intercept)  # [m, K]
    # W's gradient with the rows centred (the intercept absorbs the mean): the gradient of
    # min_b F(W, b) once the intercept is at its optimum, which the bound is about
    grad_w = C * (p.T @ (x - x.mean(0) if intercept is not None else x)) + coef  # [K, D]
    grad_b = None if intercept is None else C * p.sum(0)
    binary = coef.shape[0] == 2 and not bool((coef[0] != 0).any()) and (
        intercept is None or float(intercept[0]) == 0.0)
    if binary:  # scikit-learn's binary parametrization: the row of class 1 is the variable
        grad_w, grad_b = grad_w[1:], None if grad_b is None else grad_b[1:]
    cm = C * m
    counts = np.bincount(np.asarray(codes.cpu() if torch_rows else codes), minlength=coef.shape[0])
    frequency = np.maximum(counts / m, 1 / m)[int(binary):]
    if torch_rows:
        frequency = torch.as_tensor(frequency, device=x.device)
    bound, gap = terms(grad_w / cm, None if grad_b is None else grad_b / cm, a=None, cm=cm,
                       reach=radius(x, center=intercept is not None), frequency=frequency)
    bound, gap = float(bound), float(gap)
    grad_norm = float(abs(grad_w).max()) / cm
    if grad_b is not None:
        grad_norm = max(grad_norm, float(abs(grad_b).max()) / cm)
    return Certificate(grad_norm, bound, gap, bool(holds(bound, gap)))
