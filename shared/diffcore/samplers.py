"""Samplers: pure functions over a denoiser ``D(x_t, t, **cond) -> x0_hat``.

Every sampler has the form ``sample_<name>(D, x_T, steps, schedule, *, ...) -> x0`` where

* ``x_T`` is the starting state at ``ts[0]`` (for generation from scratch use ``prior_sample``; for
  audio-to-audio variation, ``schedule.add_noise`` of an input at a smaller t_max),
* ``steps`` is a step count (uniform grid) or a grid from ``diffcore.timesteps``, ending at t = 0,
* ``cond`` holds the conditioning keyword arguments passed to D,
* ``generator`` makes stochastic samplers reproducible,
* ``callback(info)`` is called after every step with ``{"i", "t", "x", "denoised"}``,
* ``known = Known(values, mask)`` keeps the masked entries at the known data (inpainting): after
  each step they are replaced by a fresh forward-process sample of the known values at that level,
* ``clip=(lo, hi)`` clamps the x0 estimate; nothing is clipped unless asked.

Most updates are written for y = x / alpha and the scaled noise level s = sigma / alpha, the
variables in which the probability-flow ODE reads dy/ds = (y - D) / s (Karras et al. 2022, eq. 4
with s(t) = alpha). This makes the same code correct for VP and VE schedules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .parameterization import Denoiser
from .schedules import Schedule
from .timesteps import as_grid

Callback = Callable[[dict[str, Any]], None]
Steps = int | Tensor | Sequence[float]


class Known(NamedTuple):
    """Known data for inpainting: ``values`` (clean x0, same shape as x) where ``mask`` is true."""

    values: Tensor
    mask: Tensor


def prior_sample(schedule: Schedule, shape: Sequence[int], *, t_max: float = 1.0,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """A draw from the forward process at t_max ignoring the (vanishing) signal: sigma(t_max) * z."""
    z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    return float(schedule.sigma(t_max)) * z


def _denoise(D: Denoiser, x: Tensor, t: Tensor, cond: Mapping, clip: tuple[float, float] | None) -> Tensor:
    """D's x0 estimate, clamped to ``clip`` only when asked."""
    x0 = D(x, t, **cond)
    return x0.clamp(*clip) if clip is not None else x0


def _impose_known(x: Tensor, known: Known, alpha: float, sigma: float, randn: Callable[[], Tensor]) -> Tensor:
    """``x`` with its known entries replaced by a fresh forward-process sample alpha x0 + sigma z of them."""
    noisy = alpha * known.values + (sigma * randn() if sigma > 0 else 0.0)
    return torch.where(known.mask.bool(), noisy.to(x.dtype), x)


class _Run:
    """Per-call bookkeeping shared by the grid samplers: noise levels on the grid, denoiser calls,
    inpainting and callbacks. Not part of the public API."""

    def __init__(self, D: Denoiser, x: Tensor, steps: Steps, schedule: Schedule, cond: Mapping | None,
                 generator: torch.Generator | None, callback: Callback | None, known: Known | None,
                 clip: tuple[float, float] | None):
        self.D, self.cond, self.gen, self.callback, self.known, self.clip = D, dict(cond or {}), generator, \
            callback, known, clip
        self.ts = as_grid(steps)
        alpha, sigma = schedule.alpha_sigma(self.ts)
        alpha[-1], sigma[-1] = 1.0, 0.0  # t = 0 is clean data (see timesteps)
        self.alpha, self.sigma = alpha.tolist(), sigma.tolist()
        self.logsnr = [2 * math.log(a / s) if s > 0 else math.inf for a, s in zip(self.alpha, self.sigma)]
        self.x_shape, self.device, self.dtype = x.shape, x.device, x.dtype
        if known is not None and known.values.shape != x.shape:
            raise ValueError(f"known values have shape {tuple(known.values.shape)}, x has {tuple(x.shape)}")

    def __len__(self) -> int:
        return len(self.ts) - 1

    def s(self, i: int) -> float:
        """Scaled noise level sigma / alpha at grid point i."""
        return self.sigma[i] / self.alpha[i]

    def denoise(self, x: Tensor, i: int) -> Tensor:
        t = torch.full((x.shape[0],), float(self.ts[i]), device=x.device, dtype=torch.float64)
        return _denoise(self.D, x, t, self.cond, self.clip)

    def randn(self) -> Tensor:
        return torch.randn(self.x_shape, generator=self.gen, device=self.device, dtype=self.dtype)

    def finish_step(self, x: Tensor, i: int, denoised: Tensor) -> Tensor:
        """Apply inpainting at grid point i + 1 and report the step."""
        if self.known is not None:
            x = _impose_known(x, self.known, self.alpha[i + 1], self.sigma[i + 1], self.randn)
        if self.callback is not None:
            self.callback({"i": i, "t": float(self.ts[i + 1]), "x": x, "denoised": denoised})
        return x


