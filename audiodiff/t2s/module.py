"""Lightning training of the text-to-sound model: the VAE first, then the latent denoiser.

* ``CaptionedMelDataModule``: captioned clips (``AudioClips``) cut into fixed-length segments (random crops
  in training); shorter clips are padded and a frame count travels with each item, from which the modules
  build frame masks, so padding never enters a loss.
* ``VAEModule``: trains a ``MelVAE`` (L1 on the log-mel + a weighted KL). Before the first step it measures
  the per-band mel statistics on training batches; when training ends, the latent shift and scale.
* ``LatentDiffusionModule``: trains a ``CaptionDenoiser`` on the frozen VAE's normalised latents with
  ``diffcore.losses.dsm_loss``; captions are encoded once (``CaptionCache``) and replaced by the empty
  caption with probability ``caption_dropout``, so one model gives the conditional and unconditional
  predictions that classifier-free guidance combines. With a ``CaptionedMelDataModule`` the VAE posterior
  of every clip is computed once before training (``LatentCache``), so a step costs the denoiser alone.

``export_vae`` / ``export_pipeline`` turn training checkpoints into a VAE directory / a pipeline directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffcore.lightning import DiffusionModule, load_net, read_checkpoint
from diffcore.losses import Weighting, dsm_loss, sample_t
from diffcore.parameterization import NoiseInput, Prediction
from diffcore.schedules import CosineSchedule, Schedule, schedule_from_config

from ..mel import MelConfig, MelSpectrogram
from .denoiser import CaptionDenoiser, TimeSplitDenoiser
from .text_encoder import CaptionCache, PretrainedTextEncoder, TextEncoder, encoder_from_reference
from .vae import MelVAE

# --------------------------------------------------------------------------------------------------
# data


class CaptionedSegments(Dataset):
    """Segments of ``segment_frames`` mel frames (``segment_frames * hop`` samples) of captioned clips.

    Items: ``audio`` (segment samples,) float32, zero-padded past the clip's end; ``frames``: how many
    mel frames hold real audio; ``text``: the caption. ``random``: a random crop of longer clips (else from
    the start). ``indices``: which clips of ``clips`` to use; each listed ``repeat`` times.
    """

    def __init__(self, clips: Dataset, segment_frames: int, hop_length: int, *, random: bool = True,
                 indices: Sequence[int] | None = None, repeat: int = 1):
        self.clips, self.frames, self.hop, self.random = clips, segment_frames, hop_length, random
        self.indices = list(range(len(clips))) if indices is None else list(indices)
        self.repeat = repeat

    def __len__(self) -> int:
        return len(self.indices) * self.repeat

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.clips[self.indices[i % len(self.indices)]]
        audio = torch.as_tensor(item["audio"], dtype=torch.float32).flatten()
        n = self.frames * self.hop
        if audio.numel() > n:
            # crops start on a frame boundary, so a crop's mel frames are frames of the whole clip's mel
            start = random.randint(0, (audio.numel() - n) // self.hop) * self.hop if self.random else 0
            audio = audio[start:start + n]
        frames = min(self.frames, -(-audio.numel() // self.hop))
        audio = torch.nn.functional.pad(audio, (0, n - audio.numel()))
        return {"audio": audio, "frames": frames, "text": item.get("text") or ""}


class CaptionedMelDataModule(L.LightningDataModule):
    """Captioned audio from an audio folder, a built-in set ("sounds-small") or an ``hf:`` data set.

    Args:
        root: the data set. sample_rate, hop_length: must match the model's mel config (checked at fit).
        segment_frames: training segment in mel frames (256 = 2.97 s at 22,050 Hz / hop 256).
        batch_size, num_workers: loader settings.
        train_split, val_split: split names. val_clips: at most this many validation clips (0: all).
        kinds: keep only clips whose ``kind`` column is one of these (e.g. ["procedural", "midi"]).
        max_train_clips: use at most this many training clips (0 or None: all).
        train_repeat: list each training clip this many times per epoch.
        resample: resample clips at another rate instead of refusing them.
    """

    def __init__(self, root: str, sample_rate: int = 22050, hop_length: int = 256, segment_frames: int = 256,
                 batch_size: int = 16, num_workers: int = 0, train_split: str = "train",
                 val_split: str | None = "validation", val_clips: int = 64, kinds: list[str] | None = None,
                 max_train_clips: int | None = None, train_repeat: int = 1, resample: bool = False):
        super().__init__()
        self.root, self.sample_rate, self.hop_length, self.segment_frames = root, sample_rate, hop_length, \
            segment_frames
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_split, self.val_split, self.val_clips = train_split, val_split, val_clips
        self.kinds, self.max_train_clips, self.train_repeat, self.resample = kinds, max_train_clips, train_repeat, \
            resample
        self.train_set: CaptionedSegments | None = None
        self.val_set: CaptionedSegments | None = None

    def _segments(self, split: str, random_crop: bool, limit: int | None, repeat: int = 1) -> CaptionedSegments:
        from audiodiff.data.loaders import AudioClips

        clips = AudioClips(self.root, split=split, sample_rate=self.sample_rate, resample=self.resample)
        idx = [i for i, it in enumerate(clips.items) if self.kinds is None or it.get("kind") in self.kinds]
        if not idx:
            raise ValueError(f"{self.root} ({split}) has no clips of kinds {self.kinds}")
        idx = idx[:limit] if limit else idx
        return CaptionedSegments(clips, self.segment_frames, self.hop_length, random=random_crop, indices=idx,
                                 repeat=repeat)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_set is None:
            self.train_set = self._segments(self.train_split, True, self.max_train_clips, self.train_repeat)
        if stage in ("fit", "validate") and self.val_split and self.val_set is None:
            self.val_set = self._segments(self.val_split, False, self.val_clips)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          drop_last=len(self.train_set) >= self.batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=0)


def frame_mask(frames: Tensor, total: int) -> Tensor:
    """(B,) real-frame counts -> (B, total) bool mask."""
    return torch.arange(total, device=frames.device)[None, :] < frames.to(torch.long)[:, None]


LATENT_CACHE_VERSION = 1


def latent_cache_fingerprint(vae: MelVAE, segments: CaptionedSegments) -> str:
    """A hash of everything a clip's cached posterior depends on: the VAE's weights and config (its mel
    config included) and the data manifest (each used clip's metadata row, file size and modification time,
    and the rate it is read at). Any change gives another fingerprint, so a stale cache is never read."""
    h = hashlib.sha256(f"latent-cache-v{LATENT_CACHE_VERSION}".encode())
    h.update(json.dumps(vae.config, sort_keys=True, default=str).encode())
    for name, t in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    items = getattr(segments.clips, "items", None)
    h.update(str(getattr(segments.clips, "sample_rate", "")).encode())
    for i in segments.indices:
        row = dict(items[i]) if items is not None else {"index": i}
        path = row.get("path")
        if path and os.path.isfile(path):
            st = os.stat(path)
            row["_file"] = [st.st_size, st.st_mtime_ns]
        h.update(json.dumps(row, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


class LatentCache:
    """The frozen VAE's posterior (mean and std, raw latent units) of whole clips, computed once.

    Both moments are kept, so training can still sample the posterior (``sample_latents``); the mean alone
    would fix that choice at caching time. Clips are encoded whole and cropped in latent frames later, so a
    crop is a crop of the clip's latent (it differs from encoding the cropped mel only near the crop's edges,
    within the encoder's receptive field). ``frames[i]``: the real latent frames of clip i; ``captions[i]``
    its caption.
    """

    def __init__(self, mean: list[Tensor], std: list[Tensor], frames: list[int], captions: list[str],
                 fingerprint: str):
        self.mean, self.std, self.frames, self.captions = mean, std, frames, captions
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.mean)

    @classmethod
    @torch.no_grad()
    def build(cls, vae: MelVAE, segments: CaptionedSegments, batch_size: int = 16,
              fingerprint: str | None = None) -> LatentCache:
        """Encode every clip of ``segments`` (each once, whatever its ``repeat``) with ``vae`` on the CPU."""
        mel_fn = MelSpectrogram(vae.mel_config)
        n = len(segments.indices)
        mean: list[Tensor] = [torch.empty(0)] * n
        std, frames, captions = list(mean), [0] * n, [""] * n
        pending: dict[int, list[tuple[int, Tensor]]] = {}  # clip length -> (position, audio)

        def flush(group: list[tuple[int, Tensor]]) -> None:
            # clips of one length share a batch: no padding, so GroupNorm sees each clip as it would alone
            mel = mel_fn(torch.stack([w for _, w in group]))
            q = vae.encode(mel)
            real = int(q.mask[0].sum())
            for j, (k, _) in enumerate(group):
                mean[k], std[k], frames[k] = q.mean[j, ..., :real].clone(), q.std[j, ..., :real].clone(), real

        for k, i in enumerate(segments.indices):
            item = segments.clips[i]
            captions[k] = item.get("text") or ""
            wave = torch.as_tensor(item["audio"], dtype=torch.float32).flatten()
            group = pending.setdefault(wave.numel(), [])
            group.append((k, wave))
            if len(group) == batch_size:
                flush(pending.pop(wave.numel()))
        for group in pending.values():
            flush(group)
        return cls(mean, std, frames, captions, fingerprint or latent_cache_fingerprint(vae, segments))

    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file (written atomically): the clips' posteriors concatenated along frames."""
        from diffcore.pretrained import save_state

        save_state(path, {"mean": torch.cat(self.mean, -1), "std": torch.cat(self.std, -1)},
                   {"fingerprint": self.fingerprint, "frames": self.frames, "captions": self.captions,
                    "version": LATENT_CACHE_VERSION})
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, fingerprint: str) -> LatentCache | None:
        """The cache at ``path`` if it was made for ``fingerprint``, else None (missing or stale)."""
        from diffcore.pretrained import load_state

        if not Path(path).is_file():
            return None
        tensors, meta = load_state(path)
        if meta.get("fingerprint") != fingerprint or meta.get("version") != LATENT_CACHE_VERSION:
            return None
        frames = [int(f) for f in meta["frames"]]
        return cls(list(tensors["mean"].split(frames, -1)), list(tensors["std"].split(frames, -1)), frames,
                   list(meta["captions"]), fingerprint)

    @classmethod
    def for_segments(cls, vae: MelVAE, segments: CaptionedSegments, path: str | os.PathLike | None = None,
                     say: Any = print) -> LatentCache:
        """Read the cache at ``path`` if it matches ``vae`` and the clips, else build it (and save it there)."""
        fp = latent_cache_fingerprint(vae, segments)
        cache = cls.load(path, fp) if path is not None else None
        if cache is not None:
            say(f"latent cache: {len(cache)} clips read from {path}")
            return cache
        t0 = time.perf_counter()
        cache = cls.build(vae, segments, fingerprint=fp)
        say(f"latent cache: {len(cache)} clips encoded in {time.perf_counter() - t0:.1f} s"
            + (f", saved to {path}" if path is not None else ""))
        if path is not None:
            cache.save(path)
        return cache


