"""Small layers shared by the models: a noise-level embedding and FiLM conditioning."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

EmbeddingKind = Literal["sinusoidal", "fourier"]


class NoiseLevelEmbedding(nn.Module):
    """Embed one scalar noise level per example, (B,) -> (B, dim).

    "sinusoidal": the Transformer position encoding of ``scale * c`` (Vaswani et al. 2017), as
    DDPM embeds its integer timestep: frequencies max_period^(-k / half), k = 0..half-1.
    "fourier": random Fourier features [sin(2 pi W c), cos(2 pi W c)] with fixed W ~ N(0, fourier_std^2)
    (Tancik et al. 2020; the score-SDE models embed log sigma this way).

    ``scale`` multiplies the input first; its default (1000 for sinusoidal, 1 for fourier) suits
    t in [0, 1]; use ~1 for log-SNR or log sigma inputs. The features go through an MLP
    Linear -> SiLU -> Linear unless ``mlp=False`` (then ``freq_dim`` must equal ``dim``).
    """

    def __init__(self, dim: int, kind: EmbeddingKind = "sinusoidal", *, freq_dim: int | None = None,
                 scale: float | None = None, max_period: float = 10000.0, fourier_std: float = 16.0,
                 mlp: bool = True):
        super().__init__()
        freq_dim = freq_dim or (256 if mlp else dim)
        if freq_dim % 2:
            raise ValueError("freq_dim must be even (sin and cos halves)")
        if not mlp and freq_dim != dim:
            raise ValueError("without the MLP, freq_dim must equal dim")
        self.kind = kind
        self.scale = float(scale if scale is not None else (1000.0 if kind == "sinusoidal" else 1.0))
        half = freq_dim // 2
        if kind == "sinusoidal":
            freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        elif kind == "fourier":
            freqs = 2 * math.pi * fourier_std * torch.randn(half)
        else:
            raise ValueError(f"unknown embedding kind {kind!r}; choose sinusoidal or fourier")
        # persistent: the random Fourier frequencies are part of the trained model
        self.register_buffer("freqs", freqs)
        self.mlp = (nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim)) if mlp
                    else nn.Identity())

    def features(self, c: Tensor) -> Tensor:
        """The sin/cos features before the MLP, (B,) -> (B, freq_dim), in float32."""
        if c.ndim != 1:
            raise ValueError(f"expected one noise level per example, shape (B,), got {tuple(c.shape)}")
        # float32 with autocast off: in bf16, 1000 t has a resolution of 4 near t = 1
        with torch.autocast(c.device.type, enabled=False):
            arg = (self.scale * c.float())[:, None] * self.freqs.float()[None]
            return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)

    def forward(self, c: Tensor) -> Tensor:
        return self.mlp(self.features(c))


class FiLM(nn.Module):
    """Feature-wise linear modulation (Perez et al. 2018): x * (1 + gamma(cond)) + beta(cond).

    ``x`` is (B, C, ...) (channels first) and ``cond`` is (B, cond_dim). The projection starts at
    zero, so the layer is the identity at initialisation and conditioning is learnt from there.
    """

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        gamma, beta = self.proj(cond).chunk(2, dim=-1)
        shape = gamma.shape + (1,) * (x.ndim - 2)
        return x * (1 + gamma.reshape(shape)) + beta.reshape(shape)
