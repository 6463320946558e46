"""``Vocoder``: a trained WaveGradNet with its mel front end, training schedule and searched noise
schedules, ready to turn mels into waveforms.

    vocoder = Vocoder.from_pretrained("runs/vocoder-tiny/model")
    wave = vocoder(mel, steps=6, seed=0)             # mel (B, n_mels, F) -> wave (B, F * hop)
    wave = vocoder(mel, betas=[1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5])  # an explicit 6-step table
    wave = vocoder.copy_synthesis(audio)             # analyse with the model's own mel, resynthesise

Inference runs DDPM's ancestral sampler (WaveGrad's Algorithm 2: ``diffcore.samplers.sample_ddim``
with eta = 1, which is ``sample_ddpm``; eta = 0 gives deterministic DDIM) along the times where a
short beta table's noise levels sit inside the training schedule (``diffcore.timesteps.from_betas``):
the network is conditioned on the continuous noise level, so any table within the trained range
works without retraining.

Long inputs: the sampler always runs on the whole signal (so the noise it draws, and hence the output
for a seed, does not depend on chunking), while each network evaluation is split into windows of
``chunk_frames`` mel frames plus ``context_frames`` of context on each side, and neighbouring windows
are cross-faded over ``fade_frames`` at their boundary. With a context wider than the network's
receptive field (about 8 frames for both sizes) the chunked result equals the unchunked one up to
float rounding; the cross-fade keeps it seamless even with less.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffcore import timesteps
from diffcore.parameterization import Prediction, as_denoiser
from diffcore.pretrained import read_json
from diffcore.samplers import prior_sample, sample_ddim
from diffcore.schedules import LinearBetaSchedule, Schedule, schedule_from_config

from ..mel import MelConfig, MelSpectrogram
from .model import WaveGradNet

VOCODER_FILE = "vocoder.json"
MEL_FILE = "mel_config.json"


def default_train_schedule() -> LinearBetaSchedule:
    """WaveGrad's training schedule: 1000 linear betas from 1e-6 to 0.01 (sqrt(alpha_bar) ends at 0.08)."""
    return LinearBetaSchedule(1e-6, 1e-2, 1000)


class PriorGradStd(nn.Module):
    """PriorGrad's data-dependent prior (Lee et al., ICLR 2022): a per-sample noise std from the mel.

    mel (B, n_mels, F) -> std (B, F * hop). The frame energy e_f = sqrt(mean_b m_bf^2) of the linear
    mel magnitudes m is divided by that of unit-variance white noise under the same front end, an
    estimate of the frame's RMS amplitude (correlation 0.98 with the true RMS on speech-small), then
    std = clamp(rms / rms_ref, std_min, 1) is held for the frame's hop samples. Loud frames get the
    standard prior, quiet ones down to ``std_min`` (the paper's 0.1): the prior is closer to the data,
    so the net has less to learn. Training and sampling then run in whitened coordinates x / std
    (``Vocoder`` and ``VocoderModule`` with ``prior="priorgrad"``).
    """

    def __init__(self, mel_config: MelConfig, std_min: float = 0.1, rms_ref: float = 0.5):
        super().__init__()
        if not 0 < std_min <= 1 or rms_ref <= 0:
            raise ValueError(f"need 0 < std_min <= 1 and rms_ref > 0, got std_min {std_min}, rms_ref {rms_ref}")
        self.mel_fn, self.std_min, self.rms_ref = MelSpectrogram(mel_config), float(std_min), float(rms_ref)
        white = torch.randn(4 * mel_config.sample_rate, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            self.white_energy = float(self.energy(self.mel_fn(white)).mean())

    def energy(self, mel: Tensor) -> Tensor:
        """RMS over bands of the linear mel magnitudes, (..., n_mels, F) -> (..., F)."""
        return self.mel_fn.decompress(mel.float()).pow(2).mean(-2).sqrt()

    def config(self) -> dict[str, Any]:
        return {"kind": "priorgrad", "std_min": self.std_min, "rms_ref": self.rms_ref}

    def forward(self, mel: Tensor) -> Tensor:
        rms = self.energy(mel) / self.white_energy
        std = (rms / self.rms_ref).clamp(self.std_min, 1.0)
        return std.repeat_interleave(self.mel_fn.config.hop_length, dim=-1)

    def operators(self, mel: Tensor) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], Tensor | None]:
        """(color, whiten, std) for ``mel``: x = color(y) = y * std, y = whiten(x) = x / std (std (B, T))."""
        std = self(mel)
        return (lambda y: y * std.to(y.dtype)), (lambda x: x / std.to(x.dtype)), std


