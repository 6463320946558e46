"""``MelVAE``: a KL-regularised convolutional autoencoder over log-mel spectrograms (the latent space of
the text-to-sound model), after the design of latent diffusion (Rombach et al. 2022) as AudioLDM uses it.

The mel (B, n_mels, F) is treated as a one-channel image. Each encoder level but the last halves both
axes, so the default three levels give latents (B, latent_channels, n_mels / 4, ceil(F / 4)). Frame counts
that are not a multiple of 4 are padded with silence and the padding is tracked by masks: a mel frame
mask (B, F) becomes a latent frame mask (B, ceil(F / 4)), True where a latent frame covers real frames.

The encoder gives a diagonal Gaussian posterior q(z | mel) = N(mean, exp(logvar)); its KL divergence from
N(0, I) is the closed form 0.5 (mean^2 + exp(logvar) - 1 - logvar) per element (Kingma & Welling 2014,
appendix B).

Two sets of statistics are measured on data and stored as buffers (so they are saved with the weights):
``mel_mean`` / ``mel_std`` per mel band normalise the input, and ``latent_shift`` / ``latent_scale`` make
the latents the diffusion model sees zero-mean and unit-variance (the "scale factor" of latent diffusion,
here computed, never guessed): z = (mode(q) - latent_shift) * latent_scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffcore.pretrained import PretrainedMixin, capture_config

from ..mel import MelConfig

LOGVAR_RANGE = (-30.0, 20.0)


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) element by element (nats)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def latent_frame_mask(frame_mask: Tensor, factor: int) -> Tensor:
    """(B, F) mel frame mask -> (B, ceil(F / factor)) latent frame mask (any real frame in the block)."""
    b, f = frame_mask.shape
    pad = (-f) % factor
    m = F.pad(frame_mask.bool(), (0, pad), value=False)
    return m.reshape(b, -1, factor).any(-1)


@dataclass
class Posterior:
    """q(z | mel): ``mean`` and ``logvar`` (B, C, H, W), and the latent frame ``mask`` (B, W)."""

    mean: Tensor
    logvar: Tensor
    mask: Tensor

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """Per-element KL to N(0, I), same shape as ``mean``."""
        return kl_to_standard_normal(self.mean, self.logvar)


class ResBlock2d(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv, twice, with a (1x1 projected) skip connection."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.block = nn.Sequential(nn.GroupNorm(min(groups, cin), cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                   nn.GroupNorm(min(groups, cout), cout), nn.SiLU(),
                                   nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


class MelVAE(nn.Module, PretrainedMixin):
    """Mel-spectrogram VAE.

    Args:
        mel_config: the mel front end (a ``MelConfig`` dict; default ``MelConfig()``); n_mels must be a
            multiple of the downsampling factor.
        latent_channels: channels of the latent (AudioLDM uses 8).
        channels: width of each encoder level (the decoder mirrors them); ``len(channels) - 1`` halvings,
            so three levels give 4x down in time and frequency.
        num_res_blocks: residual blocks per level.
        groups: GroupNorm groups.
    """

    def __init__(self, mel_config: dict | None = None, latent_channels: int = 8,
                 channels: Sequence[int] = (32, 64, 128), num_res_blocks: int = 1, groups: int = 8):
        super().__init__()
        self.config = capture_config(locals())
        self.config["mel_config"] = (mel_config if mel_config is not None else MelConfig().to_dict())
        self.config["channels"] = list(channels)
        self.mel_config = MelConfig.from_dict(self.config["mel_config"])
        self.latent_channels, self.factor = latent_channels, 2 ** (len(channels) - 1)
        n_mels = self.mel_config.n_mels
        if n_mels % self.factor:
            raise ValueError(f"n_mels {n_mels} is not a multiple of the VAE's downsampling factor {self.factor}")
        self.latent_height = n_mels // self.factor

        # encoder
        enc: list[nn.Module] = [nn.Conv2d(1, channels[0], 3, padding=1)]
        c = channels[0]
        for i, ch in enumerate(channels):
            for _ in range(num_res_blocks):
                enc.append(ResBlock2d(c, ch, groups))
                c = ch
            if i < len(channels) - 1:
                enc.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        enc += [ResBlock2d(c, c, groups), nn.GroupNorm(min(groups, c), c), nn.SiLU(),
                nn.Conv2d(c, 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        # decoder
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, c, 3, padding=1), ResBlock2d(c, c, groups)]
        for i, ch in reversed(list(enumerate(channels))):
            for _ in range(num_res_blocks):
                dec.append(ResBlock2d(c, ch, groups))
                c = ch
            if i > 0:
                dec += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        dec += [nn.GroupNorm(min(groups, c), c), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

        # statistics measured on data (see the module doc); saved with the weights
        self.register_buffer("mel_mean", torch.full((n_mels,), self.mel_config.silence() / 2))
        self.register_buffer("mel_std", torch.full((n_mels,), abs(self.mel_config.silence()) / 4))
        self.register_buffer("latent_shift", torch.zeros(()))
        self.register_buffer("latent_scale", torch.ones(()))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.long))  # 1: input stats, 2: + latent stats

    # ----------------------------------------------------------------------------------------------
    # shapes and masks

    def latent_frames(self, frames: int) -> int:
        return -(-frames // self.factor)

    def _pad(self, mel: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, int]:
        """Pad frames to a multiple of the factor with silence; returns (mel, mel frame mask, frames)."""
        b, n_mels, frames = mel.shape
        if n_mels != self.mel_config.n_mels:
            raise ValueError(f"expected a mel with {self.mel_config.n_mels} bands, got shape {tuple(mel.shape)}")
        if mask is None:
            mask = torch.ones(b, frames, dtype=torch.bool, device=mel.device)
        mask = mask.bool()
        silence = self.mel_config.silence()
        mel = torch.where(mask[:, None, :], mel, torch.full_like(mel, silence))
        pad = (-frames) % self.factor
        if pad:
            mel = F.pad(mel, (0, pad), value=silence)
            mask = F.pad(mask, (0, pad), value=False)
        return mel, mask, frames

    def normalize(self, mel: Tensor) -> Tensor:
        return (mel - self.mel_mean[:, None]) / self.mel_std[:, None]

    def denormalize(self, x: Tensor) -> Tensor:
        return x * self.mel_std[:, None] + self.mel_mean[:, None]

    # ----------------------------------------------------------------------------------------------
    # encode / decode

    def encode(self, mel: Tensor, mask: Tensor | None = None) -> Posterior:
        """mel (B, n_mels, F) [+ frame mask (B, F)] -> posterior over (B, C, n_mels / f, ceil(F / f))."""
        mel, mask, _ = self._pad(mel, mask)
        h = self.encoder(self.normalize(mel)[:, None])
        mean, logvar = h.chunk(2, dim=1)
        return Posterior(mean, logvar.clamp(*LOGVAR_RANGE), latent_frame_mask(mask, self.factor))

    def decode(self, z: Tensor, frames: int | None = None) -> Tensor:
        """Raw latents (B, C, H, W) -> mel (B, n_mels, W * f), cut to ``frames`` if given."""
        mel = self.denormalize(self.decoder(z)[:, 0])
        return mel[..., :frames] if frames is not None else mel

    def forward(self, mel: Tensor, mask: Tensor | None = None, *, sample: bool = True,
                generator: torch.Generator | None = None) -> tuple[Tensor, Posterior]:
        """Reconstruction (B, n_mels, F) and the posterior (training)."""
        q = self.encode(mel, mask)
        z = q.sample(generator) if sample else q.mode()
        return self.decode(z, mel.shape[-1]), q

    # ----------------------------------------------------------------------------------------------
    # the normalised latents the diffusion model works in

    def encode_latents(self, mel: Tensor, mask: Tensor | None = None, *, sample: bool = False,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """mel -> (z, latent frame mask) with z = (latent - latent_shift) * latent_scale (posterior mode
        unless ``sample``)."""
        q = self.encode(mel, mask)
        z = q.sample(generator) if sample else q.mode()
        return (z - self.latent_shift) * self.latent_scale, q.mask

    def decode_latents(self, z: Tensor, frames: int | None = None) -> Tensor:
        """Normalised latents -> mel (the inverse map of ``encode_latents``' scaling, then ``decode``)."""
        return self.decode(z / self.latent_scale + self.latent_shift, frames)

    # ----------------------------------------------------------------------------------------------
    # statistics from data

    @torch.no_grad()
    def fit_input_statistics(self, batches: Iterable[tuple[Tensor, Tensor | None]], min_std: float = 1e-2) -> None:
        """Set ``mel_mean`` / ``mel_std`` per band from (mel, frame mask) batches (real frames only)."""
        total = sq = count = None
        for mel, mask in batches:
            m = (torch.ones(mel.shape[0], mel.shape[-1], dtype=torch.bool, device=mel.device) if mask is None
                 else mask.bool()).to(mel.device)
            w = m[:, None, :].double()
            x = mel.double()
            s, s2, n = (x * w).sum((0, 2)), (x * x * w).sum((0, 2)), w.sum((0, 2))
            total, sq, count = (s, s2, n) if total is None else (total + s, sq + s2, count + n)
        if total is None or float(count.min()) < 2:
            raise ValueError("no data frames to compute the mel statistics from")
        mean = total / count
        std = (sq / count - mean**2).clamp(min=0).sqrt().clamp(min=min_std)
        self.mel_mean.copy_(mean.float())
        self.mel_std.copy_(std.float())
        self.calibrated.fill_(max(int(self.calibrated), 1))

    @torch.no_grad()
    def latent_statistics(self, batches: Iterable[tuple[Tensor, Tensor | None]]) -> tuple[float, float]:
        """(mean, std) of the posterior-mode latents over the real latent frames of the batches."""
        s = s2 = n = 0.0
        for mel, mask in batches:
            q = self.encode(mel, mask)
            w = q.mask[:, None, None, :].expand_as(q.mean).double()
            z = q.mean.double()
            s, s2, n = s + float((z * w).sum()), s2 + float((z * z * w).sum()), n + float(w.sum())
        if n < 2:
            raise ValueError("no data to compute the latent statistics from")
        mean = s / n
        return mean, math.sqrt(max(s2 / n - mean * mean, 1e-12))

    @torch.no_grad()
    def fit_latent_statistics(self, batches: Iterable[tuple[Tensor, Tensor | None]]) -> tuple[float, float]:
        """Set ``latent_shift`` = mean and ``latent_scale`` = 1 / std of the data's latents; returns them."""
        mean, std = self.latent_statistics(batches)
        self.set_latent_statistics(mean, 1.0 / std)
        return mean, 1.0 / std

    @torch.no_grad()
    def set_latent_statistics(self, shift: float, scale: float) -> None:
        self.latent_shift.fill_(shift)
        self.latent_scale.fill_(scale)
        self.calibrated.fill_(2)

    @property
    def is_calibrated(self) -> bool:
        return int(self.calibrated) >= 2

    def save_pretrained(self, directory, *, extra=None):  # noqa: D102 - adds mel_config.json
        return super().save_pretrained(directory, extra={"mel_config.json": self.mel_config.to_dict(),
                                                         **(extra or {})})
