"""The project's one mel-spectrogram front end, and Griffin-Lim inversion from the same mel.

Every audio model here (the vocoder, the text-to-sound model) reads and writes mels made by
``MelSpectrogram(MelConfig(...))`` and stores its ``MelConfig`` next to its weights, so two models
can be checked for agreement before one's output is fed to the other (``check_compatible``).

The default is the LJSpeech / HiFi-GAN convention, so that mels from most open TTS models fit as
they are: 22,050 Hz, n_fft 1024, hop 256, Hann window of 1024, 80 Slaney-scale bands with Slaney
area normalisation (librosa's default filters) over 0-8 kHz, magnitude (not power), the signal
reflect-padded by (n_fft - hop) / 2 on both sides and framed without centring, then
``ln(max(mel, 1e-5))``. With that padding a clip of T samples gives exactly T / hop frames when
hop divides T, frame i covering samples [i hop, (i + 1) hop) at its centre.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Compression = Literal["ln", "log10"]


class MelConfigMismatchError(ValueError):
    """Two parts of a pipeline use different mel front ends; ``differences`` maps field -> (ours, theirs)."""

    def __init__(self, message: str, differences: dict[str, tuple[Any, Any]]):
        super().__init__(message)
        self.differences = differences


@dataclass(frozen=True)
class MelConfig:
    """Everything that defines a mel spectrogram; saved with every audio model.

    Args:
        sample_rate: audio sample rate in Hz.
        n_fft: FFT size in samples. win_length: analysis window length in samples (<= n_fft).
        hop_length: samples between frames; a vocoder's upsampling factors multiply to it.
        window: "hann" (periodic Hann, as torch.hann_window) or "hamming".
        n_mels: number of mel bands. f_min, f_max: band edges in Hz (f_max <= sample_rate / 2).
        mel_scale: "slaney" (librosa / HiFi-GAN) or "htk". filter_norm: "slaney" (area-normalised
            triangles, librosa's default) or None (peak 1).
        power: 1 for magnitude, 2 for power spectra.
        compression: "ln" (natural log, HiFi-GAN) or "log10". clamp_min: floor applied before the log.
        norm_mean, norm_std: the stored value is (log(mel) - norm_mean) / norm_std; 0 and 1 leave the
            log-mel as it is (the HiFi-GAN convention).
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    window: Literal["hann", "hamming"] = "hann"
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float = 8000.0
    mel_scale: Literal["slaney", "htk"] = "slaney"
    filter_norm: Literal["slaney"] | None = "slaney"
    power: float = 1.0
    compression: Compression = "ln"
    clamp_min: float = 1e-5
    norm_mean: float = 0.0
    norm_std: float = 1.0

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if (self.n_fft - self.hop_length) % 2:
            raise ValueError(f"n_fft - hop_length must be even for symmetric padding, got {self.n_fft} - "
                             f"{self.hop_length}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min {self.f_min}, "
                             f"f_max {self.f_max}, sample_rate {self.sample_rate}")
        if self.compression not in ("ln", "log10"):
            raise ValueError(f"compression must be 'ln' or 'log10', got {self.compression!r}")
        if self.norm_std <= 0 or self.clamp_min <= 0:
            raise ValueError("norm_std and clamp_min must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown mel config fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    def differences(self, other: MelConfig) -> dict[str, tuple[Any, Any]]:
        """Fields whose values differ: {name: (self's value, other's value)}."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if not _same(a[k], b[k])}

    def check_compatible(self, other: MelConfig | dict[str, Any], what: str = "the input",
                         ours: str = "this model") -> None:
        """Raise ``MelConfigMismatchError`` naming every differing field if ``other`` differs.

        ``what`` names the other side in the message (e.g. "the data set", "the text-to-sound model").
        """
        if isinstance(other, dict):
            other = MelConfig.from_dict(other)
        diff = self.differences(other)
        if diff:
            parts = ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in diff.items())
            raise MelConfigMismatchError(
                f"the mel config of {what} differs from that of {ours} ({ours}'s value vs {what}'s): {parts}. "
                f"Mels made with other settings do not fit {ours}; recompute them with its MelConfig "
                "(mel_config.json next to its weights).", diff)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for a clip of ``num_samples`` samples (num_samples // hop for a whole number of hops)."""
        return (num_samples + (self.n_fft - self.hop_length) - self.n_fft) // self.hop_length + 1

    def silence(self) -> float:
        """The stored value of a silent band: (log(clamp_min) - norm_mean) / norm_std."""
        return (self._log(math.log(self.clamp_min)) - self.norm_mean) / self.norm_std

    def _log(self, ln_value: float) -> float:
        return ln_value if self.compression == "ln" else ln_value / math.log(10)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _window(config: MelConfig) -> Tensor:
    fn = {"hann": torch.hann_window, "hamming": torch.hamming_window}.get(config.window)
    if fn is None:
        raise ValueError(f"unknown window {config.window!r}; choose hann or hamming")
    return fn(config.win_length)


def _hz_to_mel(f: Tensor, scale: str) -> Tensor:
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    # Slaney: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4)
    lin = f / (200.0 / 3.0)
    return torch.where(f >= 1000.0, 15.0 + torch.log(f.clamp(min=1000.0) / 1000.0) * (27.0 / math.log(6.4)), lin)


def _mel_to_hz(m: Tensor, scale: str) -> Tensor:
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    lin = m * (200.0 / 3.0)
    return torch.where(m >= 15.0, 1000.0 * torch.exp((m - 15.0) * (math.log(6.4) / 27.0)), lin)


def mel_filterbank(config: MelConfig) -> Tensor:
    """Mel filter matrix (n_mels, n_fft // 2 + 1) of triangles evenly spaced on the mel scale.

    Built in float64, returned in float32; with the default (Slaney) settings it equals
    ``librosa.filters.mel`` (tests/test_mel.py checks it against librosa for both scales and norms).
    """
    if config.mel_scale not in ("slaney", "htk"):
        raise ValueError(f"unknown mel_scale {config.mel_scale!r}; choose slaney or htk")
    if config.filter_norm not in ("slaney", None):
        raise ValueError(f"unknown filter_norm {config.filter_norm!r}; choose 'slaney' or None")
    fft_hz = torch.linspace(0.0, config.sample_rate / 2, config.n_fft // 2 + 1, dtype=torch.float64)
    lo, hi = (_hz_to_mel(torch.tensor(f, dtype=torch.float64), config.mel_scale) for f in (config.f_min, config.f_max))
    edges = _mel_to_hz(torch.linspace(float(lo), float(hi), config.n_mels + 2, dtype=torch.float64), config.mel_scale)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_hz - left) / (centre - left)
    falling = (right - fft_hz) / (right - centre)
    fb = torch.minimum(rising, falling).clamp(min=0.0)
    if config.filter_norm == "slaney":
        fb = fb * (2.0 / (right - left))  # equal area per band
    return fb.float().contiguous()


class MelSpectrogram(nn.Module):
    """Audio (B, T) or (T,) in [-1, 1] -> stored log-mel (B, n_mels, T // hop), computed in float32.

    Runs on whatever device the module is on (its window and filters are buffers), outside autocast.
    """

    def __init__(self, config: MelConfig | None = None):
        super().__init__()
        self.config = config or MelConfig()
        self.register_buffer("window", _window(self.config), persistent=False)
        self.register_buffer("filters", mel_filterbank(self.config), persistent=False)

    def magnitude(self, audio: Tensor) -> Tensor:
        """Linear-frequency spectrogram |STFT|^power, (B, n_fft // 2 + 1, frames)."""
        c = self.config
        x = audio.float()
        squeeze = x.ndim == 1
        x = x[None] if squeeze else x
        pad = (c.n_fft - c.hop_length) // 2
        mode = "reflect" if x.shape[-1] > pad else "constant"
        with torch.autocast(x.device.type, enabled=False):
            x = F.pad(x[:, None], (pad, pad), mode=mode)[:, 0]
            spec = torch.stft(x, c.n_fft, c.hop_length, c.win_length, self.window, center=False,
                              return_complex=True)
            mag = spec.abs() if c.power == 1 else spec.abs() ** c.power
        return mag[0] if squeeze else mag

    def compress(self, mel_linear: Tensor) -> Tensor:
        """Linear mel energies -> stored values (log, then the affine normalisation)."""
        c = self.config
        log = torch.log(mel_linear.clamp(min=c.clamp_min))
        if c.compression == "log10":
            log = log / math.log(10)
        return (log - c.norm_mean) / c.norm_std

    def decompress(self, mel: Tensor) -> Tensor:
        """Stored values -> linear mel energies (the inverse of ``compress`` above the floor)."""
        c = self.config
        log = mel * c.norm_std + c.norm_mean
        return torch.exp(log * math.log(10) if c.compression == "log10" else log)

    def forward(self, audio: Tensor) -> Tensor:
        with torch.autocast(audio.device.type, enabled=False):
            return self.compress(torch.matmul(self.filters, self.magnitude(audio)))


# --------------------------------------------------------------------------------------------------
# Griffin-Lim from the mel (the no-learning reference)


def mel_to_magnitude(mel: Tensor, config: MelConfig, n_iter: int = 200) -> Tensor:
    """Non-negative linear spectrogram whose mel matches ``mel`` (B, n_mels, F) -> (B, n_freq, F).

    Solves min ||M S - mel_linear||^2 subject to S >= 0 with Lee & Seung's multiplicative updates
    (2001), S <- S * (M^T y) / (M^T M S), started from one update of S = 1. The equations are underdetermined
    (80 bands, 513 bins), so many S fit; this one spreads each band's energy over its bins.
    """
    fb = mel_filterbank(config).to(mel.device)  # (n_mels, n_freq)
    y = MelSpectrogram(config).to(mel.device).decompress(mel.float())
    # undo the clamp floor: bands at the floor were (close to) silent
    y = torch.where(y <= config.clamp_min * (1 + 1e-4), torch.zeros_like(y), y)
    mty = torch.einsum("mf,bmt->bft", fb, y)
    s = mty / ((fb.T @ fb).sum(1)[None, :, None] + 1e-12)  # one update from S = 1
    for _ in range(n_iter):
        # M^T (M S), not (M^T M) S: two products through the n_mels bands cost n_mels / n_freq * 2 of one
        # n_freq x n_freq product (a third for 80 of 513)
        s = (s * mty).div_(torch.matmul(fb.T, torch.matmul(fb, s)).add_(1e-12))
    return s


def griffin_lim(mel: Tensor, config: MelConfig | None = None, n_iter: int = 60, momentum: float = 0.99,
                generator: torch.Generator | None = None) -> Tensor:
    """Waveform (B, F * hop) from a stored mel (B, n_mels, F) (or (n_mels, F) -> (F * hop,)).

    Magnitudes from ``mel_to_magnitude``, phase by fast Griffin-Lim (Perraudin et al. 2013: Griffin
    & Lim 1984 with momentum), random initial phase from ``generator``. Frames are placed where
    ``MelSpectrogram`` took them: with centred frames at i * hop on a signal y of (F - 1) * hop
    samples, the original signal is y delayed by hop / 2.
    """
    config = config or MelConfig()
    squeeze = mel.ndim == 2
    mel = mel[None] if squeeze else mel
    frames = mel.shape[-1]
    if frames < 2:  # centred framing needs two frames; pad with silence and trim afterwards
        mel = F.pad(mel, (0, 2 - frames), value=config.silence())
    mag = mel_to_magnitude(mel, config)
    if config.power != 1:
        mag = mag ** (1 / config.power)
    hop, n_fft, n = config.hop_length, config.n_fft, mag.shape[-1]
    length = (n - 1) * hop
    window = _window(config).to(mel.device)

    def stft(x: Tensor) -> Tensor:
        return torch.stft(x, n_fft, hop, config.win_length, window, center=True, pad_mode="constant",
                          return_complex=True)

    def istft(z: Tensor) -> Tensor:
        return torch.istft(z, n_fft, hop, config.win_length, window, center=True, length=length)

    phase = torch.rand(mag.shape, generator=generator).to(mel.device) * (2 * math.pi)
    angles = torch.polar(torch.ones_like(mag), phase)
    prev = mag * angles
    for _ in range(n_iter):
        rebuilt = stft(istft(mag * angles))
        # Perraudin et al. eq. (4): c_n = t_n + alpha (t_n - t_{n-1}), then keep only the phase
        angles = rebuilt + momentum * (rebuilt - prev)
        angles = angles / angles.abs().clamp(min=1e-8)
        prev = rebuilt
    y = istft(mag * angles)
    out = F.pad(y, (hop // 2, hop - hop // 2))[:, : frames * hop]
    return out[0] if squeeze else out


# --------------------------------------------------------------------------------------------------
# mel images for logging (no plotting library needed)


def mel_image(mel: Tensor, vmin: float | None = None, vmax: float | None = None) -> Tensor:
    """A (n_mels, F) mel as an RGB uint8 image (3, n_mels, F), low bands at the bottom.

    Colours run black -> purple -> orange -> yellow (a small "magma"-like ramp).
    """
    m = mel.detach().float().cpu()
    lo = float(m.min()) if vmin is None else vmin
    hi = float(m.max()) if vmax is None else vmax
    v = ((m - lo) / max(hi - lo, 1e-8)).clamp(0, 1).flip(0)
    stops = torch.tensor([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]],
                         dtype=torch.float32)
    pos = v * (len(stops) - 1)
    i = pos.floor().long().clamp(max=len(stops) - 2)
    frac = (pos - i)[..., None]
    rgb = stops[i] * (1 - frac) + stops[i + 1] * frac
    return rgb.round().to(torch.uint8).permute(2, 0, 1).contiguous()


def write_png(path, image: Tensor) -> None:
    """Write a (3, H, W) uint8 image as a PNG file (zlib only)."""
    import struct
    import zlib

    img = image.permute(1, 2, 0).contiguous().numpy()
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)