class SpectralPrior(nn.Module):
    """A spectrally shaped prior in the spirit of SpecGrad (Koizumi et al., Interspeech 2022): noise
    N(0, L L^T) with L a time-varying filter that follows the mel's spectral envelope.

    L x = iSTFT(H * STFT(x)) with the mel front end's window, FFT size and hop (STFT centred, so the
    identity filter gives x back exactly) and zero-phase gains H (B, n_freq, F + 1): each band's mean
    linear magnitude (its mel value over its filter's area) spread over its bins through the filters,
    relative to white noise of unit variance, times ``gain``, clamped to [h_min, 1]. With gain 1 the
    prior noise has the level of the signal in each bin (gain 2 measured worse at the demo's budget);
    quiet bins and frames get little noise (down to h_min), loud ones the standard prior. As in
    PriorGrad the net predicts the white noise and sampling runs on whitened y = L^-1 x (L^-1: the same
    filter with 1 / H, an approximate inverse: zero-phase gains on windowed frames, about 5% relative
    error on speech). Unlike PriorGrad's per-frame std, the spectral tilt of speech is in the prior
    too, so residual noise is shaped like the speech instead of white. (SpecGrad's cepstral smoothing
    and minimum phase are left out.)
    """

    def __init__(self, mel_config: MelConfig, h_min: float = 0.001, gain: float = 1.0, y_clip: float = 20.0):
        super().__init__()
        if not 0 < h_min <= 1 or gain <= 0 or y_clip <= 0:
            raise ValueError(f"need 0 < h_min <= 1, gain > 0 and y_clip > 0, got h_min {h_min}, gain {gain}, "
                             f"y_clip {y_clip}")
        self.mel_fn, self.h_min, self.gain = MelSpectrogram(mel_config), float(h_min), float(gain)
        self.y_clip = float(y_clip)
        fb = self.mel_fn.filters.double()  # (n_mels, n_freq)
        area = fb.sum(1).clamp(min=1e-12)
        # bins -> weights over bands (rows sum to 1); bins no filter covers take their nearest covered bin's
        spread = fb.T / fb.T.sum(1, keepdim=True).clamp(min=1e-12)
        covered = (fb.sum(0) > 0).nonzero().flatten()
        nearest = covered[(torch.arange(fb.shape[1])[:, None] - covered[None]).abs().argmin(1)]
        spread = spread[nearest]
        # white noise of unit variance has an expected |STFT| of about sqrt(sum window^2) in every bin
        self.register_buffer("bands_to_bins", (spread / area[None]).float() / self.mel_fn.window.pow(2).sum().sqrt(),
                             persistent=False)

    def config(self) -> dict[str, Any]:
        return {"kind": "spectral", "h_min": self.h_min, "gain": self.gain, "y_clip": self.y_clip}

    def whitened_clip(self, clip: tuple[float, float]) -> tuple[float, float]:
        """The sampler's bound on the whitened x0 estimate for a data clip (a filter has no exact image of
        a sample-wise clip): y_clip times it. Without one an undertrained net's estimate can run away at
        large steps (NaN after 4 of 6 steps at 400 training steps); whitened speech stays within 9-17 at
        gain 1 (speech-small), so 20 rarely touches real signal."""
        return clip[0] * self.y_clip, clip[1] * self.y_clip

    def gains(self, mel: Tensor) -> Tensor:
        """H (B, n_freq, F + 1) for mel (B, n_mels, F): STFT frame j (centred at sample j * hop) lies between
        mel frames j - 1 and j, so it takes their mean in the log domain."""
        m = torch.cat([mel[..., :1], mel, mel[..., -1:]], -1).float()
        m = self.mel_fn.decompress((m[..., 1:] + m[..., :-1]) / 2)
        return (self.gain * self.bands_to_bins.to(m.device) @ m).clamp(self.h_min, 1.0)

    def filter(self, x: Tensor, h: Tensor) -> Tensor:
        """iSTFT(h * STFT(x)) for x (B, T) with T = frames * hop."""
        c, window = self.mel_fn.config, self.mel_fn.window.to(x.device)
        spec = torch.stft(x.float(), c.n_fft, c.hop_length, c.win_length, window, center=True, return_complex=True)
        return torch.istft(spec * h, c.n_fft, c.hop_length, c.win_length, window, center=True,
                           length=x.shape[-1]).to(x.dtype)

    def operators(self, mel: Tensor) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], None]:
        """(color, whiten, None) for ``mel``: x = color(y) = L y, y = whiten(x) = L^-1 x (no per-sample std)."""
        h = self.gains(mel)
        return (lambda y: self.filter(y, h)), (lambda x: self.filter(x, 1 / h)), None


