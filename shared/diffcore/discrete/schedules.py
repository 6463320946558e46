"""Masking schedules for absorbing-state (masked) discrete diffusion.

A masking schedule gives, for continuous time ``t`` in [0, 1] (0 = data, 1 = noise), the KEEP
probability ``alpha(t)``: the probability that a token is still unmasked at time t. It falls from
``alpha(0) = 1`` to ``alpha(1) ~ 0``. This is the ``alpha_t`` of MDLM (Sahoo et al. 2024) and MD4
(Shi et al. 2024), not the signal scale of the Gaussian core: the two families share the time grid,
the training-time sampler and the wrapper idiom, not the update math.

Every schedule returns ``(alpha_t, dalpha_dt)`` when called, and ``weight(t) = -alpha'(t) / (1 -
alpha(t)) >= 0``, the weight of the continuous-time NELBO (MDLM; MD4):

    NELBO = E_{t ~ U(0,1)} [ w(t) * sum_{l masked in z_t} -log p_theta(x0_l | z_t) ].

Schedules of the form ``alpha = 1 - (1 - eps) g(t)`` with a shape g rising from 0 to 1 have
``w(t) = g'(t) / g(t)``, independent of the floor ``eps``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def _as_f64(t: Tensor | float) -> tuple[Tensor, torch.dtype]:
    """Times as float64 (all schedule math is float64) and the dtype to hand results back in."""
    if isinstance(t, Tensor):
        out = t.dtype if t.is_floating_point() else torch.float64
        return t.to(torch.float64), out
    return torch.tensor(float(t), dtype=torch.float64), torch.float64


class MaskingSchedule:
    """Base class: subclasses implement ``_mask_prob`` (1 - alpha) and its time derivative.

    Methods accept a float or a tensor of times of any shape (typically (B,)); they compute in
    float64 and return the input's floating dtype (float64 for Python floats).
    """

    def _mask_prob(self, t: Tensor) -> Tensor:
        """1 - alpha(t), computed directly (exact for small t, where alpha ~ 1)."""
        raise NotImplementedError

    def _dmask_prob(self, t: Tensor) -> Tensor:
        """d(1 - alpha)/dt = -alpha'(t) >= 0."""
        raise NotImplementedError

    def __call__(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """The keep probability alpha(t) and its derivative dalpha/dt (<= 0)."""
        t64, dtype = _as_f64(t)
        return (1 - self._mask_prob(t64)).to(dtype), (-self._dmask_prob(t64)).to(dtype)

    def alpha(self, t: Tensor | float) -> Tensor:
        """Keep probability alpha(t): the chance that a token is unmasked at time t."""
        return self(t)[0]

    def mask_prob(self, t: Tensor | float) -> Tensor:
        """Mask probability 1 - alpha(t), without the cancellation of forming 1 - alpha."""
        t64, dtype = _as_f64(t)
        return self._mask_prob(t64).to(dtype)

    def weight(self, t: Tensor | float) -> Tensor:
        """Continuous-time NELBO weight w(t) = -alpha'(t) / (1 - alpha(t)) (+inf at t = 0)."""
        t64, dtype = _as_f64(t)
        return (self._dmask_prob(t64) / self._mask_prob(t64)).to(dtype)

    def config(self) -> dict[str, Any]:
        """A JSON-serialisable description; ``masking_from_config`` rebuilds the schedule."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class _ShapedMasking(MaskingSchedule):
    """alpha(t) = 1 - (1 - eps) g(t) for a shape g rising from g(0) = 0 to g(1) = 1.

    The floor ``eps = alpha(1)`` leaves a token unmasked at t = 1 with probability eps (MDLM keeps
    eps = 1e-3 so that the weight stays finite where the network is evaluated); w(t) = g'/g.
    """

    def __init__(self, eps: float = 1e-3):
        if not 0 <= eps < 1:
            raise ValueError(f"eps must lie in [0, 1), got {eps}")
        self.eps = float(eps)

    def _shape(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """g(t) and g'(t)."""
        raise NotImplementedError

    def _mask_prob(self, t: Tensor) -> Tensor:
        return (1 - self.eps) * self._shape(t.clamp(0, 1))[0]

    def _dmask_prob(self, t: Tensor) -> Tensor:
        return (1 - self.eps) * self._shape(t.clamp(0, 1))[1]

    def weight(self, t: Tensor | float) -> Tensor:
        t64, dtype = _as_f64(t)
        g, dg = self._shape(t64.clamp(0, 1))
        return (dg / g).to(dtype)  # the (1 - eps) factors cancel exactly


class LogLinearMasking(_ShapedMasking):
    """MDLM's log-linear noise: total noise sigma(t) = -log(1 - (1 - eps) t), so alpha = exp(-sigma)
    = 1 - (1 - eps) t is linear in t and the NELBO weight is exactly w(t) = 1/t.

    This is also MD4's "linear" schedule alpha = 1 - t (with the eps floor); ``LinearMasking`` is
    an alias of this class, not a second implementation.
    """

    def _shape(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return t, torch.ones_like(t)

    def weight(self, t: Tensor | float) -> Tensor:
        t64, dtype = _as_f64(t)
        return (1 / t64.clamp(0, 1)).to(dtype)

    def config(self) -> dict[str, Any]:
        return {"name": "loglinear", "eps": self.eps}


LinearMasking = LogLinearMasking
"""MD4's linear schedule alpha = 1 - t: identical to ``LogLinearMasking`` (an alias)."""


class CosineMasking(_ShapedMasking):
    """MD4's cosine schedule alpha = 1 - cos(pi/2 (1 - t)) = 1 - sin(pi t / 2), with the eps floor:
    alpha = 1 - (1 - eps) sin(pi t / 2). It masks slowly near t = 0 and quickly near t = 1;
    w(t) = (pi / 2) cot(pi t / 2)."""

    def _shape(self, t: Tensor) -> tuple[Tensor, Tensor]:
        x = math.pi / 2 * t
        return torch.sin(x), math.pi / 2 * torch.cos(x)

    def config(self) -> dict[str, Any]:
        return {"name": "cosine", "eps": self.eps}


class PolynomialMasking(_ShapedMasking):
    """MD4's polynomial schedule alpha = 1 - t^w (with the eps floor); w = 1 is ``LogLinearMasking``.
    w(t) = exponent / t."""

    def __init__(self, exponent: float = 2.0, eps: float = 1e-3):
        super().__init__(eps)
        if exponent <= 0:
            raise ValueError(f"exponent must be positive, got {exponent}")
        self.exponent = float(exponent)

    def _shape(self, t: Tensor) -> tuple[Tensor, Tensor]:
        w = self.exponent
        return t**w, w * t ** (w - 1)

    def config(self) -> dict[str, Any]:
        return {"name": "polynomial", "exponent": self.exponent, "eps": self.eps}


class LinearNoiseMasking(MaskingSchedule):
    """MDLM's "linear" schedule, named for what is linear: the total noise sigma(t) = sigma_min +
    t (sigma_max - sigma_min), with keep probability alpha = exp(-sigma(t)) (exponential in t).

    alpha(0) = exp(-sigma_min) (1 for the default sigma_min = 0), alpha(1) = exp(-sigma_max)
    (4.5e-5 for the default 10); w(t) = (sigma_max - sigma_min) / expm1(sigma(t)).
    """

    def __init__(self, sigma_min: float = 0.0, sigma_max: float = 10.0):
        if not 0 <= sigma_min < sigma_max:
            raise ValueError("need 0 <= sigma_min < sigma_max")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def _sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min + t.clamp(0, 1) * (self.sigma_max - self.sigma_min)

    def _mask_prob(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self._sigma(t))

    def _dmask_prob(self, t: Tensor) -> Tensor:
        return (self.sigma_max - self.sigma_min) * torch.exp(-self._sigma(t))

    def weight(self, t: Tensor | float) -> Tensor:
        t64, dtype = _as_f64(t)
        return ((self.sigma_max - self.sigma_min) / torch.expm1(self._sigma(t64))).to(dtype)

    def config(self) -> dict[str, Any]:
        return {"name": "linear_noise", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


_REGISTRY: dict[str, type[MaskingSchedule]] = {
    "loglinear": LogLinearMasking,
    "linear": LogLinearMasking,
    "cosine": CosineMasking,
    "polynomial": PolynomialMasking,
    "linear_noise": LinearNoiseMasking,
}


def masking_from_config(config: dict[str, Any]) -> MaskingSchedule:
    """Rebuild a masking schedule from ``MaskingSchedule.config()``."""
    cfg = dict(config)
    name = cfg.pop("name", None)
    if name not in _REGISTRY:
        raise ValueError(f"unknown masking schedule {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**cfg)
