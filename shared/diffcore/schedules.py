"""Gaussian forward processes in continuous time.

A schedule maps time ``t`` in [0, 1] (0 = data, 1 = noise) to the log signal-to-noise ratio
``logsnr(t) = log(alpha^2 / sigma^2)``; the forward process is ``x_t = alpha(t) x0 + sigma(t) eps``.
Everything else (alpha, sigma, betas on a grid, inverse time) is derived from ``logsnr``:

* variance preserving (VP):  alpha^2 = sigmoid(logsnr), sigma^2 = sigmoid(-logsnr)
* variance exploding (VE):   alpha = 1,                sigma = exp(-logsnr / 2)

There are no integer timesteps in the core. A table of betas (DDPM, WaveGrad) is a schedule too:
its cumulative products sit exactly at ``t = n / N`` and log(alpha_bar) is linear in between.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

Kind = Literal["vp", "ve"]


def _as_tensor(t: Tensor | float) -> Tensor:
    return t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)


class Schedule:
    """Base class: subclasses implement ``logsnr(t)`` (monotonically decreasing in t).

    All methods accept a float or a tensor of times and compute in the tensor's dtype; pass
    float64 times where precision matters (the samplers do).
    """

    kind: Kind = "vp"

    def logsnr(self, t: Tensor | float) -> Tensor:
        raise NotImplementedError

    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Signal scale alpha(t) and noise scale sigma(t)."""
        lam = self.logsnr(_as_tensor(t))
        if self.kind == "vp":
            return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        return torch.ones_like(lam), torch.exp(-lam / 2)

    def alpha(self, t: Tensor | float) -> Tensor:
        return self.alpha_sigma(t)[0]

    def sigma(self, t: Tensor | float) -> Tensor:
        return self.alpha_sigma(t)[1]

    def alpha_bar(self, t: Tensor | float) -> Tensor:
        """alpha(t)^2, the cumulative product of (1 - beta) in DDPM notation."""
        return self.alpha(t) ** 2

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample the forward process: ``alpha(t) x0 + sigma(t) noise`` with t of shape (B,)."""
        alpha, sigma = self.alpha_sigma(t)
        return bcast(alpha, x0) * x0 + bcast(sigma, x0) * noise

    def t_of_logsnr(self, logsnr: Tensor | float) -> Tensor:
        """Inverse of ``logsnr(t)`` by bisection (64 halvings: exact to float64 precision)."""
        target = _as_tensor(logsnr).to(torch.float64)
        lo, hi = torch.zeros_like(target), torch.ones_like(target)
        for _ in range(64):
            mid = (lo + hi) / 2
            above = self.logsnr(mid) > target  # logsnr decreases with t, so the root is later
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return (lo + hi) / 2

    def betas(self, n: int) -> Tensor:
        """Discrete view: the N betas whose cumulative products equal alpha_bar(k / N), k = 1..N."""
        ab = self.alpha_bar(torch.linspace(0, 1, n + 1, dtype=torch.float64))
        return 1 - ab[1:] / ab[:-1]

    def resample(self, n: int) -> BetaTableSchedule:
        """This schedule seen through N steps: a beta table that agrees with it at t = k / N."""
        if self.kind != "vp":
            raise ValueError("resample() gives a VP beta table; a VE schedule has no betas.")
        return BetaTableSchedule(self.betas(n))

    def prior_std(self) -> float:
        """Standard deviation of x_1 under the forward process for unit-variance data."""
        alpha, sigma = self.alpha_sigma(1.0)
        return float((alpha**2 + sigma**2).sqrt())

    def config(self) -> dict[str, Any]:
        """A JSON-serialisable description; ``schedule_from_config`` rebuilds the schedule."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


def bcast(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample value of shape (B,) (or a scalar) to broadcast against x (B, ...)."""
    v = v.to(device=x.device, dtype=x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if v.ndim else v


# --------------------------------------------------------------------------------------------------
# Variance preserving


class BetaTableSchedule(Schedule):
    """A VP schedule given by an explicit list of betas (DDPM, WaveGrad's 6/25/50/1000-step tables).

    alpha_bar(n / N) = prod_{i<=n} (1 - beta_i) exactly; log alpha_bar is linear in t between those
    points (a piecewise-constant beta in continuous time), so the table also defines every t.
    """

    kind: Kind = "vp"

    def __init__(self, betas: Sequence[float] | Tensor):
        b = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if b.numel() == 0 or not torch.all((b > 0) & (b < 1)):
            raise ValueError("betas must be a non-empty list of values in (0, 1)")
        self.table = b
        self.log_ab = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-b), 0)])

    @property
    def num_steps(self) -> int:
        return self.table.numel()

    def _log_alpha_bar(self, t: Tensor) -> Tensor:
        n = self.num_steps
        pos = (t.to(torch.float64) * n).clamp(0, n)
        i = pos.floor().clamp(max=n - 1).long()
        la = self.log_ab.to(t.device)
        return la[i] + (pos - i) * (la[i + 1] - la[i])

    def logsnr(self, t: Tensor | float) -> Tensor:
        t = _as_tensor(t)
        la = self._log_alpha_bar(t)
        # log(ab / (1 - ab)), written to stay exact when ab is close to 1 (small t)
        return (la - torch.log(-torch.expm1(la))).to(t.dtype)

    def betas(self, n: int | None = None) -> Tensor:
        return self.table.clone() if n is None or n == self.num_steps else super().betas(n)

    def config(self) -> dict[str, Any]:
        return {"name": "beta_table", "betas": self.table.tolist()}


class LinearBetaSchedule(BetaTableSchedule):
    """DDPM's linear betas (Ho et al. 2020: 1e-4 .. 0.02 over 1000 steps), an exact beta table."""

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000):
        super().__init__(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))
        self.beta_start, self.beta_end = beta_start, beta_end

    def config(self) -> dict[str, Any]:
        return {"name": "linear", "beta_start": self.beta_start, "beta_end": self.beta_end,
                "num_steps": self.num_steps}


