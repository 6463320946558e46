"""The latent cache of the latent diffusion module: what it stores, when it is reused or rebuilt, and that the
module trains on it (a step then skips the mel and the VAE)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from audiodiff.data.loaders import AudioClips
from audiodiff.mel import MelSpectrogram
from audiodiff.t2s import LatentDiffusionModule, MelVAE, UNetDenoiser
from audiodiff.t2s.module import (
    CaptionedMelDataModule,
    CaptionedSegments,
    LatentCache,
    LatentSegments,
    latent_cache_fingerprint,
)
from audiodiff.t2s.text_encoder import ByteTextEncoder

SR = 22050


def write_folder(root: Path, samples: dict[str, int]) -> Path:
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in samples.items():
        sf.write(root / "train" / f"{name}.wav", (0.2 * rng.standard_normal(n)).astype(np.float32), SR)
    (root / "train" / "metadata.csv").write_text("file_name,caption\n" + "".join(
        f"{name}.wav,a {name} sound\n" for name in samples))
    return root


def small_vae(seed: int = 0) -> MelVAE:
    torch.manual_seed(seed)
    vae = MelVAE(latent_channels=2, channels=(8, 8, 8))
    mels = [(-5 + 2 * torch.randn(2, 80, 32), None)]
    vae.fit_input_statistics(mels)
    vae.fit_latent_statistics(mels)
    return vae.eval()


def test_cache_holds_each_clips_posterior_and_is_invalidated_by_vae_or_data(tmp_path):
    root = write_folder(tmp_path / "data", {"long": 20000, "short": 6000})
    segs = CaptionedSegments(AudioClips(root, "train"), 32, 256, random=True)
    vae = small_vae()
    cache = LatentCache.build(vae, segs)
    assert cache.captions == ["a long sound", "a short sound"]
    # clip i alone through the VAE: the same posterior over its real latent frames
    mel_fn = MelSpectrogram(vae.mel_config)
    for i in range(2):
        mel = mel_fn(torch.as_tensor(segs.clips[i]["audio"], dtype=torch.float32)[None])
        q = vae.encode(mel)
        n = int(q.mask.sum())
        assert cache.frames[i] == n == -(-mel.shape[-1] // vae.factor)
        torch.testing.assert_close(cache.mean[i], q.mean[0, ..., :n], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cache.std[i], q.std[0, ..., :n], atol=1e-5, rtol=1e-4)

    path = tmp_path / "run" / "latents-train.safetensors"
    cache.save(path)
    again = LatentCache.load(path, latent_cache_fingerprint(vae, segs))
    assert again is not None and again.frames == cache.frames and torch.equal(again.mean[1], cache.mean[1])
    assert LatentCache.load(path, latent_cache_fingerprint(small_vae(seed=1), segs)) is None  # other weights
    os.utime(root / "train" / "short.wav", ns=(1, 1))  # the data changed (a rebuilt file)
    assert LatentCache.load(path, latent_cache_fingerprint(vae, segs)) is None

    # crops: latent width of the segment, zero past a short clip's end, frame count of the real part
    ds = LatentSegments(segs, cache, vae.factor)
    long_item, short_item = ds[0], ds[1]
    assert long_item["latent_mean"].shape[-1] == 8 and long_item["latent_frames"] == 8
    assert short_item["latent_frames"] == cache.frames[1] < 8
    assert torch.all(short_item["latent_std"][..., cache.frames[1]:] == 0)
    torch.testing.assert_close(short_item["latent_mean"][..., : cache.frames[1]], cache.mean[1])


def test_module_trains_on_cached_latents(tmp_path):
    root = write_folder(tmp_path / "data", {"a": 32 * 256, "b": 32 * 256})
    vae = small_vae()
    net = UNetDenoiser(in_channels=2, channels=(8, 16), attention_levels=(1,), emb_dim=16, heads=2,
                       text_vocab_size=ByteTextEncoder.vocab_size, text_encoder_dim=8, text_encoder_depth=1)
    module = LatentDiffusionModule(net, vae, ByteTextEncoder(), latent_cache_dir=str(tmp_path / "run"))
    dm = CaptionedMelDataModule(str(root), segment_frames=32, batch_size=2, val_split=None)
    dm.setup("fit")
    module.use_latent_cache(dm)
    assert isinstance(dm.train_set, LatentSegments) and (tmp_path / "run" / "latents-train.safetensors").is_file()
    assert set(module.cache.store) == {"", "a a sound", "a b sound"}
    batch = next(iter(dm.train_dataloader()))
    assert "audio" not in batch and "mel" not in module.on_after_batch_transfer(batch, 0)
    module.eval()
    with torch.no_grad():
        cached = float(module.compute_loss(batch))
    # the same clips through the audio path (each clip is exactly one segment: the same latents)
    audio_ds = CaptionedSegments(AudioClips(root, "train"), 32, 256, random=False)
    audio_batch = {"audio": torch.stack([audio_ds[i]["audio"] for i in range(2)]),
                   "frames": torch.tensor([audio_ds[i]["frames"] for i in range(2)]), "text": batch["text"]}
    order = [0, 1] if batch["text"][0] == "a a sound" else [1, 0]
    audio_batch = {**audio_batch, "audio": audio_batch["audio"][order], "frames": audio_batch["frames"][order]}
    z_cached, m_cached = module.cached_latents(batch)
    mb = module.on_after_batch_transfer(audio_batch, 0)
    z_audio, m_audio = module.latents(mb["mel"], mb["frame_mask"])
    assert torch.equal(m_cached, m_audio)
    torch.testing.assert_close(z_cached * m_cached[:, None, None], z_audio * m_audio[:, None, None], atol=1e-4,
                               rtol=1e-3)
    assert np.isfinite(cached)


def test_module_trains_only_on_its_time_range(tmp_path):
    """``train_t`` trains an expert for part of the path: every time the net sees lies in the range."""
    import pytest

    root = write_folder(tmp_path / "data", {"a": 32 * 256, "b": 32 * 256})
    vae = small_vae()
    net = UNetDenoiser(in_channels=2, channels=(8, 16), attention_levels=(1,), emb_dim=16, heads=2,
                       text_vocab_size=ByteTextEncoder.vocab_size, text_encoder_dim=8, text_encoder_depth=1)
    with pytest.raises(ValueError, match="train_t"):
        LatentDiffusionModule(net, vae, ByteTextEncoder(), train_t=(0.9, 0.5))
    module = LatentDiffusionModule(net, vae, ByteTextEncoder(), train_t=(0.8, 1.0))
    dm = CaptionedMelDataModule(str(root), segment_frames=32, batch_size=2, val_split=None)
    dm.setup("fit")
    module.use_latent_cache(dm)
    seen: list[torch.Tensor] = []
    net.register_forward_pre_hook(lambda m, args: seen.append(args[1].detach().clone()))
    module.train()
    for batch in list(dm.train_dataloader()) * 8:
        module.compute_loss(batch).backward()
    t = torch.cat(seen)
    assert t.numel() == 16 and t.min() >= 0.8 and t.max() <= 1.0 and t.max() - t.min() > 0.05
