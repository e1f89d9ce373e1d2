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
relative decrease of f below 64 machine epsilons. Problems that stop leave the batch, so the
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
    """The data of the problems still being solved, and their objective."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, reg: torch.Tensor, *, binary: bool, intercept: bool):
        self.x, self.y, self.reg = x, y, reg  # [P, n, D], [P, n], [P]
        self.binary, self.intercept = binary, intercept

    def keep(self, mask: torch.Tensor) -> None:
        self.x, self.y, self.reg = self.x[mask], self.y[mask], self.reg[mask]

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
        f = (lse - picked).mean(1) + 0.5 * self.reg * (w * w).sum((1, 2))
        g = torch.exp(z - lse[..., None])  # softmax [P, n, K]
        g.scatter_add_(-1, self.y[..., None], -torch.ones_like(picked[..., None]))
        g = (g[..., 1:] if self.binary else g) / n  # d mean-loss / d logits
        gw = torch.bmm(g.transpose(1, 2), self.x) + self.reg[:, None, None] * w  # [P, Kp, D]
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


def _lbfgs(problems: _Problems, theta: torch.Tensor, max_iter: int, *, tol: float
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
    done, ok = g.abs().amax(-1) <= tol, torch.ones(p_total, dtype=torch.bool, device=g.device)
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
        ok = accepted | (g.abs().amax(-1) <= tol)
        done = ~accepted | (g.abs().amax(-1) <= tol) | (accepted & decrease)
    return out, n_iter, converged


def fit_many(x: torch.Tensor, y: torch.Tensor, Cs: torch.Tensor, *, num_classes: int,
             fit_intercept: bool = True, max_iter: int = 1000, tol: float = 1e-4) -> BatchFit:
    """Fit P problems: rows x [P, n, D] (float32 or float64, on any device), labels y [P, n]
    (0..K-1), inverse L2 weights Cs [P]."""
    p, n, d = x.shape
    binary = num_classes == 2
    k = 1 if binary else num_classes
    reg = 1.0 / (Cs.to(x) * n)
    problems = _Problems(x, y.long(), reg, binary=binary, intercept=fit_intercept)
    theta = x.new_zeros(p, k, d + int(fit_intercept))
    theta, n_iter, converged = _lbfgs(problems, theta, max_iter, tol=tol)
    w, b = theta[..., :d], theta[..., d] if fit_intercept else None
    if binary:  # as K rows: class 0 at zero
        w = torch.cat([torch.zeros_like(w), w], 1)
        b = torch.cat([torch.zeros_like(b), b], 1) if b is not None else None
    return BatchFit(w, b, n_iter, converged)


def logits(fit: BatchFit, i: int, x: torch.Tensor) -> torch.Tensor:
    """Problem i's logits [N, K] for rows x [N, D]."""
    z = x.to(fit.weights) @ fit.weights[i].T
    return z + fit.bias[i] if fit.bias is not None else z


def fit(x, codes: np.ndarray, *, C: float, max_iter: int, tol: float, fit_intercept: bool = True,
        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64):
    """One problem (probe.backends' fit): rows x [n, D] (numpy or a tensor) with class codes [n]
    in 0..K-1 -> (coef [K, D], intercept [K], iterations), tensors on `device`."""
    x = torch.as_tensor(x, device=device).to(dtype)
    y = torch.as_tensor(np.asarray(codes), device=x.device)
    one = fit_many(x[None], y[None], torch.tensor([C], dtype=torch.float64), num_classes=int(codes.max()) + 1,
                   fit_intercept=fit_intercept, max_iter=max_iter, tol=tol)
    bias = one.bias[0] if one.bias is not None else torch.zeros(one.weights.shape[1]).to(one.weights)
    return one.weights[0], bias, int(one.n_iter[0])
