"""Multinomial L2 logistic regression for many problems at once, in torch: `--backend torch`.

    fit = fit_many(x, y, Cs, num_classes=K)   # x [P, n, D], y [P, n] in 0..K-1, Cs [P]
    fit.weights [P, K, D], fit.bias [P, K], fit.n_iter [P], fit.converged [P]
    z = logits(fit, 0, x_test)                 # problem 0's logits; probe.backends scores them

Each problem p minimises scikit-learn's `LogisticRegression(C)` objective (lbfgs):

    mean_i log-loss(W x_i + b, y_i) + ||W||^2 / (2 C n)        (b unpenalized, optional)

with scikit-learn's binary parametrization when K == 2 (one weight vector; a 2-class softmax
would be penalized differently). The problems are independent, so their sum is minimised by
a batched L-BFGS: every problem keeps its own history (10 pairs), step and line search
(backtracking, Armijo), and stops on scikit-learn's criteria: max |gradient| <= tol, or a
relative decrease of f below 64 machine epsilons; or, solving to the optimum (tol None), when
probe.precondition's certificate holds (the last steps of a weakly penalized fit decrease f by
less than that long before), or no step decreases f. Problems that stop leave the batch, so the
last ones do not pay for the rest. One batch needs the n rows of every problem on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MEMORY = 10  # L-BFGS history pairs, as scipy's default
MAX_LINE_SEARCH = 50  # scikit-learn passes maxls=50
ARMIJO = 1e-4
FTOL = 64 * np.finfo(float).eps  # scikit-learn's ftol


@dataclass
class BatchFit:
    """Fitted problems: weights [P, K, D], bias [P, K] (None without intercept), iterations and
    whether each met the stopping criterion within max_iter."""

    weights: torch.Tensor
    bias: torch.Tensor | None
    n_iter: np.ndarray
    converged: np.ndarray


class _Problems:
    """The data of the problems still being solved, their objective and their stopping rule:
    max |gradient| <= tol, or (tol None) probe.precondition's certificate, from `scale`: each
    problem's column scales a [P, D], C * n [P], max row radius [P] and class frequencies [P, K]."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, reg: torch.Tensor, *, binary: bool, intercept: bool,
                 tol: float | None, scale: dict[str, torch.Tensor] | None = None):
        self.x, self.y, self.reg = x, y, reg  # [P, n, D], [P, n], [P] or [P, D] (a penalty per column)
        self.binary, self.intercept, self.tol, self.scale = binary, intercept, tol, scale or {}

    def keep(self, mask: torch.Tensor) -> None:
        self.x, self.y, self.reg = self.x[mask], self.y[mask], self.reg[mask]
        self.scale = {k: v[mask] for k, v in self.scale.items()}

    def met(self, g: torch.Tensor) -> torch.Tensor:
        """[P] bool: whether each problem's gradient g [P, N] meets its stopping rule."""
        if self.tol is not None:
            return g.abs().amax(-1) <= self.tol
        from probe.precondition import holds, terms

        d = self.x.shape[2]
        g = g.view(g.shape[0], -1, d + int(self.intercept))  # [P, K, D(+1)]
        return holds(*terms(g[..., :d], g[..., d] if self.intercept else None, a=self.scale["a"],
                            cm=self.scale["cn"], reach=self.scale["reach"],
                            frequency=self.scale.get("frequency")))

    def _penalty(self) -> torch.Tensor:
        return self.reg[:, None, None] if self.reg.ndim == 1 else self.reg[:, None, :]  # [P, 1, 1 or D]

    def logits(self, theta: torch.Tensor) -> torch.Tensor:
        """[P, n, K] (binary: class 0's logit is 0)."""
        d = self.x.shape[2]
        z = torch.bmm(self.x, theta[..., :d].transpose(1, 2))  # [P, n, Kp]
        if self.intercept:
            z = z + theta[..., d][:, None, :]
        return torch.cat([torch.zeros_like(z), z], -1) if self.binary else z

    def __call__(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f [P], gradient [P, Kp, D(+1)]) at parameters theta [P, Kp, D(+1)]."""
        d, n = self.x.shape[2], self.x.shape[1]
        w = theta[..., :d]
        z = self.logits(theta)
        lse = torch.logsumexp(z, -1)  # [P, n]
        picked = z.gather(-1, self.y[..., None])[..., 0]
        f = (lse - picked).mean(1) + 0.5 * (self._penalty() * w * w).sum((1, 2))
        g = torch.exp(z - lse[..., None])  # softmax [P, n, K]
        g.scatter_add_(-1, self.y[..., None], -torch.ones_like(picked[..., None]))
        g = (g[..., 1:] if self.binary else g) / n  # d mean-loss / d logits
        gw = torch.bmm(g.transpose(1, 2), self.x) + self._penalty() * w  # [P, Kp, D]
        return f, (torch.cat([gw, g.sum(1)[..., None]], -1) if self.intercept else gw)


def _direction(g: torch.Tensor, s: torch.Tensor, y: torch.Tensor, *, valid: torch.Tensor,
               newest: int) -> torch.Tensor:
    """-H g by the L-BFGS two-loop recursion, per problem; g [P, N], history s, y [P, m, N]
    in a ring whose newest slot is `newest`, `valid` [P, m] marking the pairs each problem kept."""
    m = s.shape[1]
    order = [(newest - j) % m for j in range(m)]  # newest first
    sy = (s * y).sum(-1)  # [P, m]
    rho = torch.where(valid, 1 / sy.clamp_min(1e-300), torch.zeros_like(sy))
    q, alpha = g.clone(), torch.zeros_like(sy)
    for k in order:
        alpha[:, k] = rho[:, k] * (s[:, k] * q).sum(-1)
        q -= alpha[:, k, None] * y[:, k]
    gamma = torch.ones_like(sy[:, 0])
    for k in reversed(order):  # the newest valid pair scales the initial Hessian
        yy = (y[:, k] * y[:, k]).sum(-1)
        gamma = torch.where(valid[:, k], sy[:, k] / yy.clamp_min(1e-300), gamma)
    r = gamma[:, None] * q
    for k in reversed(order):
        beta = rho[:, k] * (y[:, k] * r).sum(-1)
        r += s[:, k] * (alpha[:, k] - beta)[:, None]
    return -r


def _line_search(problems: _Problems, theta, f, *, gflat, d, step):
    """Backtracking Armijo search along d [P, N] from step [P]; (accepted [P], theta, f, g)."""
    gd = (gflat * d).sum(-1)
    accepted = torch.zeros_like(f, dtype=torch.bool)
    new_theta, new_f, new_g = theta.clone(), f.clone(), gflat.clone()
    for _ in range(MAX_LINE_SEARCH):
        trial = theta + (step[:, None] * d).view_as(theta)
        ft, gt = problems(trial)
        ok = ~accepted & (ft <= f + ARMIJO * step * gd)
        new_theta[ok], new_f[ok], new_g[ok] = trial[ok], ft[ok], gt.flatten(1)[ok]
        accepted |= ok
        if bool(accepted.all()):
            break
        step = torch.where(accepted, step, step / 2)
    return accepted, new_theta, new_f, new_g


def _lbfgs(problems: _Problems, theta: torch.Tensor, max_iter: int
           ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Solve every problem from theta [P, Kp, D(+1)]; (theta, n_iter [P], converged [P])."""
    p_total = theta.shape[0]
    out, n_iter, converged = theta.clone(), np.zeros(p_total, np.int64), np.zeros(p_total, bool)
    ids = torch.arange(p_total, device=theta.device)
    f, g = problems(theta)
    g = g.flatten(1)
    hist_s = theta.new_zeros(p_total, MEMORY, g.shape[1])
    hist_y, valid = torch.zeros_like(hist_s), torch.zeros(p_total, MEMORY, dtype=torch.bool, device=g.device)
    its, newest = torch.zeros(p_total, dtype=torch.long, device=g.device), MEMORY - 1
    done, ok = problems.met(g), torch.ones(p_total, dtype=torch.bool, device=g.device)
    for it in range(max_iter + 1):
        if bool(done.any()) or it == max_iter:
            stop = done if it < max_iter else torch.ones_like(done)
            idx = ids[stop]
            out[idx], converged[idx.cpu().numpy()] = theta[stop], (done & ok)[stop].cpu().numpy()
            n_iter[idx.cpu().numpy()] = its[stop].cpu().numpy()
            keep = ~stop
            if not bool(keep.any()):
                break
            problems.keep(keep)
            theta, f, g, ids, its = theta[keep], f[keep], g[keep], ids[keep], its[keep]
            hist_s, hist_y, valid = hist_s[keep], hist_y[keep], valid[keep]
        d = _direction(g, hist_s, hist_y, valid=valid, newest=newest)
        first = ~valid.any(-1)
        step = torch.where(first, (1 / g.norm(dim=-1)).clamp(max=1.0), torch.ones_like(f))
        accepted, new_theta, new_f, new_g = _line_search(problems, theta, f, gflat=g, d=d, step=step)
        s, y = (new_theta - theta).flatten(1), new_g - g
        newest = (newest + 1) % MEMORY
        keep_pair = accepted & ((s * y).sum(-1) > 1e-10 * (y * y).sum(-1))
        hist_s[:, newest], hist_y[:, newest], valid[:, newest] = s, y, keep_pair
        largest = torch.maximum(torch.maximum(f.abs(), new_f.abs()), torch.ones_like(f))
        decrease = (f - new_f) <= FTOL * largest
        theta, f, g, its = new_theta, new_f, new_g, its + accepted.long()
        met = problems.met(g)
        if problems.tol is None:  # certified: only the certificate, or no step that decreases f
            ok, done = met, ~accepted | met
        else:  # scikit-learn's criteria: |gradient| <= tol, or a relative decrease below FTOL
            ok, done = accepted | met, ~accepted | met | (accepted & decrease)
    return out, n_iter, converged