PRIORS: dict[str, type[nn.Module]] = {"priorgrad": PriorGradStd, "spectral": SpectralPrior}


def make_prior(prior: str | Mapping[str, Any] | None, mel_config: MelConfig) -> PriorGradStd | SpectralPrior | None:
    """None for the standard N(0, I) prior ("standard" or None); a ``PriorGradStd`` for "priorgrad", a
    ``SpectralPrior`` for "spectral", or either from its saved config ({"kind": "priorgrad", "std_min": ...})."""
    if prior is None or prior == "standard" or (isinstance(prior, Mapping) and prior.get("kind") == "standard"):
        return None
    if isinstance(prior, str) and prior in PRIORS:
        return PRIORS[prior](mel_config)
    if isinstance(prior, Mapping) and prior.get("kind") in PRIORS:
        return PRIORS[prior["kind"]](mel_config, **{k: v for k, v in prior.items() if k != "kind"})
    raise ValueError(f"unknown prior {prior!r}; choose 'standard', 'priorgrad' or 'spectral' (or a saved prior "
                     "config)")


def betas_from_alpha_bars(alpha_bars: Tensor) -> Tensor:
    """Betas of a table whose cumulative products are ``alpha_bars`` (increasing noise)."""
    ab = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars.to(torch.float64)])
    return 1 - ab[1:] / ab[:-1]


def logsnr_uniform_betas(schedule: Schedule, steps: int, num_points: int | None = None) -> Tensor:
    """A generic beta table: ``steps`` noise levels equally spaced in log-SNR between the training
    schedule's first point (t = 1 / num_points) and its end (t = 1); a starting point of the search."""
    n = num_points or getattr(schedule, "num_steps", 1000)
    lo, hi = schedule.logsnr(torch.tensor([1 / n, 1.0], dtype=torch.float64)).tolist()
    lams = torch.linspace(lo, hi, steps, dtype=torch.float64) if steps > 1 else torch.tensor([hi], dtype=torch.float64)
    return betas_from_alpha_bars(torch.sigmoid(lams))


def check_betas(betas: Sequence[float] | Tensor, schedule: Schedule) -> Tensor:
    """Validate an inference beta table against the training schedule; returns it as float64."""
    b = torch.as_tensor(betas, dtype=torch.float64).flatten()
    if b.numel() == 0 or not torch.all((b > 0) & (b < 1)):
        raise ValueError(f"betas must be a non-empty list of values in (0, 1), got {b.tolist()}")
    alpha_end = float(torch.exp(torch.log1p(-b).sum() / 2))
    alpha_min = float(schedule.alpha(torch.tensor(1.0, dtype=torch.float64)))
    if alpha_end < alpha_min * (1 - 1e-9):
        raise ValueError(f"this beta table ends at noise level sqrt(alpha_bar) = {alpha_end:.4g}, beyond the "
                         f"training schedule's range (down to {alpha_min:.4g}); use smaller betas")
    return b