def sample_ddim(D: Denoiser, x_T: Tensor, steps: Steps, schedule: Schedule, *, eta: float = 0.0,
                cond: Mapping | None = None, generator: torch.Generator | None = None,
                callback: Callback | None = None, known: Known | None = None,
                clip: tuple[float, float] | None = None) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12). eta = 0 is the deterministic sampler (an Euler step of the
    probability-flow ODE in s = sigma/alpha); eta = 1 is DDPM's ancestral sampler.

    Step t -> n: x_n = alpha_n x0 + sqrt(sigma_n^2 - c^2) eps + c z, with eps the noise implied by
    x0 and c^2 = eta^2 sigma_n^2 (1 - SNR_t / SNR_n), the posterior variance for eta = 1.
    """
    run = _Run(D, x_T, steps, schedule, cond, generator, callback, known, clip)
    x = x_T
    for i in range(len(run)):
        x0 = run.denoise(x, i)
        x = run.finish_step(_ddim_step(run, x, x0, i, eta), i, x0)
    return x


def _ddim_step(run: _Run, x: Tensor, x0: Tensor, i: int, eta: float) -> Tensor:
    """One DDIM step from grid point i to i + 1 given the x0 estimate at i."""
    eps = (x - run.alpha[i] * x0) / run.sigma[i]
    sig_n = run.sigma[i + 1]
    var = eta**2 * sig_n**2 * -math.expm1(run.logsnr[i] - run.logsnr[i + 1]) if sig_n > 0 else 0.0
    x = run.alpha[i + 1] * x0 + math.sqrt(max(sig_n**2 - var, 0.0)) * eps
    return x + math.sqrt(var) * run.randn() if var > 0 else x


def sample_ddpm(D: Denoiser, x_T: Tensor, steps: Steps, schedule: Schedule, **kwargs) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2): each step samples the forward-process
    posterior q(x_n | x_t, x0 = D(x_t)), which is exactly DDIM with eta = 1."""
    return sample_ddim(D, x_T, steps, schedule, eta=1.0, **kwargs)


def sample_euler(D: Denoiser, x_T: Tensor, steps: Steps, schedule: Schedule, *, cond: Mapping | None = None,
                 generator: torch.Generator | None = None, callback: Callback | None = None,
                 known: Known | None = None, clip: tuple[float, float] | None = None) -> Tensor:
    """Euler's method on the probability-flow ODE dy/ds = (y - D) / s, y = x/alpha, s = sigma/alpha.

    In these variables Euler coincides with DDIM (eta = 0) (Karras et al. 2022, Sec. 4); it is kept
    as the first-order reference for ``sample_heun``.
    """
    run = _Run(D, x_T, steps, schedule, cond, generator, callback, known, clip)
    x = x_T
    for i in range(len(run)):
        x0 = run.denoise(x, i)
        y, s, s_n = x / run.alpha[i], run.s(i), run.s(i + 1)
        x = run.alpha[i + 1] * (y + (s_n - s) * (y - x0) / s)
        x = run.finish_step(x, i, x0)
    return x


