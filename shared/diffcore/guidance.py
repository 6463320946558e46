"""Guidance as denoiser wrappers: each takes a denoiser and returns a denoiser, so it composes with
every sampler (and with each other)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .parameterization import Denoiser
from .schedules import Schedule, bcast


def _cat_cond(a: Mapping[str, Any], b: Mapping[str, Any], batch: int) -> dict[str, Any] | None:
    """Stack two conditioning dicts along the batch, or None if they cannot be stacked.

    Tensors whose first dimension is the batch are concatenated; anything else must be the same
    object (or equal) in both branches.
    """
    if a.keys() != b.keys():
        return None
    out = {}
    for k in a:
        va, vb = a[k], b[k]
        if isinstance(va, Tensor) and isinstance(vb, Tensor) and va.ndim > 0 and va.shape[0] == batch:
            if vb.shape != va.shape:
                return None
            out[k] = torch.cat([va, vb])
        elif va is vb or (not isinstance(va, Tensor) and not isinstance(vb, Tensor) and va == vb):
            out[k] = va
        else:
            return None
    return out


def cfg(D: Denoiser, scale: float, uncond: Mapping[str, Any], *, rescale: float = 0.0,
        batched: bool = True) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans 2022): D_u + scale (D_c - D_u).

    Args:
        D: a conditional denoiser ``D(x_t, t, **cond)``.
        scale: guidance scale w; 1 gives the conditional denoiser, 0 the unconditional one.
        uncond: the keyword arguments that replace the conditioning for the second branch: the null
            condition the model was trained with under caption dropout, or a negative prompt.
            Keys not in ``uncond`` are shared by both branches.
        rescale: guidance rescale phi (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample
            Steps are Flawed", eq. 15-16): match the per-sample std of the guided x0 to the
            conditional one, blended with weight phi, to counter over-exposure at high scales.
        batched: evaluate both branches in one call of D with the batch doubled (when the
            conditioning can be stacked); otherwise two calls.

    Combining x0 predictions at fixed x_t is the same as combining eps predictions: eps is an
    affine function of x0 and the weights sum to one.
    """

    def guided(x_t: Tensor, t: Tensor, **cond) -> Tensor:
        cond_u = {**cond, **uncond}
        both = _cat_cond(cond, cond_u, x_t.shape[0]) if batched else None
        if both is not None:
            t2 = torch.cat([t, t]) if isinstance(t, Tensor) and t.ndim > 0 else t
            x0_c, x0_u = D(torch.cat([x_t, x_t]), t2, **both).chunk(2)
        else:
            x0_c, x0_u = D(x_t, t, **cond), D(x_t, t, **cond_u)
        x0 = x0_u + scale * (x0_c - x0_u)
        if rescale > 0:
            dims = tuple(range(1, x0.ndim))
            ratio = x0_c.std(dim=dims, keepdim=True) / x0.std(dim=dims, keepdim=True).clamp(min=1e-12)
            x0 = rescale * (x0 * ratio) + (1 - rescale) * x0
        return x0

    return guided


def classifier_grad(D: Denoiser, log_prob: Callable[..., Tensor], schedule: Schedule,
                    scale: float = 1.0) -> Denoiser:
    """Classifier guidance (Dhariwal & Nichol 2021; Song et al. 2021, eq. 14).

    ``log_prob(x_t, t, **cond) -> (B,)`` is any differentiable log p(y | x_t) (a noise-aware
    classifier, or a closed form). The guided score is score + scale * grad log p(y | x_t), i.e.
    x0_hat + scale * sigma^2 / alpha * grad; with scale 1 and an exact classifier this samples
    p(x | y) exactly.
    """

    def guided(x_t: Tensor, t: Tensor, **cond) -> Tensor:
        x0 = D(x_t, t, **cond)
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_prob(x, t, **cond).sum(), x)
        alpha, sigma = schedule.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
        return x0 + scale * bcast(sigma**2 / alpha, x_t) * grad

    return guided
