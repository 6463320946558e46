"""Synthetic test signals with known structure, for tests and benchmarks of the audio models."""

from __future__ import annotations

import numpy as np

from .audio import SAMPLE_RATE


def speechlike(seconds: float = 1.0, f0: float = 120.0, seed: int = 0, *, phase: float = 0.0,
               noise: float = 0.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A voiced, syllable-modulated harmonic signal (peak 0.3) with a formant-like spectral envelope.

    ``f0`` is the mean pitch in Hz (vibrato +-20%), syllables come at 2.5 Hz (offset by ``phase`` rad),
    and ``noise`` adds white noise of that standard deviation (a recording's noise floor).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = f0 * (1 + 0.2 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    ph = 2 * np.pi * np.cumsum(pitch) / sample_rate
    x = sum(np.sin(k * ph) * np.exp(-(((k * pitch) - 700) / 500) ** 2 - 0.05 * k) for k in range(1, 40))
    x = x * np.clip(np.sin(2 * np.pi * 2.5 * t + phase), 0, None) ** 0.5
    x = 0.3 * x / np.abs(x).max()
    if noise:
        x = x + noise * rng.standard_normal(len(t))
    return x.astype(np.float32)
