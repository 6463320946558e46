"""The WaveGrad architecture options, PriorGrad's prior, and the side-by-side bench against lmnt's WaveGrad."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from audiodiff.mel import MelConfig, MelSpectrogram
from audiodiff.vocoder import Vocoder, VocoderModule, WaveGradNet, sample_noise_level
from audiodiff.vocoder.inference import PriorGradStd, make_prior

ROOT = Path(__file__).resolve().parents[1]
LEGACY = {"upsample_factors": (4, 4, 4, 2, 2), "mel_channels": 96, "upsample_channels": (96, 64, 48, 32, 24),
          "downsample_channels": (16, 24, 32, 48, 64), "embed_dim": 64}  # a first-release config.json


def old_net_offset() -> float:
    return WaveGradNet(**LEGACY).mel_offset


def _out(net, alpha: float, x, mel):
    with torch.no_grad():
        return net(x, torch.tensor([alpha]), mel=mel)


def test_legacy_config_builds_the_first_release_net_and_options_validate():
    torch.manual_seed(0)
    old = WaveGradNet(**LEGACY)  # keys missing from an old config.json mean the old architecture
    assert old.embed is not None and old.dblocks[0].down is not None
    assert {"noise_conditioning", "modulation", "downsample", "init", "dilations"} <= old.config.keys()
    mel, x = torch.randn(1, 80, 6) - 4, torch.randn(1, 6 * 256)
    # the old conditioning starts as the identity (zero-initialised FiLM): the noise level is ignored at init
    assert torch.equal(_out(old, 0.2, x, mel), _out(old, 0.9, x, mel))
    for key, bad in (("noise_conditioning", "mlp"), ("modulation", "gamma"), ("downsample", "pool"),
                     ("init", "xavier")):
        with pytest.raises(ValueError, match=key):
            WaveGradNet(**LEGACY, **{key: bad})
    with pytest.raises(ValueError, match="group of four per UBlock"):
        WaveGradNet(**LEGACY, dilations=[[1, 2, 1, 2]] * 2)


def test_paper_options_condition_on_the_level_from_the_start_and_round_trip(tmp_path):
    torch.manual_seed(0)
    net = WaveGradNet.from_size("tiny")
    assert net.config["noise_conditioning"] == "additive" and net.embed is None
    assert net.mel_offset == pytest.approx(math.log(1e-5)) and old_net_offset() == 0.0  # ln-mel floor -> 0
    mel, x = torch.randn(1, 80, 6) - 4, torch.randn(1, 6 * 256)
    lo, hi = _out(net, 0.2, x, mel), _out(net, 0.9, x, mel)
    assert (lo - hi).abs().mean() > 0.05 * lo.abs().mean()  # the level matters before any training
    both = _out(net, 0.2, torch.cat([x, x]), torch.cat([mel, mel]))
    torch.testing.assert_close(both, torch.cat([lo, lo]))
    # affine modulation: zero scale and shift remove the features; residual keeps them
    from audiodiff.vocoder.model import _modulate

    h, z = torch.randn(2, 3, 5), torch.zeros(2, 3, 5)
    assert torch.equal(_modulate(h, z, z, affine=True), z) and torch.equal(_modulate(h, z, z), h)
    # "nearest" down-sampling keeps every factor-th sample
    block = net.dblocks[0]
    assert block.down is None
    # orthogonal init: square convolution weights reshaped to (out, in * k) have orthonormal rows
    w = net.ublocks[0].convs[1].weight.reshape(net.ublocks[0].convs[1].weight.shape[0], -1)
    torch.testing.assert_close(w @ w.T, torch.eye(w.shape[0]), atol=1e-4, rtol=0)
    vocoder = Vocoder(net)
    vocoder.save_pretrained(tmp_path / "m")
    loaded = Vocoder.from_pretrained(tmp_path / "m")
    assert loaded.net.config == json.loads(json.dumps(net.config))
    torch.testing.assert_close(_out(loaded.net, 0.3, x, mel), _out(net, 0.3, x, mel))


def test_priorgrad_std_follows_the_frame_loudness():
    config = MelConfig()
    prior = PriorGradStd(config, std_min=0.1, rms_ref=0.5)
    mel_fn = MelSpectrogram(config)
    g = torch.Generator().manual_seed(1)
    quiet, mid, loud = (a * torch.randn(20 * 256, generator=g) for a in (1e-3, 0.1, 0.9))
    audio = torch.cat([quiet, mid, loud])
    std = prior(mel_fn(audio))
    assert std.shape == (audio.numel() // 256 * 256,)
    assert std.min() >= 0.1 and std.max() <= 1.0
    assert torch.allclose(std[2 * 256: 18 * 256], torch.tensor(0.1))  # floor
    torch.testing.assert_close(std[22 * 256: 38 * 256].mean(), torch.tensor(0.2), atol=0.03, rtol=0)  # 0.1 / 0.5
    assert torch.allclose(std[42 * 256: 58 * 256], torch.tensor(1.0))  # louder than rms_ref: standard prior
    assert torch.equal(std[:256], std[255:256].expand(256))  # held over the frame's hop samples
    assert make_prior("standard", config) is None and make_prior(prior.config(), config).rms_ref == 0.5
    with pytest.raises(ValueError, match="unknown prior"):
        make_prior("specgrad", config)  # the shaped prior is called "spectral"


class _Oracle(torch.nn.Module):
    """The exact eps of a known x0 under PriorGrad: eps = (x_t - alpha x0) / (sigma std)."""

    def __init__(self, x0: torch.Tensor, prior: PriorGradStd | None):
        super().__init__()
        self.x0, self.prior, self.n_mels, self.hop_length = x0, prior, 80, 256
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x_t, alpha, mel):
        std = self.prior(mel) if self.prior is not None else 1.0
        a = alpha.reshape(-1, 1).to(torch.float64)
        return ((x_t - a * self.x0) / ((1 - a**2).sqrt() * std)).to(x_t.dtype)


def test_priorgrad_sampler_returns_the_signal_with_an_exact_network():
    g = torch.Generator().manual_seed(0)
    audio = torch.cat([0.002 * torch.randn(8 * 256, generator=g), 0.3 * torch.randn(8 * 256, generator=g)])[None]
    mel = MelSpectrogram(MelConfig())(audio)
    vocoder = Vocoder(_Oracle(audio.double(), PriorGradStd(MelConfig())), prior="priorgrad", clip=None)
    out = vocoder(mel, 6, seed=0, chunk_frames=None)
    torch.testing.assert_close(out, audio, atol=1e-4, rtol=1e-4)
    # an oracle that assumes the standard prior is wrong under PriorGrad sampling: the scaling matters
    wrong = Vocoder(_Oracle(audio.double(), None), prior="priorgrad", clip=None)(mel, 6, seed=0, chunk_frames=None)
    assert (wrong - audio).abs().mean() > 10 * (out - audio).abs().mean()


def test_priorgrad_training_loss_is_the_whitened_noise_l1_and_is_saved(tmp_path):
    torch.manual_seed(0)
    net = WaveGradNet.from_size("tiny")
    module = VocoderModule(net, prior="priorgrad", ema_decay=None).eval()
    g = torch.Generator().manual_seed(2)
    audio = torch.cat([0.01 * torch.randn(2, 14 * 256, generator=g), 0.5 * torch.randn(2, 14 * 256, generator=g)], 1)
    mel = module.mel_fn(audio)
    with torch.no_grad():
        loss = module.compute_loss({"audio": audio, "mel": mel})
        gen = torch.Generator().manual_seed(0)  # what compute_loss draws in eval mode
        t = sample_noise_level(module.schedule, 2, generator=gen)
        noise = torch.randn(audio.shape, generator=gen)
        alpha = module.schedule.alpha(t).float()[:, None]
        std = module.prior(mel)
        x_t = alpha * audio + (1 - alpha**2).sqrt() * std * noise
        expected = (net(x_t, alpha[:, 0], mel=mel) - noise).abs().mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-4)
    assert 0.1 <= float(std.min()) < float(std.max()) <= 1.0
    vocoder = module.vocoder()
    assert vocoder.prior is not None
    vocoder.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "vocoder.json").read_text())["prior"]
    assert saved == {"kind": "priorgrad", "std_min": 0.1, "rms_ref": 0.5}
    assert Vocoder.from_pretrained(tmp_path / "m").prior.config() == saved


# --------------------------------------------------------------------------------------------------
# the side-by-side bench (smoke form: both systems train a few steps, the JSON has every key)


def _bench():
    spec = importlib.util.spec_from_file_location("vocoder_peer", ROOT / "bench" / "vocoder_peer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lmnt_mel_config_matches_its_preprocess_formula():
    bench = _bench()
    config = bench.lmnt_mel_config()
    mel_fn = MelSpectrogram(config)
    audio = 0.1 * torch.randn(30 * 300, generator=torch.Generator().manual_seed(0))
    # lmnt: |STFT| / sqrt(sum w^2), 128 HTK bands 20..11025 Hz, 20 log10(max(m, 1e-5)) - 20, (x + 100) / 100 in [0, 1]
    window = torch.hann_window(1200)
    pad = (2048 - 300) // 2
    x = torch.nn.functional.pad(audio[None, None], (pad, pad), mode="reflect")[0]
    spec = torch.stft(x, 2048, 300, 1200, window, center=False, return_complex=True).abs()[0]
    spec = spec / window.pow(2).sum().sqrt()
    m = mel_fn.filters @ spec
    expected = ((20 * torch.log10(m.clamp(min=1e-5)) - 20 + 100) / 100).clamp(0, 1)
    got = mel_fn(audio)
    keep = expected < 1  # lmnt also clamps at 1 (m > 10 times the window norm; not reached by this audio)
    assert keep.all()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert config.n_mels == 128 and config.f_max == 11025 and config.hop_length == 300


def test_bench_smoke_trains_both_and_reports_every_key(speech_tiny, tmp_path):
    bench = _bench()
    try:
        bench.load_lmnt_module(tmp_path / "peers")
    except subprocess.CalledProcessError:  # pragma: no cover - PyPI unreachable
        pytest.skip("PyPI unreachable: cannot fetch the reference wavegrad==0.1.5")
    out = tmp_path / "peer.json"
    result = bench.main(["--smoke", "--data", str(speech_tiny), "--cache", str(tmp_path / "peers"),
                         "--out", str(out), "--threads", "1", "--search", "1"])
    assert json.loads(out.read_text()).keys() == result.keys()
    for key in ("settings", "ours_config", "lmnt", "ours", "ratio_ours_over_lmnt", "max_ratio", "quality_ratio",
                "quality_ratio_searched", "griffin_lim", "ground_truth", "machine"):
        assert key in result
    assert result["quality_ratio"] == pytest.approx(result["ours"]["quality"]["vocoder"]["logmel"]
                                                    / result["lmnt"]["quality"]["vocoder"]["logmel"])
    for system in ("lmnt", "ours"):
        r = result[system]
        curve = list(r["heldout_l1"].values())
        assert len(curve) == 3 and all(math.isfinite(v) for v in curve)
        assert len(set(curve)) > 1  # the weights moved: the held-out loss changes from step to step
        assert r["samples_per_s"] > 0 and r["parameters"] > 0
        for metric in ("logmel", "pesq_wb", "stoi", "rtf"):
            assert math.isfinite(r["quality"]["vocoder"][metric])
            assert math.isfinite(r["quality"]["vocoder_searched"][metric])
        # each system searched its own 6-step table
        betas = r["quality"]["searched_betas"]
        assert len(betas) == 6 and all(0 < b < 1 for b in betas)
    searched = {system: result[system]["quality"]["vocoder_searched"]["logmel"] for system in ("ours", "lmnt")}
    assert result["quality_ratio_searched"] == pytest.approx(searched["ours"] / searched["lmnt"])
    for step, ratio in result["ratio_ours_over_lmnt"].items():
        assert ratio == pytest.approx(result["ours"]["heldout_l1"][step] / result["lmnt"]["heldout_l1"][step])
    assert result["ground_truth"]["pesq_wb"] > result["griffin_lim"]["pesq_wb"]
    assert result["ground_truth"]["logmel"] == 0


def test_bench_loss_colours_the_noise_with_a_shaped_prior():
    """l1_loss: the net sees level * audio + sqrt(1 - level^2) * L eps and predicts the white eps; with
    data_space the error is measured through L."""
    from audiodiff.vocoder.inference import SpectralPrior

    bench = _bench()
    config = MelConfig()
    prior = SpectralPrior(config)
    g = torch.Generator().manual_seed(0)
    audio = 0.1 * torch.randn(2, 32 * 256, generator=g)
    mel = MelSpectrogram(config)(audio)[..., :32]
    noise, level = torch.randn(audio.shape, generator=g), torch.tensor([0.3, 0.8])
    color = prior.operators(mel)[0]
    seen = {}

    def oracle(x_t, lv, mel):  # recovers eps from x_t exactly, through the known audio and L
        seen["x_t"] = x_t
        return noise

    assert float(bench.l1_loss(oracle, audio, mel, level, noise, color)) == 0.0
    expected = level[:, None] * audio + (1 - level[:, None] ** 2).sqrt() * color(noise)
    torch.testing.assert_close(seen["x_t"], expected)
    zero = lambda x_t, lv, mel: torch.zeros_like(x_t)  # noqa: E731
    white = float(bench.l1_loss(zero, audio, mel, level, noise, color))
    shaped = float(bench.l1_loss(zero, audio, mel, level, noise, color, data_space=True))
    assert white == pytest.approx(float(noise.abs().mean()))
    assert shaped == pytest.approx(float(color(noise).abs().mean()))
    assert shaped < 0.5 * white  # quiet 0.1-RMS audio: the shaped noise is well below unit level