class ChunkedNet:
    """``net(x_t, c, mel=mel)`` evaluated on overlapping windows of the mel (see the module doc)."""

    def __init__(self, net: nn.Module, hop_length: int, chunk_frames: int | None, context_frames: int = 16,
                 fade_frames: int = 8):
        if chunk_frames is not None and chunk_frames < 1:
            raise ValueError("chunk_frames must be positive (or None for no chunking)")
        if fade_frames > min(2 * context_frames, chunk_frames or fade_frames):
            raise ValueError("fade_frames must be at most 2 * context_frames and at most chunk_frames")
        self.net, self.hop = net, hop_length
        self.chunk, self.context, self.fade = chunk_frames, context_frames, fade_frames

    def __call__(self, x_t: Tensor, c: Tensor, mel: Tensor) -> Tensor:
        frames, hop = mel.shape[-1], self.hop
        if self.chunk is None or frames <= self.chunk + 2 * self.context:
            return self.net(x_t, c, mel=mel)
        bounds = list(range(0, frames, self.chunk)) + [frames]
        if bounds[-1] - bounds[-2] < self.fade:  # no sliver of a last chunk
            bounds.pop(-2)
        out = torch.zeros_like(x_t)
        width = self.fade * hop
        for a, b in zip(bounds[:-1], bounds[1:]):
            lo, hi = max(0, a - self.context), min(frames, b + self.context)
            eps = self.net(x_t[..., lo * hop: hi * hop], c, mel=mel[..., lo:hi])
            # weight: 1 inside [a, b), ramps of fade_frames centred on interior boundaries, where the
            # rising ramp of one window and the falling ramp of its neighbour add up to 1
            n = torch.arange(lo * hop, hi * hop, device=x_t.device, dtype=torch.float64)
            w = torch.ones_like(n)
            if a > 0:
                w = w * _ramp(n, a * hop, width)
            if b < frames:
                w = w * (1 - _ramp(n, b * hop, width))
            out[..., lo * hop: hi * hop] += eps * w.to(eps.dtype)
        return out


def _ramp(n: Tensor, edge: int, width: int) -> Tensor:
    """0 before ``edge - width / 2``, 1 after ``edge + width / 2``, linear in between (a step if width 0)."""
    if width == 0:
        return (n >= edge).to(n.dtype)
    return ((n + 0.5 - (edge - width / 2)) / width).clamp(0, 1)


