"""Shared layers: noise-level embedding and FiLM."""

from __future__ import annotations

import math

import pytest
import torch

from diffcore.nn import FiLM, NoiseLevelEmbedding


def test_sinusoidal_features_are_ddpm_position_encoding():
    emb = NoiseLevelEmbedding(8, freq_dim=8, mlp=False)
    t = torch.tensor([0.0, 0.25, 1.0])
    feats = emb(t)
    assert feats.shape == (3, 8) and feats.dtype == torch.float32
    k = torch.arange(4)
    arg = 1000 * t[:, None] * torch.exp(-math.log(10000.0) * k / 4)[None]
    torch.testing.assert_close(feats, torch.cat([arg.sin(), arg.cos()], dim=-1))


def test_embedding_mlp_shapes_fourier_and_precision():
    torch.manual_seed(0)
    emb = NoiseLevelEmbedding(32, kind="fourier")
    assert emb(torch.rand(5)).shape == (5, 32)
    assert "freqs" in emb.state_dict()  # the random frequencies are saved with the model
    # distinct nearby noise levels stay distinct under bf16 autocast (features are computed in fp32)
    sin = NoiseLevelEmbedding(16, mlp=False, freq_dim=16)
    t = torch.tensor([0.999, 0.9991])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = sin(t)
    assert f.dtype == torch.float32 and not torch.equal(f[0], f[1])
    with pytest.raises(ValueError, match="shape"):
        sin(torch.rand(2, 1))


def test_film_starts_as_identity_and_broadcasts():
    torch.manual_seed(0)
    film = FiLM(channels=4, cond_dim=6)
    x, cond = torch.randn(2, 4, 10), torch.randn(2, 6)
    assert torch.equal(film(x, cond), x)
    with torch.no_grad():
        film.proj.bias.copy_(torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 2.0]))
    out = film(x, cond)
    torch.testing.assert_close(out[:, 0], 2 * x[:, 0])
    torch.testing.assert_close(out[:, 3], x[:, 3] + 2)
    assert film(torch.randn(2, 4, 3, 5), cond).shape == (2, 4, 3, 5)