class _ShapedVPSchedule(Schedule):
    """VP schedule from a shape ``g(t)`` falling from 1 to 0: alpha_bar = ab_min + (1 - ab_min) g(t).

    The floor ``ab_min = sigmoid(logsnr_min)`` keeps alpha(1) > 0 (so x0 can be recovered from an
    eps prediction at t = 1) while keeping the schedule strictly monotone, unlike a clamp.

    ``shift``: the log-SNR is lowered by ``2 log(shift)`` at every t, the "shifted" schedule of Hoogeboom et al.
    2023 ("simple diffusion"): data whose values are redundant (a large image; a tone held over many
    frames) stays recognisable at a higher noise than the unshifted schedule puts most steps at, so a shift
    > 1 moves training and sampling time to the noise levels where the coarse structure is decided.
    """

    kind: Kind = "vp"

    def __init__(self, logsnr_min: float = -15.0, shift: float = 1.0):
        if not shift > 0:
            raise ValueError(f"shift must be positive (1: no shift), got {shift}")
        self.logsnr_min, self.shift = float(logsnr_min), float(shift)

    def _config(self, name: str, **fields: float) -> dict[str, Any]:
        shift = {"shift": self.shift} if self.shift != 1.0 else {}  # configs saved before the shift still match
        return {"name": name, **fields, "logsnr_min": self.logsnr_min, **shift}

    def _shape(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def logsnr(self, t: Tensor | float) -> Tensor:
        t = _as_tensor(t)
        t64 = t.to(torch.float64).clamp(0, 1)
        ab_min = 1 / (1 + math.exp(-self.logsnr_min))
        g = self._shape(t64).clamp(0, 1)
        ab = ab_min + (1 - ab_min) * g
        one_minus = (1 - ab_min) * (1 - g)
        return (torch.log(ab) - torch.log(one_minus) - 2 * math.log(self.shift)).to(t.dtype)


class CosineSchedule(_ShapedVPSchedule):
    """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021): g = cos^2(pi/2 (t+s)/(1+s)) / g(0)."""

    def __init__(self, s: float = 0.008, logsnr_min: float = -15.0, shift: float = 1.0):
        super().__init__(logsnr_min, shift)
        self.s = float(s)

    def _shape(self, t: Tensor) -> Tensor:
        f = lambda u: torch.cos((u + self.s) / (1 + self.s) * math.pi / 2) ** 2  # noqa: E731
        return f(t) / f(torch.zeros_like(t))

    def config(self) -> dict[str, Any]:
        return self._config("cosine", s=self.s)


class SigmoidSchedule(_ShapedVPSchedule):
    """Sigmoid schedule (Jabri et al. 2022; Chen 2023): g = (sig(end/tau) - sig((start + t(end-start))/tau))
    / (sig(end/tau) - sig(start/tau))."""

    def __init__(self, start: float = -3.0, end: float = 3.0, tau: float = 1.0, logsnr_min: float = -15.0,
                 shift: float = 1.0):
        super().__init__(logsnr_min, shift)
        if end <= start or tau <= 0:
            raise ValueError("sigmoid schedule needs start < end and tau > 0")
        self.start, self.end, self.tau = float(start), float(end), float(tau)

    def _shape(self, t: Tensor) -> Tensor:
        v_start = torch.sigmoid(torch.tensor(self.start / self.tau, dtype=t.dtype))
        v_end = torch.sigmoid(torch.tensor(self.end / self.tau, dtype=t.dtype))
        v = torch.sigmoid((self.start + t * (self.end - self.start)) / self.tau)
        return (v_end - v) / (v_end - v_start)

    def config(self) -> dict[str, Any]:
        return self._config("sigmoid", start=self.start, end=self.end, tau=self.tau)


# --------------------------------------------------------------------------------------------------
# Variance exploding


class GeometricVESchedule(Schedule):
    """VE schedule with a geometric sigma ladder (NCSN; score SDE's VE-SDE): sigma(t) = smin (smax/smin)^t."""

    kind: Kind = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError("need 0 < sigma_min < sigma_max")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def logsnr(self, t: Tensor | float) -> Tensor:
        t = _as_tensor(t)
        log_sigma = math.log(self.sigma_min) + t.clamp(0, 1) * math.log(self.sigma_max / self.sigma_min)
        return -2 * log_sigma

    def t_of_logsnr(self, logsnr: Tensor | float) -> Tensor:
        log_sigma = -_as_tensor(logsnr).to(torch.float64) / 2
        return ((log_sigma - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)).clamp(0, 1)

    def config(self) -> dict[str, Any]:
        return {"name": "geometric_ve", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


_REGISTRY: dict[str, type[Schedule]] = {
    "beta_table": BetaTableSchedule,
    "linear": LinearBetaSchedule,
    "cosine": CosineSchedule,
    "sigmoid": SigmoidSchedule,
    "geometric_ve": GeometricVESchedule,
}


def schedule_from_config(config: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from ``Schedule.config()`` (used by save_pretrained / from_pretrained)."""
    cfg = dict(config)
    name = cfg.pop("name", None)
    if name not in _REGISTRY:
        raise ValueError(f"unknown schedule {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**cfg)