class Vocoder(nn.Module):
    """A mel-to-waveform diffusion vocoder.

    Args:
        net: the trained ``WaveGradNet``.
        train_schedule: the schedule it was trained with (default: WaveGrad's linear 1e-6..0.01, 1000).
        mel_config: the mel front end it was trained on.
        noise_schedules: searched inference beta tables, {number of steps: betas}.
        default_steps: steps used when none are given (the searched schedule's length after a search).
        prediction: what the net predicts ("eps" for WaveGrad).
        clip: x0 estimates are clamped to this range in sampling (waveforms lie in [-1, 1]); None: no clip.
        eta: 1 for DDPM ancestral sampling (WaveGrad), 0 for deterministic DDIM.
        prior: "standard" (N(0, I)), "priorgrad" (``PriorGradStd``: the initial noise and every step's
            noise scaled by a std from the mel; the sampler runs on x / std), "spectral" (``SpectralPrior``:
            the noise filtered to the mel's envelope; the sampler runs on L^-1 x), or a saved prior config.
    """

    def __init__(self, net: WaveGradNet, train_schedule: Schedule | None = None, mel_config: MelConfig | None = None,
                 noise_schedules: Mapping[int, Sequence[float]] | None = None, default_steps: int | None = None,
                 prediction: Prediction = "eps", clip: tuple[float, float] | None = (-1.0, 1.0), eta: float = 1.0,
                 prior: str | Mapping[str, Any] | None = "standard"):
        super().__init__()
        self.net = net
        self.schedule = train_schedule or default_train_schedule()
        self.mel_config = mel_config or MelConfig()
        if self.mel_config.n_mels != net.n_mels or self.mel_config.hop_length != net.hop_length:
            raise ValueError(f"mel config (n_mels {self.mel_config.n_mels}, hop_length {self.mel_config.hop_length}) "
                             f"does not fit the network (n_mels {net.n_mels}, hop_length {net.hop_length})")
        self.mel_fn = MelSpectrogram(self.mel_config)
        self.noise_schedules: dict[int, list[float]] = {}
        for k, v in (noise_schedules or {}).items():
            self.set_noise_schedule(v, make_default=False, steps=int(k))
        self.default_steps = default_steps
        self.prediction, self.clip, self.eta = prediction, (tuple(clip) if clip is not None else None), eta
        self.prior = make_prior(prior, self.mel_config)

    # ----------------------------------------------------------------------------------------------
    # properties and schedules

    @property
    def sample_rate(self) -> int:
        return self.mel_config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.mel_config.hop_length

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def set_noise_schedule(self, betas: Sequence[float] | Tensor, make_default: bool = True,
                           steps: int | None = None) -> None:
        """Store a (searched) inference beta table, used whenever its number of steps is asked for."""
        b = check_betas(betas, self.schedule)
        if steps is not None and steps != b.numel():
            raise ValueError(f"noise schedule for {steps} steps has {b.numel()} betas")
        self.noise_schedules[b.numel()] = b.tolist()
        if make_default:
            self.default_steps = b.numel()

    def betas_for(self, steps: int | None = None) -> Tensor:
        """The beta table used for ``steps``: a searched one if stored, otherwise the training schedule seen
        through ``steps`` uniform steps in t (``schedule.betas(steps)``; the training table itself for its
        own length). Short tables are much better searched (``search.search_schedule``)."""
        steps = steps or self.default_steps or 50
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if steps in self.noise_schedules:
            return torch.tensor(self.noise_schedules[steps], dtype=torch.float64)
        return self.schedule.betas(steps)

    def grid(self, steps: int | None = None, betas: Sequence[float] | Tensor | None = None) -> Tensor:
        """The sampler's time grid (in the training schedule's t) for a step count or a beta table."""
        b = check_betas(betas, self.schedule) if betas is not None else self.betas_for(steps)
        return timesteps.from_betas(b, self.schedule)

    # ----------------------------------------------------------------------------------------------
    # inference

    def mel(self, audio: Tensor) -> Tensor:
        """The model's own mel of ``audio`` (B, T) or (T,) at ``sample_rate``."""
        self.mel_fn.to(audio.device)
        return self.mel_fn(audio)

    @torch.no_grad()
    def forward(self, mel: Tensor | Sequence[Tensor], steps: int | None = None, *,
                betas: Sequence[float] | Tensor | None = None, seed: int | None = None,
                generator: torch.Generator | None = None, chunk_frames: int | None = 256,
                context_frames: int = 16, fade_frames: int = 8) -> Tensor | list[Tensor]:
        """Vocode mels: (B, n_mels, F) -> (B, F * hop), (n_mels, F) -> (F * hop,), or a list of mels of
        different lengths -> a list of waveforms (padded with silence into one batch, then trimmed).

        Args:
            steps: number of refinement steps (default: ``default_steps``, else 50); ignored if ``betas``.
            betas: an explicit inference beta table (increasing noise), e.g. six values for 6 steps.
            seed / generator: the random source (a generator on the mel's device wins over a seed); the
                same seed gives the same waveform.
            chunk_frames, context_frames, fade_frames: network evaluation in windows (None: one window).
        """
        if isinstance(mel, (list, tuple)):
            lengths = [m.shape[-1] for m in mel]
            batch = torch.full((len(mel), self.mel_config.n_mels, max(lengths)), self.mel_config.silence(),
                               device=mel[0].device)
            for i, m in enumerate(mel):
                batch[i, :, : m.shape[-1]] = m
            out = self.forward(batch, steps, betas=betas, seed=seed, generator=generator, chunk_frames=chunk_frames,
                               context_frames=context_frames, fade_frames=fade_frames)
            return [o[: n * self.hop_length] for o, n in zip(out, lengths)]
        squeeze = mel.ndim == 2
        mel = (mel[None] if squeeze else mel).to(self.device, torch.float32)
        if mel.ndim != 3 or mel.shape[1] != self.mel_config.n_mels:
            raise ValueError(f"expected a mel of shape (B, {self.mel_config.n_mels}, frames), got {tuple(mel.shape)}")
        if not torch.isfinite(mel).all():  # NaN/Inf would be vocoded into a full-scale noise burst
            bad = int((~torch.isfinite(mel)).sum())
            raise ValueError(f"the mel holds {bad} NaN or infinite value(s) of {mel.numel()}; fix the model or file "
                             f"that produced it (a log-mel of silence is {self.mel_config.silence():.3g}, not -inf)")
        if generator is None and seed is not None:
            generator = torch.Generator(self.device).manual_seed(seed)
        ts = self.grid(steps, betas)
        net = ChunkedNet(self.net, self.hop_length, chunk_frames, context_frames, fade_frames)
        color, clip = None, self.clip
        if self.prior is not None:  # sample y = whiten(x) from N(0, I); the net sees x = color(y)
            color, _, std = self.prior.to(mel.device).operators(mel)
            chunked = net
            net = lambda y, c, mel: chunked(color(y), c, mel=mel)  # noqa: E731
            # the x0 clip in y: exact for a per-sample std, a wide bound for a filter (the output is clamped below)
            if clip is not None:
                clip = (clip[0] / std, clip[1] / std) if std is not None else self.prior.whitened_clip(clip)
        D = as_denoiser(net, self.schedule, self.prediction, noise_input_kind="alpha")
        shape = (mel.shape[0], mel.shape[-1] * self.hop_length)
        x_T = prior_sample(self.schedule, shape, t_max=float(ts[0]), generator=generator, device=self.device)
        wave = sample_ddim(D, x_T, ts, self.schedule, eta=self.eta, cond={"mel": mel}, generator=generator,
                           clip=clip)
        if color is not None:
            wave = color(wave)
        if self.clip is not None:
            wave = wave.clamp(*self.clip)
        return wave[0] if squeeze else wave

    @torch.no_grad()
    def prior_noise(self, mel: Tensor, seed: int = 0) -> Tensor:
        """A draw of the prior's noise for ``mel`` (n_mels, frames), no network: for a shaped prior
        (PriorGrad, spectral) the no-learning baseline, since the noise already follows the mel's loudness
        (and, for the spectral prior, its spectrum); white noise for the standard prior."""
        mel = mel.to(self.device, torch.float32)[None]
        g = torch.Generator(self.device).manual_seed(seed)
        noise = torch.randn(1, mel.shape[-1] * self.hop_length, generator=g, device=self.device)
        if self.prior is not None:
            noise = self.prior.to(mel.device).operators(mel)[0](noise)
        return (noise.clamp(*self.clip) if self.clip is not None else noise)[0]

    def copy_synthesis(self, audio: Tensor, steps: int | None = None, **kwargs: Any) -> Tensor:
        """Analyse ``audio`` with the model's mel and vocode it back ((B, T) -> (B, T // hop * hop))."""
        return self(self.mel(audio.to(self.device)), steps, **kwargs)

    # ----------------------------------------------------------------------------------------------
    # saving and loading

    def extra_files(self) -> dict[str, Any]:
        return {
            MEL_FILE: self.mel_config.to_dict(),
            VOCODER_FILE: {
                "train_schedule": self.schedule.config(),
                "noise_schedules": {str(k): v for k, v in sorted(self.noise_schedules.items())},
                "default_steps": self.default_steps,
                "prediction": self.prediction,
                "noise_input": "alpha",
                "clip": list(self.clip) if self.clip is not None else None,
                "eta": self.eta,
                "prior": self.prior.config() if self.prior is not None else "standard",
            },
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json + model.safetensors (the net), mel_config.json and vocoder.json."""
        return self.net.save_pretrained(directory, extra=self.extra_files())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                        expected_mel: MelConfig | None = None, what: str = "the input") -> Vocoder:
        """Load a saved vocoder. With ``expected_mel`` (the data's or an upstream model's mel config), a
        differing mel front end raises ``MelConfigMismatchError`` naming the differing numbers."""
        mel_config = MelConfig.from_dict(read_json(directory, MEL_FILE))
        if expected_mel is not None:
            mel_config.check_compatible(expected_mel, what, ours="the vocoder")
        meta = read_json(directory, VOCODER_FILE)
        net = WaveGradNet.from_pretrained(directory, map_location)
        clip = meta.get("clip")
        return cls(net, schedule_from_config(meta["train_schedule"]), mel_config,
                   noise_schedules={int(k): v for k, v in meta.get("noise_schedules", {}).items()},
                   default_steps=meta.get("default_steps"), prediction=meta.get("prediction", "eps"),
                   clip=tuple(clip) if clip is not None else None, eta=meta.get("eta", 1.0),
                   prior=meta.get("prior", "standard")).eval()


def update_noise_schedule(directory: str | os.PathLike, betas: Sequence[float], make_default: bool = True) -> None:
    """Add a searched beta table to a saved vocoder (rewrites only vocoder.json's schedules)."""
    vocoder = Vocoder.from_pretrained(directory)
    vocoder.set_noise_schedule(betas, make_default=make_default)
    vocoder.save_pretrained(directory)