class LatentSegments(Dataset):
    """``CaptionedSegments`` read from a ``LatentCache``: the same clips, crops and captions, as latents.

    Items: ``latent_mean`` / ``latent_std`` (C, H, W) with W = ceil(segment_frames / factor), zero past the
    clip's end; ``latent_frames``: how many are real; ``text``: the caption. Random crops start on a latent
    frame.
    """

    def __init__(self, segments: CaptionedSegments, cache: LatentCache, factor: int):
        if len(cache) != len(segments.indices):
            raise ValueError(f"the latent cache holds {len(cache)} clips, the segments {len(segments.indices)}")
        self.segments, self.cache = segments, cache
        self.width = -(-segments.frames // factor)

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k = i % len(self.cache)
        mean, std, n = self.cache.mean[k], self.cache.std[k], self.cache.frames[k]
        start = random.randint(0, n - self.width) if self.segments.random and n > self.width else 0
        real = min(self.width, n - start)
        pad = (0, self.width - real)
        return {"latent_mean": F.pad(mean[..., start:start + real], pad),
                "latent_std": F.pad(std[..., start:start + real], pad), "latent_frames": real,
                "text": self.cache.captions[k]}


class _MelBatches:
    """Mixin: the mel (B, n_mels, F) and frame mask (B, F) of a batch, computed on the training device."""

    mel_fn: MelSpectrogram
    mel_config: MelConfig

    def _check_data(self) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None  # type: ignore
        for name, ours in (("sample_rate", self.mel_config.sample_rate), ("hop_length", self.mel_config.hop_length)):
            theirs = getattr(dm, name, None)
            if theirs is not None and theirs != ours:
                raise ValueError(f"the data module's {name} {theirs} differs from the model's mel config ({ours})")

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        if isinstance(batch, dict) and "audio" in batch and "mel" not in batch:
            mel = self.mel_fn.to(batch["audio"].device)(batch["audio"])
            frames = torch.as_tensor(batch.get("frames", mel.shape[-1]), device=mel.device).expand(mel.shape[0])
            batch = {**batch, "mel": mel, "frame_mask": frame_mask(frames, mel.shape[-1])}
        return batch

    def _mel_batches(self, loader: DataLoader, limit: int) -> Iterator[tuple[Tensor, Tensor]]:
        for i, batch in enumerate(loader):
            if i >= limit:
                return
            batch = {k: (v.to(self.device) if isinstance(v, Tensor) else v) for k, v in batch.items()}  # type: ignore
            batch = self.on_after_batch_transfer(batch, 0)
            yield batch["mel"], batch["frame_mask"]


# --------------------------------------------------------------------------------------------------
# VAE


class VAEModule(_MelBatches, DiffusionModule):
    """Trains a ``MelVAE``: loss = masked L1 of the log-mel + ``kl_weight`` * masked mean KL per latent element.

    Args:
        net: the ``MelVAE`` (its mel config is the model's front end).
        kl_weight: weight of the KL term (both terms are means per element).
        calibration_batches: training batches used for the mel and latent statistics.
        training: the optimizer, LR schedule and EMA settings, passed to ``DiffusionModule`` (see its arguments).

    Logged: ``train/recon_l1`` and ``val/recon_l1`` (mean |log-mel error| in the mel's stored units, natural
    log by default, on real frames), ``*/kl``.
    """

    def __init__(self, net: MelVAE, kl_weight: float = 1e-4, calibration_batches: int = 16, **training: Any):
        super().__init__(net, **training)
        self.kl_weight, self.calibration_batches = kl_weight, calibration_batches
        self.mel_config = net.mel_config
        self.mel_fn = MelSpectrogram(self.mel_config)

    def setup(self, stage: str) -> None:
        self._check_data()

    def on_fit_start(self) -> None:
        if int(self.net.calibrated) == 0:
            loader = self.trainer.datamodule.train_dataloader()
            self.net.fit_input_statistics(self._mel_batches(loader, self.calibration_batches))
        super().on_fit_start()  # (re)starts the EMA from these weights and statistics

    def compute_loss(self, batch: dict[str, Any]) -> Tensor:
        mel, mask = batch["mel"], batch["frame_mask"]
        gen = None if self.training else torch.Generator(mel.device).manual_seed(0)
        rec, q = self.net(mel, mask, sample=True, generator=gen)
        w = mask[:, None, :].to(mel.dtype).expand_as(mel)
        recon = ((rec - mel).abs() * w).sum() / w.sum().clamp(min=1)
        wk = q.mask[:, None, None, :].to(q.mean.dtype).expand_as(q.mean)
        kl = (q.kl() * wk).sum() / wk.sum().clamp(min=1)
        stage = "train" if self.training else "val"
        self.log(f"{stage}/recon_l1", recon, batch_size=mel.shape[0], prog_bar=stage == "val")
        self.log(f"{stage}/kl", kl, batch_size=mel.shape[0])
        return recon + self.kl_weight * kl

    def calibrate(self, batches: Iterator[tuple[Tensor, Tensor]] | None = None) -> tuple[float, float]:
        """Measure the latent shift and scale (with the EMA weights) and store them in the net and the EMA."""
        if batches is None:
            batches = self._mel_batches(self.trainer.datamodule.train_dataloader(), self.calibration_batches)
        with self.ema_weights():
            mean, std = self.net.latent_statistics(batches)
        self.net.set_latent_statistics(mean, 1.0 / std)
        if self.ema is not None:
            for name in ("latent_shift", "latent_scale", "calibrated"):
                self.ema.buffers[name].copy_(getattr(self.net, name))
        return mean, 1.0 / std

    def on_train_end(self) -> None:
        mean, scale = self.calibrate()
        print(f"latent statistics from {self.calibration_batches} training batches: shift {mean:.4f}, "
              f"scale {scale:.4f} (1 / std)")

    def export_metadata(self) -> dict[str, Any]:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return {"data": _data_settings(dm)}


def _data_settings(dm: Any) -> dict[str, Any] | None:
    if not isinstance(dm, CaptionedMelDataModule):
        return None
    return {"root": str(dm.root), "sample_rate": dm.sample_rate, "hop_length": dm.hop_length,
            "segment_frames": dm.segment_frames, "batch_size": dm.batch_size, "kinds": dm.kinds,
            "train_split": dm.train_split}


def export_vae(checkpoint: str | os.PathLike | dict[str, Any], directory: str | os.PathLike, *, data: str | None = None,
               batches: int = 16, ema: bool = True) -> Path:
    """A ``VAEModule`` checkpoint -> a ``MelVAE`` directory, with the latent statistics measured on ``batches``
    training batches of ``data`` (default: the data set recorded in the checkpoint).

    Lightning checkpoints are pickles: only export checkpoints you trust (your own runs).
    """
    vae, info = load_net(read_checkpoint(checkpoint, VAEModule), ema=ema)
    settings = dict(info.get("data") or {})
    if data is not None:
        settings["root"] = data
    if not settings.get("root"):
        raise ValueError("the checkpoint does not record its data set; pass data= (--data) to measure the latent "
                         "statistics on")
    dm = CaptionedMelDataModule(settings["root"], sample_rate=vae.mel_config.sample_rate,
                                hop_length=vae.mel_config.hop_length,
                                segment_frames=settings.get("segment_frames", 256),
                                batch_size=settings.get("batch_size", 16), kinds=settings.get("kinds"),
                                train_split=settings.get("train_split", "train"), val_split=None)
    dm.setup("fit")
    mel_fn = MelSpectrogram(vae.mel_config)

    def mels() -> Iterator[tuple[Tensor, Tensor]]:
        for i, b in enumerate(dm.train_dataloader()):
            if i >= batches:
                return
            mel = mel_fn(b["audio"])
            yield mel, frame_mask(b["frames"], mel.shape[-1])

    vae.eval().fit_latent_statistics(mels())
    return vae.save_pretrained(directory)


# --------------------------------------------------------------------------------------------------
# latent diffusion


def drop_captions(captions: Sequence[str], p: float, generator: torch.Generator | None = None) -> list[str]:
    """Replace each caption by the empty (unconditional) caption independently with probability ``p``."""
    drop = torch.rand(len(captions), generator=generator) < p
    return ["" if d else c for c, d in zip(captions, drop.tolist())]


class LatentDiffusionModule(_MelBatches, DiffusionModule):
    """Trains a caption-conditioned latent denoiser.

    Args:
        net: a ``CaptionDenoiser`` (``UNetDenoiser`` or ``DiTDenoiser``).
        vae: the trained, calibrated ``MelVAE`` (a directory from ``export_vae``); frozen, not saved by EMA.
        text_encoder: the caption encoder (default: frozen all-MiniLM-L6-v2 from its wheel); a
            ``ByteTextEncoder`` needs a net built with ``text_vocab_size``.
        schedule: the forward process (default cosine). prediction: what the net predicts ("v").
        weighting: loss weighting in x0 space (``diffcore.losses``), None for the plain loss on ``prediction``.
        noise_input: what the net is conditioned on (``diffcore.parameterization.noise_input``).
        caption_dropout: probability of training a caption as the empty caption.
        sample_latents: train on posterior samples (True) or the posterior mean (False, the default).
        cache_path: a file to keep the caption encodings in between runs (None: in memory only).
        cache_latents: with a ``CaptionedMelDataModule``, encode every clip once before training
            (``LatentCache``) and train on those latents; False encodes each batch's audio at every step.
        latent_cache_dir: a directory to keep the latent caches in between runs (``latents-<split>.safetensors``,
            rebuilt when the VAE or the data change); None: in memory only.
        train_t: the range of diffusion times trained on (default all of [0, 1]); a narrower range trains an
            expert for part of the sampling path (``TimeSplitDenoiser``).
        training: the optimizer, LR schedule and EMA settings, passed to ``DiffusionModule`` (see its arguments).
    """

    def __init__(self, net: CaptionDenoiser, vae: str | MelVAE, text_encoder: TextEncoder | None = None,
                 schedule: Schedule | None = None, prediction: Prediction = "v", weighting: Weighting | None = None,
                 noise_input: NoiseInput = "t", caption_dropout: float = 0.1, sample_latents: bool = False,
                 cache_path: str | None = None, cache_latents: bool = True, latent_cache_dir: str | None = None,
                 train_t: tuple[float, float] = (0.0, 1.0), **training: Any):
        super().__init__(net, **training)
        from .inference import check_components

        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {caption_dropout}")
        lo, hi = (float(v) for v in train_t)
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"train_t must be a range [lo, hi] with 0 <= lo < hi <= 1, got {list(train_t)}")
        self.train_t = (lo, hi)
        vae_model = MelVAE.from_pretrained(vae) if isinstance(vae, (str, os.PathLike)) else vae
        if not vae_model.is_calibrated:
            raise ValueError("the VAE has no latent statistics yet; export it with `audiodiff t2s-export --kind vae` "
                             "(or VAEModule, which measures them when training ends)")
        vae_model.requires_grad_(False).eval()
        self.text_encoder = text_encoder if text_encoder is not None else PretrainedTextEncoder()
        check_components(vae_model, net, self.text_encoder)
        self._frozen = {"vae": vae_model}  # a plain dict: not a submodule, so not in the optimizer or EMA
        self.schedule = schedule or CosineSchedule()
        self.prediction, self.weighting, self.noise_input = prediction, weighting, noise_input
        self.caption_dropout, self.sample_latents = caption_dropout, sample_latents
        self.mel_config = vae_model.mel_config
        self.mel_fn = MelSpectrogram(self.mel_config)
        self.cache = CaptionCache(self.text_encoder, cache_path)
        self.cache_latents, self.latent_cache_dir = cache_latents, latent_cache_dir

    @property
    def vae(self) -> MelVAE:
        return self._frozen["vae"]

    def setup(self, stage: str) -> None:
        self._check_data()
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage == "fit" and self.cache_latents and isinstance(dm, CaptionedMelDataModule):
            self.use_latent_cache(dm)

    def use_latent_cache(self, dm: CaptionedMelDataModule) -> None:
        """Swap the data module's segments for ``LatentSegments`` of cached posteriors (read or built once),
        and encode all their captions (and the empty one) into the caption cache."""
        vae = self.vae.cpu()
        captions = {""}
        for split, attr in ((dm.train_split, "train_set"), (dm.val_split, "val_set")):
            segments = getattr(dm, attr)
            if isinstance(segments, CaptionedSegments):
                path = Path(self.latent_cache_dir) / f"latents-{split}.safetensors" if self.latent_cache_dir else None
                cache = LatentCache.for_segments(vae, segments, path)
                setattr(dm, attr, LatentSegments(segments, cache, vae.factor))
            if isinstance(getattr(dm, attr), LatentSegments):
                captions |= set(getattr(dm, attr).cache.captions)
        ordered = sorted(captions)
        for a in range(0, len(ordered), 128):
            self.cache(ordered[a:a + 128])
        if self.cache.path is not None and self.cache.misses:
            self.cache.save()

    def on_fit_start(self) -> None:
        self.vae.to(self.device)
        self.text_encoder.to(self.device)
        super().on_fit_start()

    def on_train_end(self) -> None:
        if self.cache.path is not None:
            self.cache.save()

    def latents(self, mel: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised latents and the latent frame mask of a mel batch (frozen VAE, no gradients)."""
        with torch.no_grad():
            vae = self.vae.to(mel.device)
            return vae.encode_latents(mel, mask, sample=self.sample_latents and self.training)

    def cached_latents(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Normalised latents and latent frame mask of a ``LatentSegments`` batch (a posterior sample in
        training with ``sample_latents``, else the mean)."""
        mean, std = batch["latent_mean"], batch["latent_std"]
        raw = mean + std * torch.randn_like(mean) if self.sample_latents and self.training else mean
        zmask = frame_mask(torch.as_tensor(batch["latent_frames"], device=mean.device), mean.shape[-1])
        return (raw - self.vae.latent_shift.to(raw.device)) * self.vae.latent_scale.to(raw.device), zmask

    def compute_loss(self, batch: dict[str, Any]) -> Tensor:
        if "latent_mean" in batch:
            z, zmask = self.cached_latents(batch)
        else:
            z, zmask = self.latents(batch["mel"], batch["frame_mask"])  # (B, C, H, W), (B, W)
        captions = list(batch["text"])
        gen = None if self.training else torch.Generator(z.device).manual_seed(0)
        if self.training and self.caption_dropout > 0:
            captions = drop_captions(captions, self.caption_dropout)
        text, text_mask = self.cache(captions, z.device)
        lo, hi = self.train_t  # dsm_loss's own draw when the range is all of [0, 1]
        t = sample_t(z.shape[0], t_min=max(lo, 1e-5), t_max=hi, generator=gen, device=z.device)
        return dsm_loss(self.net, z, self.schedule, prediction=self.prediction, weighting=self.weighting,
                        noise_input_kind=self.noise_input, mask=zmask[:, None, None, :], generator=gen, t=t,
                        text=text, text_mask=text_mask, frame_mask=zmask)

    def pipeline(self, vocoder: Any = None, **settings: Any) -> Any:
        """An ``AudioPipeline`` around the current weights (inside ``ema_weights()`` for the EMA ones)."""
        from .inference import AudioPipeline

        return AudioPipeline(self.vae, self.net, self.text_encoder, self.schedule, self.prediction,
                             self.noise_input, vocoder=vocoder, **settings)

    def save_pipeline(self, directory: str | os.PathLike, vocoder: Any = None, **settings: Any) -> Path:
        """Write a pipeline directory with the EMA weights (see ``AudioPipeline.save_pretrained``)."""
        with self.ema_weights():
            return self.pipeline(vocoder, **settings).save_pretrained(directory)

    def export_metadata(self) -> dict[str, Any]:
        return {
            "vae_config": self.vae.config, "vae_state": {k: v.cpu() for k, v in self.vae.state_dict().items()},
            "text_encoder": self.text_encoder.reference(), "schedule": self.schedule.config(),
            "prediction": self.prediction, "noise_input": self.noise_input, "train_t": list(self.train_t),
        }


def join_experts(low: CaptionDenoiser, low_info: dict[str, Any], high: CaptionDenoiser, high_info: dict[str, Any],
                 boundary: float) -> TimeSplitDenoiser:
    """Two trained nets (with their checkpoints' export metadata) as one ``TimeSplitDenoiser``, after checking
    that they were trained for the same pipeline and that each covers its side of ``boundary``."""
    for key in ("vae_config", "text_encoder", "schedule", "prediction", "noise_input"):
        if low_info[key] != high_info[key]:
            raise ValueError(f"the two experts were trained with different {key} ({low_info[key]} vs "
                             f"{high_info[key]}); train the high-noise one with the same recipe and VAE")
    if any(not torch.equal(v, high_info["vae_state"][k]) for k, v in low_info["vae_state"].items()):
        raise ValueError("the two experts were trained on different VAEs; train both on the same exported VAE")
    (llo, lhi), (hlo, hhi) = (low_info.get("train_t", (0.0, 1.0)), high_info.get("train_t", (0.0, 1.0)))
    if not (llo <= boundary <= lhi and hlo <= boundary < hhi):
        raise ValueError(f"boundary {boundary} must lie in both experts' training ranges (low-noise net "
                         f"[{llo}, {lhi}], high-noise net [{hlo}, {hhi}]); pick a boundary inside both")
    return TimeSplitDenoiser.combine(low, high, boundary)


def export_pipeline(checkpoint: str | os.PathLike | dict[str, Any], directory: str | os.PathLike, *,
                    high: str | os.PathLike | dict[str, Any] | None = None, boundary: float = 0.85,
                    vocoder: Any = None, ema: bool = True, **settings: Any) -> Path:
    """A ``LatentDiffusionModule`` checkpoint -> a pipeline directory (VAE, denoiser, text-encoder reference,
    and ``vocoder`` (a ``Vocoder`` or its directory) if given). ``high``: the checkpoint of a high-noise
    expert (trained with ``train_t`` from at most ``boundary`` to 1), which then samples the times above
    ``boundary`` (``TimeSplitDenoiser``). ``settings``: pipeline defaults (steps, guidance, sampler, ...).
    Only export checkpoints you trust (they are pickles)."""
    from .inference import AudioPipeline

    net, info = load_net(read_checkpoint(checkpoint, LatentDiffusionModule), ema=ema)
    if high is not None:
        high_net, high_info = load_net(read_checkpoint(high, LatentDiffusionModule), ema=ema)
        net = join_experts(net, info, high_net, high_info, boundary)
    vae = MelVAE(**info["vae_config"])
    vae.load_state_dict(info["vae_state"])
    if isinstance(vocoder, (str, os.PathLike)):
        from ..vocoder import Vocoder

        vocoder = Vocoder.from_pretrained(vocoder, expected_mel=vae.mel_config, what="the VAE")
    pipe = AudioPipeline(vae, net, encoder_from_reference(info["text_encoder"]),
                         schedule_from_config(info["schedule"]), info["prediction"], info["noise_input"],
                         vocoder=vocoder, **settings)
    return pipe.save_pretrained(directory)
