"""``AudioPipeline`` on a tiny random model: shapes and durations, seeds and batches, save/load round trip,
inpainting and continuation, variation, negative prompts, samplers, mel-config checks, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from audiodiff.mel import MelConfig, MelConfigMismatchError
from audiodiff.t2s import AudioPipeline, ByteTextEncoder, MelVAE, UNetDenoiser
from audiodiff.t2s.cli import main
from audiodiff.t2s.inference import check_components
from audiodiff.vocoder import Vocoder, WaveGradNet

SR, HOP = 22050, 256


def make_pipeline(**settings) -> AudioPipeline:
    torch.manual_seed(0)
    vae = MelVAE(latent_channels=3, channels=(8, 8, 16), groups=4)
    g = torch.Generator().manual_seed(0)
    mels = [(-5 + 2 * torch.randn(2, 80, 24, generator=g), None) for _ in range(2)]
    vae.fit_input_statistics(mels)
    vae.fit_latent_statistics(mels)
    net = UNetDenoiser(in_channels=3, channels=(16, 16), attention_levels=(1,), heads=2, emb_dim=32, groups=4,
                       text_dim=None, text_vocab_size=ByteTextEncoder.vocab_size, text_encoder_dim=16,
                       text_encoder_depth=1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    kw = dict(steps=3, guidance=3.0, griffin_lim_iters=2)
    kw.update(settings)
    return AudioPipeline(vae, net, ByteTextEncoder(), **kw)


@pytest.fixture(scope="module")
def pipe():
    return make_pipeline()


def tone(seconds: float, f: float = 440.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return 0.3 * torch.sin(2 * torch.pi * f * t)


def test_generate_shapes_durations_and_batches(pipe):
    out = pipe(["three short high beeps", "a low hum"], seconds=0.5, seed=0)
    frames = round(0.5 * SR / HOP)
    assert out.mel.shape == (2, 80, frames) and out.audio.shape == (2, frames * HOP)
    assert out.latents.shape == (2, 3, 20, -(-frames // 4)) and out.sample_rate == SR
    assert out.audio.abs().max() <= 1 and torch.isfinite(out.mel).all()
    assert pipe("x", seconds=0.3, seed=0).mel.shape[-1] == round(0.3 * SR / HOP)


def test_seeds_make_items_independent_of_the_batch(pipe):
    both = pipe(["a", "b"], seconds=0.3, seed=5, render=False)
    alone = pipe("b", seconds=0.3, seed=6, render=False)
    torch.testing.assert_close(both.latents[1:], alone.latents, atol=1e-5, rtol=1e-5)
    again = pipe(["a", "b"], seconds=0.3, seed=5, render=False)
    assert torch.equal(again.latents, both.latents)
    assert not torch.allclose(pipe("a", seconds=0.3, seed=7, render=False).latents, both.latents[:1])


def test_save_and_from_pretrained_give_identical_audio(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    for name in ("config.json", "mel_config.json", "vae/config.json", "denoiser/model.safetensors",
                 "text_encoder/reference.json"):
        assert (tmp_path / "p" / name).is_file()
    back = AudioPipeline.from_pretrained(tmp_path / "p")
    a = pipe(["a quiet hiss", "two beeps"], seconds=0.4, seed=3, negative_prompt="loud")
    b = back(["a quiet hiss", "two beeps"], seconds=0.4, seed=3, negative_prompt="loud")
    assert torch.equal(a.audio, b.audio) and torch.equal(a.mel, b.mel)
    assert back.steps == pipe.steps and back.guidance == pipe.guidance
    assert AudioPipeline.from_pretrained(tmp_path / "p", steps=7).steps == 7
    pipe.save_pretrained(tmp_path / "p")  # replacing a saved pipeline works


def test_inpainting_keeps_the_known_region_exactly(pipe):
    audio = tone(0.75)
    region = (0.25, 0.5)
    out = pipe.inpaint(audio, "a click", region=region, seed=0)
    mel_in = pipe.mel(audio)
    with torch.no_grad():
        z_in, _ = pipe.vae.encode_latents(mel_in)
    start, end = pipe.frames_for(region[0]), pipe.frames_for(region[1])
    keep_lat = torch.ones(z_in.shape[-1], dtype=torch.bool)
    keep_lat[start // 4: -(-end // 4)] = False
    assert keep_lat.any() and not keep_lat.all()
    assert torch.equal(out.latents[..., keep_lat], z_in[..., keep_lat])
    assert not torch.allclose(out.latents[..., ~keep_lat], z_in[..., ~keep_lat])
    assert torch.equal(out.mel[..., :start], mel_in[..., :start]) and torch.equal(out.mel[..., end:], mel_in[..., end:])
    fade, n = 221, out.audio.shape[-1]  # the output covers whole frames: n = frames * hop
    assert torch.equal(out.audio[0, : start * HOP - fade], audio[: start * HOP - fade])
    assert torch.equal(out.audio[0, end * HOP + fade:], audio[end * HOP + fade: n])


def test_continuation_extends_the_clip(pipe):
    audio = tone(0.5)
    out = pipe.inpaint(audio, ["a hum", "a beep"], seconds=1.0, seed=1)
    frames_in, frames = pipe.mel(audio).shape[-1], pipe.frames_for(1.0)
    assert out.mel.shape == (2, 80, frames) and out.audio.shape == (2, frames * HOP)
    keep = frames_in // 4
    with torch.no_grad():
        mel = torch.nn.functional.pad(pipe.mel(audio), (0, frames - frames_in), value=MelConfig().silence())
        z_in, _ = pipe.vae.encode_latents(mel.expand(2, -1, -1))  # the pipeline encodes the batch of two
    assert torch.equal(out.latents[..., :keep], z_in[..., :keep])


def test_variation_strength_zero_and_one(pipe):
    a, b = tone(0.4, 300.0), tone(0.4, 2000.0)
    with torch.no_grad():
        z_a, _ = pipe.vae.encode_latents(pipe.mel(a))
    assert torch.equal(pipe.variation(a, "x", strength=0.0, seed=0).latents, z_a)
    assert pipe.variation(torch.stack([a, b]), "x", strength=0.0).latents.shape[0] == 2  # one prompt, two clips
    full_a = pipe.variation(a, "a beep", strength=1.0, seed=4)
    full_b = pipe.variation(b, "a beep", strength=1.0, seed=4)
    assert torch.equal(full_a.latents, full_b.latents)
    gen = pipe("a beep", seconds=0.4, seed=4, render=False)
    torch.testing.assert_close(full_a.latents, gen.latents, atol=1e-6, rtol=1e-6)
    half = pipe.variation(a, "a beep", strength=0.5, seed=4)
    assert (half.latents - z_a).abs().mean() < (full_a.latents - z_a).abs().mean()


def test_negative_prompt_acts_through_guidance_only(pipe):
    base = pipe("a beep", seconds=0.3, seed=0, render=False)
    neg = pipe("a beep", seconds=0.3, seed=0, negative_prompt="a loud hiss", render=False)
    assert not torch.allclose(base.latents, neg.latents)
    g1 = pipe("a beep", seconds=0.3, seed=0, guidance=1.0, render=False)
    g1_neg = pipe("a beep", seconds=0.3, seed=0, guidance=1.0, negative_prompt="a loud hiss", render=False)
    assert torch.equal(g1.latents, g1_neg.latents)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "euler", "heun", "pc"])
def test_any_core_sampler(pipe, sampler):
    a = pipe("a", seconds=0.2, seed=0, steps=2, sampler=sampler, render=False)
    b = pipe("a", seconds=0.2, seed=0, steps=2, sampler=sampler, render=False)
    assert torch.isfinite(a.latents).all() and torch.equal(a.latents, b.latents)
    with pytest.raises(ValueError, match="unknown sampler"):
        pipe("a", seconds=0.2, sampler="nope")


def tiny_vocoder(**mel) -> Vocoder:
    net = WaveGradNet(upsample_factors=(4, 4, 4, 2, 2), mel_channels=8, upsample_channels=(8, 8, 8, 8, 8),
                      downsample_channels=(4, 4, 4, 4, 4), embed_dim=8)
    return Vocoder(net, mel_config=MelConfig(**mel))


def test_mel_config_mismatch_between_vae_and_vocoder_names_the_numbers(pipe, tmp_path):
    with pytest.raises(MelConfigMismatchError, match=r"f_max 11025\.0 vs 8000\.0") as e:
        AudioPipeline(pipe.vae, pipe.denoiser, pipe.text_encoder, vocoder=tiny_vocoder(f_max=11025.0))
    assert e.value.differences == {"f_max": (11025.0, 8000.0)}
    tiny_vocoder(f_max=11025.0).save_pretrained(tmp_path / "voc")
    pipe.save_pretrained(tmp_path / "p")
    with pytest.raises(MelConfigMismatchError, match="f_max"):
        AudioPipeline.from_pretrained(tmp_path / "p", vocoder=tmp_path / "voc")
    ok = AudioPipeline(pipe.vae, pipe.denoiser, pipe.text_encoder, vocoder=tiny_vocoder(), steps=1)
    ok.vocoder_steps = 2
    out = ok("a", seconds=0.2, seed=0)
    assert out.audio.shape == (1, out.mel.shape[-1] * HOP)


def test_components_must_fit(pipe):
    other = UNetDenoiser(in_channels=4, channels=(8, 8), heads=2, emb_dim=16, groups=4, text_dim=None,
                         text_vocab_size=ByteTextEncoder.vocab_size, text_encoder_dim=8, text_encoder_depth=1)
    with pytest.raises(ValueError, match="latent channels"):
        check_components(pipe.vae, other, pipe.text_encoder)
    states = UNetDenoiser(in_channels=3, channels=(8, 8), heads=2, emb_dim=16, groups=4, text_dim=12)
    with pytest.raises(ValueError, match="token ids"):
        check_components(pipe.vae, states, pipe.text_encoder)
    uncalibrated = MelVAE(latent_channels=3, channels=(8, 8, 16), groups=4)
    with pytest.raises(ValueError, match="latent scale"):
        AudioPipeline(uncalibrated, pipe.denoiser, pipe.text_encoder)


def test_generate_command(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    assert main(["generate", "two beeps", "a hum", "--model", str(tmp_path / "p"), "--seconds", "0.3", "--steps",
                 "2", "-o", str(tmp_path / "out.wav"), "--mel-out", str(tmp_path / "mel.npy")]) == 0
    for i in (0, 1):
        wave, sr = sf.read(tmp_path / f"out_{i}.wav")
        assert sr == SR and len(wave) == round(0.3 * SR / HOP) * HOP
    assert np.load(tmp_path / "mel.npy").shape == (2, 80, round(0.3 * SR / HOP))
    sf.write(tmp_path / "in.wav", tone(0.4).numpy(), SR)
    assert main(["generate", "a beep", "--model", str(tmp_path / "p"), "--init-audio", str(tmp_path / "in.wav"),
                 "--strength", "0.5", "--steps", "2", "-o", str(tmp_path / "var.wav")]) == 0
    assert main(["generate", "a beep", "--model", str(tmp_path / "p"), "--init-audio", str(tmp_path / "in.wav"),
                 "--continue", "--seconds", "0.6", "--steps", "2", "-o", str(tmp_path / "cont.wav")]) == 0
    assert len(sf.read(tmp_path / "cont.wav")[0]) == round(0.6 * SR / HOP) * HOP
