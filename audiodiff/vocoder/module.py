"""Lightning training of the WaveGrad vocoder: ``VocoderModule`` and ``VocoderDataModule``.

The data module serves random fixed-length audio segments; the mel is computed from them on the
training device (``on_after_batch_transfer``), with the model's own ``MelConfig``, so the data never
carries a second copy of the mel settings. Training follows WaveGrad (Chen et al. 2021, Sec. 3.1 and
Algorithm 1): an L1 loss on the noise, with the noise level sqrt(alpha_bar) drawn uniformly between two
neighbouring points of the training schedule (``sample_noise_level``), so the network sees a continuum
of levels and any inference schedule inside the trained range can be used.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffcore.lightning import DiffusionModule, load_net, read_checkpoint
from diffcore.losses import dsm_loss
from diffcore.parameterization import Prediction
from diffcore.schedules import Schedule

from ..mel import MelConfig, MelSpectrogram, mel_image, write_png
from .inference import Vocoder, default_train_schedule, make_prior
from .model import WaveGradNet


def sample_noise_level(schedule: Schedule, batch: int, *, num_points: int | None = None,
                       generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Tensor:
    """Training times (B,) float64 whose noise levels follow WaveGrad's continuous sampling.

    With the schedule's points l_n = sqrt(alpha_bar(n / N)), n = 0..N (l_0 = 1): pick n uniformly in
    1..N, then the level uniformly in [l_n, l_{n-1}]; return the t at which the schedule has that
    level (so that ``noise_input(schedule, t, "alpha")`` is exactly the drawn level). ``num_points``
    defaults to the table length of a ``BetaTableSchedule`` (1000 otherwise).
    """
    n_pts = num_points or getattr(schedule, "num_steps", 1000)
    levels = schedule.alpha(torch.arange(n_pts + 1, dtype=torch.float64) / n_pts)  # (N + 1,) decreasing
    n = torch.randint(1, n_pts + 1, (batch,), generator=generator)
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    alpha = levels[n] + u * (levels[n - 1] - levels[n])
    alpha = alpha.clamp(max=1 - 1e-12)  # alpha = 1 is sigma = 0, where eps is undefined
    logsnr = torch.log(alpha**2) - torch.log1p(-(alpha**2))
    return schedule.t_of_logsnr(logsnr).to(device)


class VocoderModule(DiffusionModule):
    """WaveGrad training: ``net`` predicts eps from (x_t, sqrt(alpha_bar), mel).

    Args:
        net: the ``WaveGradNet``.
        schedule: the training schedule (default: linear betas 1e-6..0.01 over 1000 steps, as WaveGrad).
        mel: the mel front end (default ``MelConfig()``, the HiFi-GAN convention); saved with the model.
        prediction: "eps" (WaveGrad) or "v" / "x0".
        loss_norm: "l1" (WaveGrad) or "l2".
        sample_every_n_steps: at validation, vocode one validation utterance and log it (audio, mel
            image, its log-mel distance): at the first validation, then at the first one past each
            multiple of this many optimizer steps; 0 turns it off.
        sample_steps: refinement steps for that sample. sample_seconds: at most this much of the utterance.
        prior: "standard" (N(0, I), WaveGrad) or "priorgrad" (PriorGrad's data-dependent prior, a per-sample
            std from the mel's frame energy, ``PriorGradStd``): the noise is scaled by the std and the loss
            is taken on the whitened noise, i.e. weighted by Sigma^-1; or "spectral" (``SpectralPrior``: noise
            filtered to the mel's spectral envelope, SpecGrad-like), trained and sampled the same way in
            whitened coordinates. A dict sets the prior's arguments ({"kind": "spectral", "h_min": 0.01}).
            Saved with the model.
        training: the optimizer, LR schedule and EMA settings, passed to ``DiffusionModule`` (see its arguments).
    """

    def __init__(self, net: WaveGradNet, schedule: Schedule | None = None, mel: MelConfig | None = None,
                 prediction: Prediction = "eps", loss_norm: Literal["l1", "l2"] = "l1",
                 sample_every_n_steps: int = 1000, sample_steps: int = 50, sample_seconds: float = 4.0,
                 prior: str | dict[str, Any] = "standard", **training: Any):
        super().__init__(net, **training)
        self.schedule = schedule or default_train_schedule()
        self.mel_config = mel or MelConfig()
        if self.mel_config.n_mels != net.n_mels or self.mel_config.hop_length != net.hop_length:
            raise ValueError(f"the mel config (n_mels {self.mel_config.n_mels}, hop_length "
                             f"{self.mel_config.hop_length}) does not fit the network (n_mels {net.n_mels}, "
                             f"hop_length {net.hop_length})")
        self.mel_fn = MelSpectrogram(self.mel_config)
        self.prior = make_prior(prior, self.mel_config)
        self.prediction, self.loss_norm = prediction, loss_norm
        self.sample_every_n_steps, self.sample_steps, self.sample_seconds = (sample_every_n_steps, sample_steps,
                                                                             sample_seconds)
        self._last_sample_step: int | None = None

    def vocoder(self) -> Vocoder:
        """A ``Vocoder`` around the current weights (use inside ``ema_weights()`` for the EMA ones)."""
        return Vocoder(self.net, self.schedule, self.mel_config, prediction=self.prediction,
                       prior=self._prior_config())

    def _prior_config(self) -> str | dict[str, Any]:
        return self.prior.config() if self.prior is not None else "standard"

    # ----------------------------------------------------------------------------------------------
    # training

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        sr = getattr(dm, "sample_rate", None)
        if sr is not None and sr != self.mel_config.sample_rate:
            raise ValueError(f"the data module's sample_rate {sr} differs from the model's mel sample_rate "
                             f"{self.mel_config.sample_rate}")
        seg = getattr(dm, "segment_length", None)
        if seg is not None and seg % self.mel_config.hop_length:
            raise ValueError(f"segment_length {seg} is not a multiple of the hop length "
                             f"{self.mel_config.hop_length}")

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        # the mel is computed here, on the training device, from the model's own MelConfig
        if isinstance(batch, dict) and "audio" in batch and "mel" not in batch:
            batch = {**batch, "mel": self.mel_fn.to(batch["audio"].device)(batch["audio"])}
        return batch

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        audio, mel = batch["audio"], batch["mel"]  # (B, T), (B, n_mels, T / hop)
        # training: fresh noise levels and noise; evaluation: the same ones every time (a comparable loss)
        gen = None if self.training else torch.Generator().manual_seed(0)
        t = sample_noise_level(self.schedule, audio.shape[0], generator=gen, device=audio.device)
        noise = None if gen is None else torch.randn(audio.shape, generator=gen).to(audio)
        net, x0 = self.net, audio
        if self.prior is not None:
            # PriorGrad / spectral: x_t = alpha x0 + sigma L eps, i.e. standard diffusion of y0 = L^-1 x0 seen
            # through net(L y); the loss on eps is the Sigma^-1-weighted loss on the shaped noise L eps
            color, whiten, _ = self.prior.to(mel.device).operators(mel)
            net, x0 = (lambda y, c, mel: self.net(color(y), c, mel=mel)), whiten(audio)
        return dsm_loss(net, x0, self.schedule, prediction=self.prediction, norm=self.loss_norm, t=t,
                        noise=noise, noise_input_kind="alpha", mel=mel)

    # ----------------------------------------------------------------------------------------------
    # validation: the loss (base class) and, every N steps, one vocoded utterance

    def on_validation_epoch_end(self) -> None:
        every, last = self.sample_every_n_steps, self._last_sample_step
        if (every <= 0 or self.trainer.sanity_checking or not self.trainer.is_global_zero
                or (last is not None and self.global_step // every <= last // every)):
            return  # sample at the first validation, then once past each multiple of every
        dm = getattr(self.trainer, "datamodule", None)
        audio = dm.example(self.sample_seconds) if hasattr(dm, "example") else None
        if audio is None:
            return
        self._last_sample_step = self.global_step
        audio = audio.to(self.device)
        vocoder = self.vocoder()  # validation runs with the EMA weights swapped in
        mel = vocoder.mel(audio)
        wave = vocoder(mel, self.sample_steps, seed=0)
        distance = (vocoder.mel(wave) - mel).abs().mean()
        self.log("val/sample_logmel_l1", distance, batch_size=1, rank_zero_only=True)
        log_sample(self.logger, wave.float().cpu(), mel.cpu(), vocoder.mel(wave).cpu(), self.mel_config.sample_rate,
                   self.global_step)

    # ----------------------------------------------------------------------------------------------
    # checkpoints: enough to export a pretrained vocoder without the training code's arguments

    def export_metadata(self) -> dict[str, Any]:
        return {"train_schedule": self.schedule.config(), "mel_config": self.mel_config.to_dict(),
                "prediction": self.prediction, "prior": self._prior_config()}


def log_sample(logger: Any, wave: Tensor, mel: Tensor, mel_out: Tensor, sample_rate: int, step: int) -> None:
    """Send a vocoded utterance to the logger: TensorBoard (add_audio / add_image), Weights & Biases, or
    for other loggers (CSV) WAV and PNG files under ``<log_dir>/samples/``."""
    if logger is None:
        return
    image = torch.cat([mel_image(mel), mel_image(mel_out, float(mel.min()), float(mel.max()))], dim=1)
    experiment = getattr(logger, "experiment", None)
    if hasattr(experiment, "add_audio"):  # TensorBoard
        experiment.add_audio("val/sample", wave[None], step, sample_rate)
        experiment.add_image("val/mel_target_top_generated_bottom", image, step)
        return
    if type(logger).__name__ == "WandbLogger":
        import wandb

        logger.experiment.log({"val/sample": wandb.Audio(wave.numpy(), sample_rate=sample_rate),
                               "val/mel": wandb.Image(image.permute(1, 2, 0).numpy()), "trainer/global_step": step})
        return
    log_dir = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    if log_dir is None:
        return
    import soundfile as sf

    out = Path(log_dir) / "samples"
    out.mkdir(parents=True, exist_ok=True)
    sf.write(out / f"step{step:07d}.wav", wave.clamp(-1, 1).numpy(), sample_rate, subtype="PCM_16")
    write_png(out / f"step{step:07d}_mel.png", image)


# --------------------------------------------------------------------------------------------------
# data


class AudioSegments(Dataset):
    """Fixed-length segments of the clips of an ``AudioClips``-like data set (items with an ``audio`` (T,) tensor).

    ``random=True``: a uniformly random offset per access (training); otherwise the segment starts at 0.
    Clips shorter than ``segment_length`` are zero-padded at the end. Each clip is listed ``repeat`` times
    (more segments per epoch for small data sets). Items are ``{"audio": (segment_length,)}``.
    """

    def __init__(self, clips: Dataset, segment_length: int, random: bool = True, repeat: int = 1):
        self.clips, self.segment_length, self.random, self.repeat = clips, segment_length, random, repeat

    def __len__(self) -> int:
        return len(self.clips) * self.repeat

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        audio = torch.as_tensor(self.clips[i % len(self.clips)]["audio"], dtype=torch.float32).flatten()
        n = self.segment_length
        if audio.numel() >= n:
            start = random.randint(0, audio.numel() - n) if self.random else 0
            audio = audio[start:start + n]
        else:
            audio = torch.nn.functional.pad(audio, (0, n - audio.numel()))
        return {"audio": audio}


class VocoderDataModule(L.LightningDataModule):
    """Random audio segments from an audio folder (``<root>/<split>/metadata.csv`` + WAVs), a built-in set
    name or an ``hf:`` data set, through ``audiodiff.data.loaders.AudioClips``.

    Args:
        root: the data set (path, built-in name such as "speech-small", or "hf:...").
        sample_rate: must equal the model's mel sample rate (checked when training starts).
        segment_length: training segment length in samples; a multiple of the hop length (7680 = 30 frames).
        batch_size, num_workers: data loader settings.
        train_split, val_split: split names; the validation loss uses the first segment of each clip.
        val_clips: use at most this many validation clips (0: all).
        resample: resample clips at another rate instead of refusing them.
        train_repeat: list each training clip this many times per epoch (for very small data sets).
    """

    def __init__(self, root: str, sample_rate: int = 22050, segment_length: int = 7680, batch_size: int = 16,
                 num_workers: int = 2, train_split: str = "train", val_split: str | None = "validation",
                 val_clips: int = 64, resample: bool = False, train_repeat: int = 1):
        super().__init__()
        self.root, self.sample_rate, self.segment_length = root, sample_rate, segment_length
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_split, self.val_split, self.val_clips, self.resample = train_split, val_split, val_clips, resample
        self.train_repeat = train_repeat
        self.train_clips: Dataset | None = None
        self.val_set: Dataset | None = None

    def _clips(self, split: str) -> Dataset:
        from audiodiff.data.loaders import AudioClips

        return AudioClips(self.root, split=split, sample_rate=self.sample_rate, resample=self.resample)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_clips is None:
            self.train_clips = self._clips(self.train_split)
        if stage in ("fit", "validate") and self.val_split and self.val_set is None:
            clips = self._clips(self.val_split)
            if self.val_clips and len(clips) > self.val_clips:
                clips = torch.utils.data.Subset(clips, range(self.val_clips))
            self.val_set = clips

    def train_dataloader(self) -> DataLoader:
        segments = AudioSegments(self.train_clips, self.segment_length, random=True, repeat=self.train_repeat)
        return DataLoader(segments, batch_size=self.batch_size, shuffle=True,
                          drop_last=len(segments) >= self.batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(AudioSegments(self.val_set, self.segment_length, random=False), batch_size=self.batch_size,
                          num_workers=0)

    def example(self, max_seconds: float = 4.0) -> Tensor | None:
        """The first validation clip (else the first training clip), cut to ``max_seconds``; the logged sample."""
        source = self.val_set if self.val_set is not None else self.train_clips
        if source is None or len(source) == 0:
            return None
        audio = torch.as_tensor(source[0]["audio"], dtype=torch.float32).flatten()
        return audio[: int(max_seconds * self.sample_rate)]


def export_checkpoint(checkpoint: str | Path, directory: str | Path, *, ema: bool = True) -> Path:
    """Turn a training checkpoint of ``VocoderModule`` into a pretrained vocoder directory.

    Uses the EMA weights when the checkpoint has them (``ema=False``: the raw training weights).
    Lightning checkpoints are pickles: only export checkpoints you trust (your own runs).
    """
    from diffcore.schedules import schedule_from_config

    net, info = load_net(read_checkpoint(checkpoint, VocoderModule), ema=ema)
    vocoder = Vocoder(net, schedule_from_config(info["train_schedule"]), MelConfig.from_dict(info["mel_config"]),
                      prediction=info.get("prediction", "eps"), prior=info.get("prior", "standard"))
    return vocoder.save_pretrained(directory)
