"""Denoising score matching losses, their weightings, and training-time samplers for t.

Every weighting is stated as a weight W(logsnr) on the x0 error ||x0_hat - x0||^2 (the framing of
Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting"):

    "snr"       W = SNR                 the plain eps-MSE of Ho et al. 2020 (DDPM's L_simple)
    "min_snr"   W = min(SNR, gamma)     Min-SNR-gamma
    "v"         W = SNR + 1             the plain v-MSE of Salimans & Ho 2022 (VP)
    "x0"        W = 1                   the plain x0-MSE
    "trunc_snr" W = max(SNR, 1)         truncated SNR (Salimans & Ho 2022)
    "clip_snr"  W = clamp(SNR, 1, gamma) Min-SNR-gamma with truncated SNR's floor: the cap at low noise, and at
                                        high noise (SNR < 1, where a sample's coarse layout is decided) the x0
                                        weight of the plain v / x0 losses instead of Min-SNR's vanishing SNR

The error is measured in the network's own prediction space and rescaled so the squared error
carries exactly W (the rescale is ``x0_error_scale``); with ``weighting=None`` it is the plain loss
in the prediction space. For L1 the same factor enters unsquared, so L1 carries sqrt(W).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from .parameterization import NoiseInput, Prediction, from_x0, noise_input, x0_error_scale
from .schedules import Schedule, bcast

Weighting = Literal["snr", "min_snr", "v", "x0", "trunc_snr", "clip_snr"]
TimeSampling = Literal["uniform", "stratified", "antithetic"]


def sample_t(batch: int, method: TimeSampling = "stratified", *, t_min: float = 1e-5, t_max: float = 1.0,
             generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
    """Training times in [t_min, t_max], shape (B,), float32.

    "uniform": i.i.d. U(0, 1). "stratified": the low-discrepancy sampler of Kingma et al. 2021
    (VDM): one uniform offset u, t_i = (u + i / B) mod 1, so each batch covers [0, 1] evenly and the
    loss estimate has lower variance. "antithetic": pairs (u, 1 - u). The default t_min > 0 keeps
    sigma(t) > 0, where an eps target is defined.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    if method == "uniform":
        u = torch.rand(batch, generator=generator, device=device)
    elif method == "stratified":
        u0 = torch.rand((), generator=generator, device=device)
        u = torch.remainder(u0 + torch.arange(batch, device=device) / batch, 1.0)
    elif method == "antithetic":
        half = torch.rand((batch + 1) // 2, generator=generator, device=device)
        u = torch.cat([half, 1 - half])[:batch]
    else:
        raise ValueError(f"unknown time sampling {method!r}; choose uniform, stratified or antithetic")
    return t_min + (t_max - t_min) * u


def x0_weight(weighting: Weighting, logsnr: Tensor, gamma: float = 5.0) -> Tensor:
    """W(logsnr): the weight on the x0 MSE that a named weighting stands for (see module doc)."""
    snr = torch.exp(logsnr)
    if weighting == "snr":
        return snr
    if weighting == "min_snr":
        return snr.clamp(max=gamma)
    if weighting == "v":
        return snr + 1
    if weighting == "x0":
        return torch.ones_like(snr)
    if weighting == "trunc_snr":
        return snr.clamp(min=1.0)
    if weighting == "clip_snr":
        return snr.clamp(min=1.0, max=max(gamma, 1.0))
    raise ValueError(f"unknown weighting {weighting!r}; choose snr, min_snr, v, x0, trunc_snr or clip_snr")


def dsm_loss(net: Callable[..., Tensor], x0: Tensor, schedule: Schedule, *, prediction: Prediction = "eps",
             weighting: Weighting | None = None, gamma: float = 5.0, norm: Literal["l2", "l1"] = "l2",
             t: Tensor | None = None, noise: Tensor | None = None, time_sampling: TimeSampling = "stratified",
             noise_input_kind: NoiseInput = "t", mask: Tensor | None = None,
             generator: torch.Generator | None = None, reduce: bool = True, **cond) -> Tensor:
    """Denoising score matching loss for ``net(x_t, c_noise, **cond) -> prediction``.

    Args:
        x0: clean data (B, ...). t: times (B,) in [0, 1], sampled with ``time_sampling`` if None.
        noise: the eps to add, standard normal if None.
        weighting: None for the plain loss on ``prediction``; otherwise the x0-space weighting W.
        norm: squared error ("l2") or absolute error ("l1").
        mask: optional (B, ...) 0/1 tensor broadcastable to x0; padded positions get no loss.
        reduce: mean over the batch if True, else the per-example loss (B,).
    """
    b = x0.shape[0]
    if t is None:
        t = sample_t(b, time_sampling, generator=generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    t64 = t.to(torch.float64)
    alpha, sigma = schedule.alpha_sigma(t64)
    x_t = bcast(alpha, x0) * x0 + bcast(sigma, x0) * noise
    pred = net(x_t, noise_input(schedule, t64, noise_input_kind).to(x0.dtype), **cond)
    target = from_x0(x0, prediction, x_t, alpha.to(x0.dtype), sigma.to(x0.dtype))
    if prediction == "eps":
        target = noise  # identical in exact arithmetic, exact in floating point
    err = (pred - target).abs() if norm == "l1" else (pred - target) ** 2
    if mask is not None:
        mask = mask.to(err.dtype).expand_as(err)
        per_ex = (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1)
    else:
        per_ex = err.flatten(1).mean(1)
    if weighting is not None:
        ratio = x0_weight(weighting, schedule.logsnr(t64), gamma) / x0_error_scale(prediction, alpha, sigma) ** 2
        per_ex = per_ex * (ratio.sqrt() if norm == "l1" else ratio).to(per_ex.dtype)
    return per_ex.mean() if reduce else per_ex
