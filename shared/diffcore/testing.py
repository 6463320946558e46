"""Data distributions whose exact denoiser is known in closed form.

For an isotropic Gaussian mixture  p(x0) = sum_k w_k N(m_k, s_k^2 I)  and x_t = alpha x0 + sigma eps,
the noisy marginal is again a mixture,  p_t(x) = sum_k w_k N(alpha m_k, (alpha^2 s_k^2 + sigma^2) I),
and the exact denoiser (Tweedie / posterior mean) is

    E[x0 | x_t] = sum_k r_k(x_t) [m_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x_t - alpha m_k)],

with responsibilities r_k(x_t) = p(component k | x_t). A single Gaussian is the case K = 1. These
give samplers, guidance and losses tests that fail on a wrong formula, and the toy for the demo
and the sampler benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .schedules import Schedule, bcast


class GaussianMixture:
    """Isotropic Gaussian mixture in ``dim`` dimensions (float64 throughout)."""

    def __init__(self, weights: Sequence[float], means: Sequence[Sequence[float]] | Tensor,
                 stds: Sequence[float]):
        self.w = torch.as_tensor(weights, dtype=torch.float64)
        self.m = torch.as_tensor(means, dtype=torch.float64).reshape(len(self.w), -1)  # (K, d)
        self.s = torch.as_tensor(stds, dtype=torch.float64)  # (K,)
        if not (self.w.numel() == self.m.shape[0] == self.s.numel()) or (self.w <= 0).any():
            raise ValueError("need one positive weight, mean and std per component")
        self.w = self.w / self.w.sum()

    @classmethod
    def gaussian(cls, mean: Sequence[float], std: float) -> GaussianMixture:
        return cls([1.0], [list(mean)], [std])

    @property
    def dim(self) -> int:
        return self.m.shape[1]

    def mean(self) -> Tensor:
        return (self.w[:, None] * self.m).sum(0)

    def var(self) -> Tensor:
        """Per-dimension variance: E[s^2 + m^2] - E[m]^2."""
        second = (self.w[:, None] * (self.s[:, None] ** 2 + self.m**2)).sum(0)
        return second - self.mean() ** 2

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n samples (n, d) and their component labels (n,)."""
        k = torch.multinomial(self.w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.m[k] + self.s[k, None] * z, k

    def cdf_1d(self, x: Tensor) -> Tensor:
        """CDF of the first coordinate (for Kolmogorov-Smirnov tests)."""
        z = (x[..., None] - self.m[:, 0]) / self.s
        return (self.w * 0.5 * (1 + torch.erf(z / math.sqrt(2)))).sum(-1)

    def _posterior(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log responsibilities (B, K), marginal variances (B, K) and gains (B, K) at level (alpha, sigma)."""
        x = x.to(torch.float64).flatten(1)
        a, s = alpha.to(torch.float64).reshape(-1, 1), sigma.to(torch.float64).reshape(-1, 1)
        var = a**2 * self.s**2 + s**2  # (B, K)
        d2 = ((x[:, None, :] - a[:, :, None] * self.m) ** 2).sum(-1)  # (B, K)
        logp = torch.log(self.w) - 0.5 * d2 / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return logp - torch.logsumexp(logp, dim=1, keepdim=True), var, a * self.s**2 / var

    def x0_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Exact E[x0 | x_t = x] for (B,) alpha and sigma."""
        log_r, _, gain = self._posterior(x, alpha, sigma)
        xf = x.to(torch.float64).flatten(1)
        a = alpha.to(torch.float64).reshape(-1, 1, 1)
        comp = self.m + gain[..., None] * (xf[:, None, :] - a * self.m)  # (B, K, d)
        return (log_r.exp()[..., None] * comp).sum(1).reshape(x.shape).to(x.dtype)

    def denoiser(self, schedule: Schedule):
        """The exact denoiser ``D(x_t, t) -> E[x0 | x_t]`` under ``schedule``."""

        def D(x_t: Tensor, t: Tensor | float, **_) -> Tensor:
            t = torch.as_tensor(t, dtype=torch.float64).expand(x_t.shape[0])
            alpha, sigma = schedule.alpha_sigma(t)
            return self.x0_mean(x_t, alpha, sigma)

        return D

    def class_log_prob(self, schedule: Schedule, k: int):
        """Exact noisy classifier ``log p(component = k | x_t)`` (differentiable in x_t)."""

        def log_prob(x_t: Tensor, t: Tensor | float, **_) -> Tensor:
            t = torch.as_tensor(t, dtype=torch.float64).expand(x_t.shape[0])
            alpha, sigma = schedule.alpha_sigma(t)
            return self._posterior(x_t, alpha, sigma)[0][:, k]

        return log_prob

    def component(self, k: int) -> GaussianMixture:
        return GaussianMixture([1.0], self.m[k : k + 1], self.s[k : k + 1])

    def prior_sample(self, schedule: Schedule, n: int, t_max: float = 1.0,
                     generator: torch.Generator | None = None) -> Tensor:
        """An exact draw of x_{t_max}: forward-noised data (so tests start from the true marginal)."""
        x0, _ = self.sample(n, generator)
        alpha, sigma = schedule.alpha_sigma(torch.full((n,), t_max, dtype=torch.float64))
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        return bcast(alpha, x0) * x0 + bcast(sigma, x0) * eps