def sample_heun(D: Denoiser, x_T: Tensor, steps: Steps, schedule: Schedule, *, cond: Mapping | None = None,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                known: Known | None = None, clip: tuple[float, float] | None = None) -> Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1 without
    churn): an Euler step, then the trapezoidal correction, except on the last step to s = 0.
    Costs 2 N - 1 denoiser calls."""
    run = _Run(D, x_T, steps, schedule, cond, generator, callback, known, clip)
    x = x_T
    for i in range(len(run)):
        x0 = run.denoise(x, i)
        y, s, s_n = x / run.alpha[i], run.s(i), run.s(i + 1)
        d = (y - x0) / s
        y_n = y + (s_n - s) * d
        if s_n > 0:
            d_n = (y_n - run.denoise(run.alpha[i + 1] * y_n, i + 1)) / s_n
            y_n = y + (s_n - s) * (d + d_n) / 2
        x = run.finish_step(run.alpha[i + 1] * y_n, i, x0)
    return x


def sample_dpmpp_2m(D: Denoiser, x_T: Tensor, steps: Steps, schedule: Schedule, *, cond: Mapping | None = None,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    known: Known | None = None, clip: tuple[float, float] | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): multistep second order in the half log-SNR
    lambda = log(alpha / sigma), reusing the previous x0 estimate; first order on the first step and
    on the final step to sigma = 0.

    x_n = (sigma_n / sigma) x - alpha_n expm1(-h) D', h = lambda_n - lambda,
    D' = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}, r = h_{i-1} / h.
    """
    run = _Run(D, x_T, steps, schedule, cond, generator, callback, known, clip)
    x, x0_prev, h_prev = x_T, None, None
    for i in range(len(run)):
        x0 = run.denoise(x, i)
        if run.sigma[i + 1] == 0:
            x = run.alpha[i + 1] * x0
        else:
            h = (run.logsnr[i + 1] - run.logsnr[i]) / 2
            d = x0
            if x0_prev is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = (run.sigma[i + 1] / run.sigma[i]) * x - run.alpha[i + 1] * math.expm1(-h) * d
            h_prev = h
        x0_prev = x0
        x = run.finish_step(x, i, x0)
    return x


def _langevin(run: _Run, x: Tensor, i: int, n_steps: int, snr: float | None = None,
              step_size: float | None = None) -> Tensor:
    """``n_steps`` of Langevin dynamics x <- x + eps score + sqrt(2 eps) z targeting p_t at grid
    point i, score = (alpha D(x) - x) / sigma^2.

    Step size either from a target signal-to-noise ratio (Song et al. 2021, Alg. 4-5:
    eps = 2 (snr ||z|| / ||score||)^2, norms per sample averaged over the batch; meant for
    high-dimensional x, where those norms concentrate) or proportional to the noise variance
    (Song & Ermon 2019, Alg. 1: eps = step_size * sigma^2, the same for every sample).
    """
    a, s = run.alpha[i], run.sigma[i]
    for _ in range(n_steps):
        score = (a * run.denoise(x, i) - x) / s**2
        z = run.randn()
        if step_size is not None:
            eps = torch.tensor(step_size * s**2)
        else:
            score_norm = score.flatten(1).norm(dim=1).mean()
            z_norm = z.flatten(1).norm(dim=1).mean()
            eps = 2 * (snr * z_norm / score_norm.clamp(min=1e-12)) ** 2
        x = x + eps * score + (2 * eps).sqrt() * z
    return x


