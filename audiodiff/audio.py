"""Audio I/O and the small signal helpers every part of ``audiodiff`` shares.

Waveforms are mono ``float32`` NumPy arrays in [-1, 1] at the project rate ``SAMPLE_RATE``
(22,050 Hz, the LJSpeech/HiFi-GAN convention). Files are read with ``soundfile`` (WAV, FLAC,
OGG/Vorbis, ...) and written as 16-bit PCM WAV, which is deterministic byte for byte.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from diffcore.data import DataError

SAMPLE_RATE = 22_050


def read_audio(path: str | os.PathLike, *, mono: bool = True) -> tuple[np.ndarray, int]:
    """``(wave, sample_rate)`` of an audio file, as float32 (mono by channel averaging unless ``mono=False``).

    Raises :class:`DataError` naming the file for an unreadable, empty or non-finite file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"audio file {path} does not exist; check the path (or the file_name column of "
                        "metadata.csv, which is relative to the metadata file's folder)")
    try:
        wave, sr = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        raise DataError(f"cannot decode audio file {path} ({e}); re-encode it as WAV/FLAC/OGG "
                        "(e.g. `ffmpeg -i in -ar 22050 -ac 1 out.wav`) or leave it out") from e
    if wave.shape[0] == 0:
        raise DataError(f"audio file {path} is empty (0 samples); re-export it or leave it out")
    if not np.isfinite(wave).all():
        raise DataError(f"audio file {path} contains NaN or Inf samples; re-export it or leave it out")
    return (wave.mean(axis=1) if mono else wave.T), int(sr)


def write_wav(path: str | os.PathLike, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a mono waveform in [-1, 1] as 16-bit PCM WAV. Values outside [-1, 1] are an error, not clipped."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"write_wav expects a mono waveform of shape (T,), got {wave.shape}")
    if not np.isfinite(wave).all():
        raise ValueError(f"refusing to write {path}: the waveform has NaN/Inf samples")
    peak = float(np.abs(wave).max(initial=0.0))
    if peak > 1.0:
        raise ValueError(f"refusing to write {path}: peak {peak:.3f} > 1 would clip; scale it first "
                         "(audiodiff.audio.normalize_peak)")
    sf.write(path, wave, sample_rate, subtype="PCM_16", format="WAV")


def resample(wave: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling of a 1-D wave (libsoxr, high quality), deterministic on CPU."""
    if orig_sr == target_sr:
        return np.asarray(wave, dtype=np.float32)
    import soxr

    return soxr.resample(np.ascontiguousarray(wave, dtype=np.float32), orig_sr, target_sr, quality="HQ")


def normalize_peak(wave: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale so that ``max |wave| = peak``; silence is returned unchanged."""
    m = float(np.abs(wave).max(initial=0.0))
    return wave if m == 0.0 else (wave * (peak / m)).astype(np.float32)


def trim_silence(wave: np.ndarray, sample_rate: int, *, top_db: float = 40.0, pad: float = 0.1) -> np.ndarray:
    """Cut leading and trailing audio quieter than ``top_db`` below the peak, keeping ``pad`` seconds."""
    frame = max(1, int(0.02 * sample_rate))
    n = len(wave) // frame
    if n == 0:
        return wave
    rms = np.sqrt(np.mean(wave[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1) + 1e-20)
    active = np.flatnonzero(20 * np.log10(rms / rms.max()) > -top_db)
    if active.size == 0:
        return wave
    p = int(pad * sample_rate)
    return wave[max(0, active[0] * frame - p): min(len(wave), (active[-1] + 1) * frame + p)]