def fit_many(x: torch.Tensor, y: torch.Tensor, Cs: torch.Tensor, *, num_classes: int,
             fit_intercept: bool = True, max_iter: int = 1000, tol: float | None = 1e-4,
             init: tuple[torch.Tensor, torch.Tensor] | None = None) -> BatchFit:
    """Fit P problems: rows x [P, n, D] (float32 or float64, on any device), labels y [P, n]
    (0..K-1), inverse L2 weights Cs [P]. `tol` None: to the optimum, in the preconditioned basis
    (probe.precondition) from `init` (warm starts: weights [P, K, D], bias [P, K]) or zeros."""
    p, n, d = x.shape
    binary = num_classes == 2
    k = 1 if binary else num_classes
    if tol is None and not binary:
        return _certified_many(x, y, Cs, num_classes=num_classes, fit_intercept=fit_intercept,
                               max_iter=max_iter, init=init)
    reg = 1.0 / (Cs.to(x) * n)
    problems = _Problems(x, y.long(), reg, binary=binary, intercept=fit_intercept,
                         tol=1e-12 if tol is None else tol)
    theta = x.new_zeros(p, k, d + int(fit_intercept))
    theta, n_iter, converged = _lbfgs(problems, theta, max_iter)
    w, b = theta[..., :d], theta[..., d] if fit_intercept else None
    if binary:  # as K rows: class 0 at zero
        w = torch.cat([torch.zeros_like(w), w], 1)
        b = torch.cat([torch.zeros_like(b), b], 1) if b is not None else None
    return BatchFit(w, b, n_iter, converged)


