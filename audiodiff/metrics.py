"""Objective measures of a vocoded (or otherwise regenerated) waveform against its reference.

* ``log_mel_distance``: mean absolute difference of the two log-mel spectrograms, in the stored units
  of the mel front end (natural log for the default config): 0 is identical.
* ``mr_stft_distance``: multi-resolution STFT distance (Yamamoto et al. 2020, Parallel WaveGAN, eq. 4-6):
  spectral convergence plus mean absolute log-magnitude difference, averaged over three STFT sizes.
* ``pesq_wb``: wideband PESQ (ITU-T P.862.2) after resampling both signals to 16 kHz; MOS-LQO scale,
  at most about 4.64 (identical signals).
* ``stoi_score``: short-time objective intelligibility (Taal et al. 2011), in [0, 1]; 1 for identical signals.

All take 1-D waveforms (tensors or arrays) at ``sample_rate``; the longer one is cut to the shorter
(a vocoder returns frames * hop samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .audio import resample
from .mel import MelConfig, MelSpectrogram

MR_STFT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048))
PESQ_MAX = 4.644  # P.862.2's mapping of a perfect score


def _pair(ref: Tensor | np.ndarray, est: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    r = torch.as_tensor(np.asarray(ref) if not isinstance(ref, Tensor) else ref, dtype=torch.float32).flatten()
    e = torch.as_tensor(np.asarray(est) if not isinstance(est, Tensor) else est, dtype=torch.float32).flatten()
    n = min(r.numel(), e.numel())
    return r[:n].cpu(), e[:n].cpu()


def log_mel_distance(ref: Tensor | np.ndarray, est: Tensor | np.ndarray, config: MelConfig | None = None) -> float:
    """Mean |logmel(ref) - logmel(est)| with the project's mel front end (``config``, default ``MelConfig()``)."""
    r, e = _pair(ref, est)
    mel = MelSpectrogram(config or MelConfig())
    return float((mel(r) - mel(e)).abs().mean())


def mr_stft_distance(ref: Tensor | np.ndarray, est: Tensor | np.ndarray,
                     resolutions: Sequence[tuple[int, int, int]] = MR_STFT_RESOLUTIONS) -> float:
    """Multi-resolution STFT distance: mean over (n_fft, hop, win) of ||S_r| - |S_e||_F / ||S_r||_F +
    mean |log |S_r| - log |S_e||, with magnitudes floored at 1e-7."""
    r, e = _pair(ref, est)
    total = 0.0
    for n_fft, hop, win in resolutions:
        window = torch.hann_window(win)
        sr = torch.stft(r, n_fft, hop, win, window, return_complex=True).abs().clamp(min=1e-7)
        se = torch.stft(e, n_fft, hop, win, window, return_complex=True).abs().clamp(min=1e-7)
        convergence = torch.linalg.norm(sr - se) / torch.linalg.norm(sr)
        log_mag = (sr.log() - se.log()).abs().mean()
        total += float(convergence + log_mag)
    return total / len(resolutions)


def pesq_wb(ref: Tensor | np.ndarray, est: Tensor | np.ndarray, sample_rate: int) -> float:
    """Wideband PESQ at 16 kHz (both signals resampled); NaN when PESQ finds no speech in ``ref``."""
    from pesq import pesq

    r, e = _pair(ref, est)
    if float(r.abs().max()) == 0:
        return math.nan  # no speech to compare with
    if float(e.abs().max()) == 0:  # pesq divides by the peak: score a silent output as faint noise instead
        e = 1e-6 * torch.randn(e.shape, generator=torch.Generator().manual_seed(0))
    if sample_rate != 16000:
        r, e = (torch.from_numpy(resample(w.numpy(), sample_rate, 16000)) for w in (r, e))
    try:
        return float(pesq(16000, r.double().numpy(), e.double().numpy(), "wb"))
    except Exception:  # pesq raises NoUtterancesError / BufferTooShortError for silent or too-short input
        return math.nan


def stoi_score(ref: Tensor | np.ndarray, est: Tensor | np.ndarray, sample_rate: int, extended: bool = False) -> float:
    """STOI (or extended STOI) of ``est`` against ``ref``; pystoi resamples to 10 kHz itself."""
    from pystoi import stoi

    r, e = _pair(ref, est)
    return float(stoi(r.double().numpy(), e.double().numpy(), sample_rate, extended=extended))


def all_metrics(ref: Tensor | np.ndarray, est: Tensor | np.ndarray, sample_rate: int,
                config: MelConfig | None = None) -> dict[str, float]:
    """{"logmel": ..., "mrstft": ..., "pesq_wb": ..., "stoi": ...} of ``est`` against ``ref``."""
    return {"logmel": log_mel_distance(ref, est, config), "mrstft": mr_stft_distance(ref, est),
            "pesq_wb": pesq_wb(ref, est, sample_rate), "stoi": stoi_score(ref, est, sample_rate)}