def sample_langevin(D: Denoiser, x_T: Tensor, steps: Steps, schedule: Schedule, *, n_steps: int = 50,
                    step_size: float = 0.05, cond: Mapping | None = None, generator: torch.Generator | None = None,
                    callback: Callback | None = None, known: Known | None = None,
                    clip: tuple[float, float] | None = None) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, NCSN): ``n_steps`` Langevin steps of size
    ``step_size * sigma_i^2`` at each noise level of the grid from noisy to clean, then one
    denoising step (Tweedie's formula) from the last non-zero level to the data, as in
    Jolicoeur-Martineau et al. 2021. Needs many steps per level: Langevin alone must carry the
    samples from one level's distribution to the next (``sample_pc`` adds a predictor instead)."""
    run = _Run(D, x_T, steps, schedule, cond, generator, callback, known, clip)
    x = x_T
    for i in range(len(run)):
        if run.sigma[i + 1] > 0:
            x = _langevin(run, x, i + 1, n_steps, step_size=step_size)
            x = run.finish_step(x, i, x)
        else:
            x0 = run.denoise(x, i)
            x = run.finish_step(x0, i, x0)
    return x


def sample_pc(D: Denoiser, x_T: Tensor, steps: Steps, schedule: Schedule, *, n_corrector: int = 1,
              snr: float = 0.16, cond: Mapping | None = None, generator: torch.Generator | None = None,
              callback: Callback | None = None, known: Known | None = None,
              clip: tuple[float, float] | None = None) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1): at each level, ``n_corrector``
    Langevin corrector steps at t_i, then an ancestral predictor step t_i -> t_{i+1}."""
    run = _Run(D, x_T, steps, schedule, cond, generator, callback, known, clip)
    x = x_T
    for i in range(len(run)):
        x = _langevin(run, x, i, n_corrector, snr=snr)
        x0 = run.denoise(x, i)
        x = run.finish_step(_ddim_step(run, x, x0, i, eta=1.0), i, x0)
    return x


def sample_adaptive(D: Denoiser, x_T: Tensor, schedule: Schedule, *, t_max: float = 1.0, rtol: float = 1e-3,
                    atol: float = 1e-3, s_min: float = 2e-3, h_init: float = 0.5, max_steps: int = 10_000,
                    cond: Mapping | None = None, generator: torch.Generator | None = None,
                    callback: Callback | None = None, known: Known | None = None,
                    clip: tuple[float, float] | None = None) -> Tensor:
    """Adaptive step-size probability-flow ODE solver: Bogacki-Shampine 3(2) with error control.

    Integrates dy/du = y - D(alpha y, t) in u = log s (y = x/alpha, s = sigma/alpha) from s(t_max)
    down to max(s(0), s_min), choosing each step so the embedded error estimate stays within
    ``atol + rtol * |y|`` (RMS per sample, worst sample of the batch), then denoises to t = 0.
    The number of denoiser calls follows from the tolerance; ``callback`` gets ``"nfe"`` too.
    With ``known``, the known entries are reset to a fresh forward sample after every accepted step
    (one extra denoiser call per step, since the stored slope no longer applies); ``generator``
    draws that noise.
    """
    cond = dict(cond or {})
    u_of_t = lambda t: -float(schedule.logsnr(torch.tensor(t, dtype=torch.float64))) / 2  # noqa: E731
    u, u_end = u_of_t(t_max), math.log(max(math.exp(u_of_t(0.0)), s_min))
    if not u > u_end:
        raise ValueError(f"t_max={t_max} is already at or below the final noise level")
    nfe = 0

    def f(u_: float, y: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        t = schedule.t_of_logsnr(torch.tensor(-2 * u_, dtype=torch.float64))
        return y - _denoise(D, float(schedule.alpha(t)) * y, t.expand(y.shape[0]).to(y.device), cond, clip)

    y = x_T / float(schedule.alpha(t_max))
    randn = lambda: torch.randn(x_T.shape, generator=generator, device=x_T.device, dtype=x_T.dtype)  # noqa: E731
    h, k1, i = -abs(h_init), f(u, y), 0
    while u > u_end:
        if i >= max_steps:
            raise RuntimeError(f"adaptive solver exceeded max_steps={max_steps}; loosen rtol/atol")
        h = max(h, u_end - u)  # h < 0: never step past the end
        k2 = f(u + h / 2, y + h / 2 * k1)
        k3 = f(u + 3 * h / 4, y + 3 * h / 4 * k2)
        y_new = y + h * (2 / 9 * k1 + 1 / 3 * k2 + 4 / 9 * k3)
        k4 = f(u + h, y_new)
        err = h * (-5 / 72 * k1 + 1 / 12 * k2 + 1 / 9 * k3 - 1 / 8 * k4)
        tol = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        e = float((err / tol).pow(2).flatten(1).mean(1).sqrt().max())
        if e <= 1:  # accept; k4 is the next step's k1 (first same as last)
            u, y, k1, i = u + h, y_new, k4, i + 1
            if known is not None:  # in y = x / alpha the forward sample is x0 + s z
                y = _impose_known(y, known, 1.0, math.exp(u), randn)
                k1 = f(u, y)
            if callback is not None:
                t = schedule.t_of_logsnr(torch.tensor(-2 * u, dtype=torch.float64))
                callback({"i": i, "t": float(t), "x": float(schedule.alpha(t)) * y, "denoised": y - k1, "nfe": nfe})
        h = h * min(5.0, max(0.2, 0.9 * (e if e > 0 else 1e-10) ** (-1 / 3)))
    x0 = y - k1  # k1 = y - D(alpha y, t_end): the denoised sample at the last level, no extra call
    return torch.where(known.mask.bool(), known.values.to(x0.dtype), x0) if known is not None else x0


# The samplers by name, for command lines and configs; the deterministic ones map x_T -> x_0 (ODE solvers).
SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm, "ddim": sample_ddim, "euler": sample_euler, "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m, "langevin": sample_langevin, "pc": sample_pc, "adaptive": sample_adaptive,
}
ODE_SAMPLERS = ("ddim", "euler", "heun", "dpmpp_2m", "adaptive")