def _bases(x: torch.Tensor, Cs: torch.Tensor, *, classes: int, center: bool):
    """probe.precondition.Basis of every problem at once: (mean [P, D], V [P, D, r], a [P, r]),
    r = min(n, D); directions beyond a problem's rank are zero columns with a = 1 (no data, so
    their weights stay 0)."""
    p, n, d = x.shape
    x = x.double()
    mean = x.mean(1) if center else x.new_zeros(p, d)
    xc = x - mean[:, None, :]
    if n >= d:
        s2, v = torch.linalg.eigh(xc.transpose(1, 2) @ xc)  # [P, D], [P, D, D]
    else:
        s2, u = torch.linalg.eigh(xc @ xc.transpose(1, 2))  # [P, n], [P, n, n]
        v = xc.transpose(1, 2) @ u / s2.clamp_min(1e-300).sqrt()[:, None, :]
    keep = s2 > s2[:, -1:].clamp_min(1.0) * max(n, d) * torch.finfo(torch.float64).eps
    v = v * keep[:, None, :]
    a = torch.where(keep, 1.0 / (Cs.to(x)[:, None] / classes * s2 + 1.0).sqrt(), torch.ones_like(s2))
    return mean, v, a


def _certified_many(x, y, Cs, *, num_classes, fit_intercept, max_iter, init) -> BatchFit:
    """The problems solved in their preconditioned bases until each one's certificate holds."""
    p, n, d = x.shape
    mean, v, a = _bases(x, Cs, classes=num_classes, center=fit_intercept)
    xc = x.double() - mean[:, None, :]
    z = ((xc @ v) * a[:, None, :]).to(x.dtype)  # [P, n, r]
    r = z.shape[2]
    counts = torch.zeros(p, num_classes, dtype=torch.float64, device=x.device)
    counts.scatter_add_(1, y.long(), torch.ones_like(y, dtype=torch.float64))
    scale = {"a": a.to(x.dtype), "cn": (Cs.to(x) * n), "reach": (xc**2).sum(-1).amax(-1).sqrt().to(x.dtype),
             "frequency": (counts / n).clamp_min(1 / n).to(x.dtype)}
    problems = _Problems(z, y.long(), (a**2 / (Cs.to(a)[:, None] * n)).to(x.dtype), binary=False,
                         intercept=fit_intercept, tol=None, scale=scale)
    theta = z.new_zeros(p, num_classes, r + int(fit_intercept))
    if init is not None:
        w0, b0 = (t.double() for t in init)
        theta[..., :r] = ((w0 @ v) / a[:, None, :]).to(theta)
        if fit_intercept:
            theta[..., r] = (b0 + (w0 @ mean[..., None])[..., 0]).to(theta)
    theta, n_iter, converged = _lbfgs(problems, theta, max_iter)
    w = (theta[..., :r].double() * a[:, None, :]) @ v.transpose(1, 2)  # [P, K, D]
    b = theta[..., r].double() - (w @ mean[..., None])[..., 0] if fit_intercept else None
    return BatchFit(w.to(x.dtype), None if b is None else b.to(x.dtype), n_iter, converged)

def logits(fit: BatchFit, i: int, x: torch.Tensor) -> torch.Tensor:
    """Problem i's logits [N, K] for rows x [N, D]."""
    z = x.to(fit.weights) @ fit.weights[i].T
    return z + fit.bias[i] if fit.bias is not None else z


def fit(x, codes: np.ndarray, *, C: float, max_iter: int, tol: float | None, fit_intercept: bool = True,
        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64, init=None):
    """One problem (probe.backends' fit): rows x [n, D] (numpy or a tensor) with class codes [n]
    in 0..K-1 -> (coef [K, D], intercept [K], iterations), tensors on `device`."""
    x = torch.as_tensor(x, device=device).to(dtype)
    y = torch.as_tensor(np.asarray(codes), device=x.device)
    start = None if init is None else tuple(torch.as_tensor(t, device=x.device)[None] for t in init)
    one = fit_many(x[None], y[None], torch.tensor([C], dtype=torch.float64), num_classes=int(codes.max()) + 1,
                   fit_intercept=fit_intercept, max_iter=max_iter, tol=tol, init=start)
    bias = one.bias[0] if one.bias is not None else torch.zeros(one.weights.shape[1]).to(one.weights)
    return one.weights[0], bias, int(one.n_iter[0])
