"""What a network predicts (eps, x0, v, score) and exact conversions between them.

With ``x_t = alpha x0 + sigma eps`` and ``v = alpha eps - sigma x0`` (Salimans & Ho 2022):

    x0    = (x_t - sigma eps) / alpha
    x0    = (alpha x_t - sigma v) / (alpha^2 + sigma^2)          (VP: alpha x_t - sigma v)
    score = grad log p(x_t) = (alpha x0 - x_t) / sigma^2 = -eps / sigma

These hold for any schedule, VP or VE. ``as_denoiser`` turns a network into the core's denoiser
``D(x_t, t, **cond) -> x0_hat``, the one interface every sampler and guidance wrapper uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from .schedules import Schedule, bcast

Prediction = Literal["eps", "x0", "v", "score"]
NoiseInput = Literal["t", "logsnr", "alpha", "sigma"]
Denoiser = Callable[..., Tensor]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v", "score")


def _check(kind: str) -> None:
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction {kind!r}; choose one of {PREDICTIONS}")


def to_x0(pred: Tensor, kind: Prediction, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Convert a prediction of type ``kind`` at (x_t, alpha, sigma) to the implied x0."""
    _check(kind)
    a, s = bcast(alpha, x_t), bcast(sigma, x_t)
    if kind == "x0":
        return pred
    if kind == "eps":
        return (x_t - s * pred) / a
    if kind == "v":
        return (a * x_t - s * pred) / (a**2 + s**2)
    return (x_t + s**2 * pred) / a  # score


def from_x0(x0: Tensor, kind: Prediction, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Express an x0 estimate at (x_t, alpha, sigma) as a prediction of type ``kind``."""
    _check(kind)
    a, s = bcast(alpha, x_t), bcast(sigma, x_t)
    if kind == "x0":
        return x0
    eps = (x_t - a * x0) / s
    if kind == "eps":
        return eps
    if kind == "v":
        return a * eps - s * x0
    return -eps / s  # score


def convert(pred: Tensor, src: Prediction, dst: Prediction, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Convert between any two parameterizations (via x0)."""
    return from_x0(to_x0(pred, src, x_t, alpha, sigma), dst, x_t, alpha, sigma)


def x0_error_scale(kind: Prediction, alpha: Tensor, sigma: Tensor) -> Tensor:
    """|d pred / d x0| at fixed x_t: an error e in x0 is an error scale * e in the prediction.

    Squared, this is the weight a plain MSE on ``kind`` implicitly puts on the x0 MSE
    (eps: SNR, v: SNR + 1 for VP, x0: 1), which ``losses`` uses to apply any weighting exactly.
    """
    _check(kind)
    if kind == "x0":
        return torch.ones_like(alpha)
    if kind == "eps":
        return alpha / sigma
    if kind == "v":
        return (alpha**2 + sigma**2) / sigma
    return alpha / sigma**2


def noise_input(schedule: Schedule, t: Tensor, kind: NoiseInput) -> Tensor:
    """The noise-level value a network is conditioned on: t itself, log-SNR, alpha (WaveGrad's
    sqrt(alpha_bar)) or sigma."""
    if kind == "t":
        return t
    if kind == "logsnr":
        return schedule.logsnr(t)
    alpha, sigma = schedule.alpha_sigma(t)
    if kind == "alpha":
        return alpha
    if kind == "sigma":
        return sigma
    raise ValueError(f"unknown noise input {kind!r}; choose t, logsnr, alpha or sigma")


def as_denoiser(net: Callable[..., Tensor], schedule: Schedule, prediction: Prediction = "eps",
                noise_input_kind: NoiseInput = "t") -> Denoiser:
    """Adapt ``net(x_t, c_noise, **cond) -> prediction`` into ``D(x_t, t, **cond) -> x0_hat``.

    ``t`` may be a float or a (B,) tensor; ``c_noise`` is what the net was trained on (see
    ``noise_input``), computed in float64 and cast to x_t's dtype.
    """
    _check(prediction)

    def denoiser(x_t: Tensor, t: Tensor | float, **cond) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        alpha, sigma = schedule.alpha_sigma(t)
        c = noise_input(schedule, t, noise_input_kind).to(x_t.dtype)
        out = net(x_t, c, **cond)
        return to_x0(out, prediction, x_t, alpha.to(x_t.dtype), sigma.to(x_t.dtype))

    return denoiser


def edm_denoiser(net: Callable[..., Tensor], schedule: Schedule, sigma_data: float = 0.5) -> Denoiser:
    """EDM preconditioning (Karras et al. 2022, Table 1) on any schedule.

    With y = x_t / alpha and s = sigma / alpha: x0_hat = c_skip y + c_out F(c_in y, c_noise), where
    c_skip = sd^2/(s^2+sd^2), c_out = s sd / sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2), c_noise = ln(s)/4.
    The network F sees unit-variance inputs and targets at every noise level.
    """

    def denoiser(x_t: Tensor, t: Tensor | float, **cond) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        alpha, sigma = schedule.alpha_sigma(t)
        s = sigma / alpha
        sd2 = sigma_data**2
        c_skip, c_out = sd2 / (s**2 + sd2), s * sigma_data / (s**2 + sd2).sqrt()
        c_in, c_noise = 1 / (s**2 + sd2).sqrt(), s.log() / 4
        y = x_t / bcast(alpha, x_t)
        f = net(bcast(c_in, y) * y, c_noise.to(x_t.dtype), **cond)
        return bcast(c_skip, y) * y + bcast(c_out, y) * f

    return denoiser
