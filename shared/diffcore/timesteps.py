"""Inference time grids.

A grid is a float64 tensor of N + 1 decreasing times ``t_0 = t_max > ... > t_N = 0``. Samplers take
N steps along it. ``t = 0`` always means clean data: a sampler's last step lands on the denoised
sample even for a VE schedule whose sigma(0) > 0 (as in EDM, where the sigma ladder ends with 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .schedules import BetaTableSchedule, Schedule


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


def uniform(steps: int, t_max: float = 1.0) -> Tensor:
    """N steps equally spaced in t from t_max to 0."""
    _check_steps(steps)
    return torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64)


def logsnr_uniform(schedule: Schedule, steps: int, t_max: float = 1.0, t_min: float = 1e-3) -> Tensor:
    """N steps equally spaced in log-SNR between t_max and t_min, then a final step to t = 0."""
    _check_steps(steps)
    lo, hi = schedule.logsnr(torch.tensor([t_max, t_min], dtype=torch.float64))
    lams = torch.linspace(float(lo), float(hi), steps, dtype=torch.float64)
    return torch.cat([schedule.t_of_logsnr(lams), torch.zeros(1, dtype=torch.float64)])


def karras(schedule: Schedule, steps: int, rho: float = 7.0, t_max: float = 1.0,
           sigma_min: float | None = None) -> Tensor:
    """Karras et al. (EDM, 2022, eq. 5) spacing of the scaled noise level sigma/alpha, then t = 0.

    sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, i = 0..N-1, with smax at
    t_max and smin at ``sigma_min`` (default: the schedule's smallest non-zero level, or 0.002).
    """
    _check_steps(steps)
    ve_sigma = lambda t: torch.exp(-schedule.logsnr(torch.tensor(t, dtype=torch.float64)) / 2)  # noqa: E731
    smax, s0 = float(ve_sigma(t_max)), float(ve_sigma(0.0))
    smin = sigma_min if sigma_min is not None else max(s0, 2e-3)
    # If smin is the schedule's own floor (VE: t = 0), that point is the final t = 0 itself, so the
    # ladder gets one more point instead of a duplicate 0.
    n = steps + 1 if smin <= s0 else steps
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    sig = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    ts = schedule.t_of_logsnr(-2 * torch.log(sig))
    ts[0] = t_max  # exact start despite bisection round-off
    if n > steps:
        ts[-1] = 0.0
        return ts
    return torch.cat([ts, torch.zeros(1, dtype=torch.float64)])


def from_betas(betas: Sequence[float] | Tensor, schedule: Schedule) -> Tensor:
    """The grid on which a short beta table (e.g. a searched 6-step WaveGrad schedule) lands inside
    a model trained with ``schedule``: each table point alpha_bar_n is placed at the time where
    the training schedule has the same log-SNR (WaveGrad's continuous noise-level conditioning)."""
    table = BetaTableSchedule(betas)
    n = table.num_steps
    lams = table.logsnr(torch.arange(n, 0, -1, dtype=torch.float64) / n)
    return torch.cat([schedule.t_of_logsnr(lams), torch.zeros(1, dtype=torch.float64)])


def as_grid(steps: int | Tensor | Sequence[float]) -> Tensor:
    """Accept a step count (uniform grid) or an explicit decreasing grid ending at 0."""
    if isinstance(steps, int):
        return uniform(steps)
    ts = torch.as_tensor(steps, dtype=torch.float64).flatten()
    if ts.numel() < 2 or not torch.all(ts[1:] < ts[:-1]) or ts[-1] != 0 or ts[0] > 1:
        raise ValueError("a time grid must decrease strictly from t_max <= 1 to exactly 0")
    return ts


GRIDS = ("uniform", "logsnr", "karras")  # the grids by name (``make_grid``)


def make_grid(name: str, schedule: Schedule, steps: int, t_max: float = 1.0) -> Tensor:
    """A grid of ``steps`` steps from ``t_max`` to 0 by name: ``uniform`` in t, uniform in log-SNR
    (``logsnr``) or Karras/EDM rho = 7 spacing (``karras``)."""
    if name == "uniform":
        return uniform(steps, t_max)
    if name == "logsnr":
        return logsnr_uniform(schedule, steps, t_max)
    if name == "karras":
        return karras(schedule, steps, t_max=t_max)
    raise ValueError(f"unknown time grid {name!r}; choose one of {', '.join(GRIDS)}")
