"""Exact denoisers and reference quantities for testing masked diffusion.

For a factorised categorical data distribution, p(x0) = prod_l Cat(x0^l; pi_l), the positions are
independent, so the exact posterior of a masked position given any z_t is pi_l itself: the exact
x0 logits are log pi_l whatever the context and the time. Samplers must then reproduce pi, and
the NELBO must equal the data entropy (see ``diffcore.discrete.losses``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_pi(pi: Tensor) -> Tensor:
    pi = torch.as_tensor(pi, dtype=torch.float64)
    if pi.ndim != 2 or bool((pi < 0).any()) or not torch.allclose(pi.sum(-1), torch.ones(1, dtype=pi.dtype)):
        raise ValueError("pi must be (L, V) with non-negative rows summing to 1")
    return pi


class FactorizedDenoiser:
    """``logits_fn(z_t, t)`` returning the exact x0 logits log pi_l (B, L, V) of a factorised
    distribution; ``calls`` counts evaluations, to check a sampler's reported cost."""

    def __init__(self, pi: Tensor, dtype: torch.dtype = torch.float32):
        self.pi = _check_pi(pi)
        self.logits = torch.log(self.pi).to(dtype)  # log 0 = -inf for the mask column
        self.calls = 0

    def __call__(self, z_t: Tensor, t: Tensor) -> Tensor:
        if z_t.shape[1] != self.logits.shape[0]:
            raise ValueError(f"expected length {self.logits.shape[0]}, got {z_t.shape[1]}")
        self.calls += 1
        return self.logits.to(z_t.device).expand(z_t.shape[0], -1, -1)


def factorized_logits_fn(pi: Tensor, dtype: torch.dtype = torch.float32) -> FactorizedDenoiser:
    """The exact denoiser of the factorised distribution with per-position probabilities pi (L, V);
    the mask id's column of pi must be 0."""
    return FactorizedDenoiser(pi, dtype)


def factorized_entropy(pi: Tensor) -> Tensor:
    """Per-position entropy H(pi_l) in nats, shape (L,)."""
    pi = _check_pi(pi)
    return -torch.where(pi > 0, pi * torch.log(pi), torch.zeros_like(pi)).sum(-1)


def sample_factorized(pi: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n independent sequences x0 ~ prod_l Cat(pi_l), shape (n, L), int64."""
    pi = _check_pi(pi)
    return torch.multinomial(pi, n, replacement=True, generator=generator).T.contiguous()
