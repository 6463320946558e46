"""WaveGrad vocoder without training: network shapes, noise-level conditioning and sampling, chunked
inference, save/load, the schedule search's optimiser, and the metrics."""

from __future__ import annotations

import math

import pytest
import torch

from audiodiff import testing
from audiodiff.mel import MelConfig, MelConfigMismatchError
from audiodiff.metrics import PESQ_MAX, log_mel_distance, mr_stft_distance, pesq_wb, stoi_score
from audiodiff.vocoder import Vocoder, WaveGradNet, sample_noise_level
from audiodiff.vocoder.inference import ChunkedNet, check_betas
from audiodiff.vocoder.search import geometric_betas, is_valid, search_betas
from diffcore.schedules import BetaTableSchedule, LinearBetaSchedule

SR = 22050


def speechlike(seconds: float = 1.0, f0: float = 120.0, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(testing.speechlike(seconds, f0, seed))


def tiny_net(seed: int = 0, film_std: float = 0.3, **kw) -> WaveGradNet:
    """A tiny net; with ``noise_conditioning="film"`` its FiLM projections are made random (they start at zero)."""
    torch.manual_seed(seed)
    net = WaveGradNet.from_size("tiny", **kw)
    for film in net.films:
        if hasattr(film.noise, "proj"):
            torch.nn.init.normal_(film.noise.proj.weight, std=film_std)
    return net.eval()


# --------------------------------------------------------------------------------------------------
# network


@pytest.mark.parametrize("frames", [1, 2, 7, 33])
def test_output_length_is_frames_times_hop(frames):
    net = tiny_net()
    mel = torch.randn(2, 80, frames)
    with torch.no_grad():
        out = net(torch.randn(2, frames * 256), torch.tensor([0.3, 0.9]), mel=mel)
        out3 = net(torch.randn(2, 1, frames * 256), torch.tensor(0.5), mel=mel)
    assert out.shape == (2, frames * 256) and out3.shape == (2, 1, frames * 256)
    assert torch.isfinite(out).all()


def test_other_hop_and_factor_errors():
    net = WaveGradNet(hop_length=300, upsample_factors=(5, 5, 3, 2, 2), mel_channels=32,
                      upsample_channels=(32, 32, 16, 16, 8), downsample_channels=(8, 8, 16, 16, 32), embed_dim=16)
    with torch.no_grad():
        assert net(torch.randn(1, 4 * 300), torch.tensor([0.5]), mel=torch.randn(1, 80, 4)).shape == (1, 1200)
    with pytest.raises(ValueError, match=r"multiply to 128.*hop length is 256"):
        WaveGradNet(upsample_factors=(4, 4, 4, 2))
    with pytest.raises(ValueError, match="one upsample and one downsample channel count"):
        WaveGradNet(upsample_factors=(4, 4, 4, 4), upsample_channels=(8, 8, 8, 8))
    with pytest.raises(ValueError, match="expected frames \\* hop_length"):
        tiny_net()(torch.randn(1, 1000), torch.tensor([0.5]), mel=torch.randn(1, 80, 4))


def test_sizes():
    base = sum(p.numel() for p in WaveGradNet.from_size("base").parameters())
    tiny = sum(p.numel() for p in WaveGradNet.from_size("tiny").parameters())
    assert 14e6 < base < 18e6  # the paper's ~15M
    assert tiny < 1e6


def test_noise_level_conditioning_changes_the_output():
    net = tiny_net()
    mel, x = torch.randn(1, 80, 6), torch.randn(1, 6 * 256)
    with torch.no_grad():
        lo, hi = net(x, torch.tensor([0.2]), mel=mel), net(x, torch.tensor([0.9]), mel=mel)
        again = net(x, torch.tensor([0.2]), mel=mel)
        both = net(torch.cat([x, x]), torch.tensor([0.2, 0.9]), mel=torch.cat([mel, mel]))
    assert torch.equal(lo, again)
    assert (lo - hi).abs().mean() > 0.05 * lo.abs().mean()
    torch.testing.assert_close(both, torch.cat([lo, hi]), atol=1e-5, rtol=1e-4)  # per-example levels
    # with the "film" conditioning, freshly initialised, FiLM is the identity, but the gradient reaching its
    # projection is not zero, so the conditioning is learnt
    fresh = WaveGradNet.from_size("tiny", noise_conditioning="film")
    fresh(x, torch.tensor([0.5]), mel=mel).square().mean().backward()
    assert all(f.noise.proj.weight.grad.abs().sum() > 0 for f in fresh.films)


# --------------------------------------------------------------------------------------------------
# training noise levels


def _ks_uniform(u: torch.Tensor) -> float:
    u = u.sort().values
    n = u.numel()
    return float((u - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max())


def test_training_noise_level_is_uniform_between_neighbouring_points():
    # a coarse table (8 points) with large late betas, so that alpha is far from linear in t in a segment
    sched = BetaTableSchedule(torch.logspace(-4, math.log10(0.9), 8, dtype=torch.float64))
    levels = sched.alpha(torch.arange(9, dtype=torch.float64) / 8)  # l_0 = 1 > l_1 > ... > l_8

    def segments(alpha):
        seg = torch.searchsorted(-levels, -alpha).clamp(1, 8)  # alpha in [l_seg, l_{seg-1}]
        return seg, (alpha - levels[seg]) / (levels[seg - 1] - levels[seg])

    n = 40_000
    t = sample_noise_level(sched, n, generator=torch.Generator().manual_seed(0))
    alpha = sched.alpha(t)
    assert float(alpha.max()) <= 1 and float(alpha.min()) >= float(levels[-1]) - 1e-12
    seg, u = segments(alpha)
    counts = torch.bincount(seg, minlength=9)[1:].double()
    assert float(((counts - n / 8) ** 2 / (n / 8)).sum()) < 24.3  # chi-square, 7 dof, p = 0.001
    assert _ks_uniform(u) < 1.95 / math.sqrt(n)  # Kolmogorov-Smirnov, p = 0.001
    last = u[seg == 8]
    assert _ks_uniform(last) < 1.95 / math.sqrt(last.numel())
    # the same test rejects uniform t: inside a segment alpha is exponential in t, not linear
    seg_t, u_t = segments(sched.alpha(torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)))
    last_t = u_t[seg_t == 8]
    assert _ks_uniform(last_t) > 4 * 1.95 / math.sqrt(last_t.numel())


# --------------------------------------------------------------------------------------------------
# inference


class _Ones(torch.nn.Module):
    def forward(self, x_t, c, mel):
        return torch.ones_like(x_t)


class _MelEcho(torch.nn.Module):
    """Receptive field of one frame: each sample gets its frame's first mel band (times the noise level)."""

    def forward(self, x_t, c, mel):
        return mel[:, 0].repeat_interleave(256, dim=-1) * c[:, None]


@pytest.mark.parametrize("chunk,context,fade", [(10, 4, 8), (7, 3, 0), (16, 16, 16), (5, 8, 5)])
def test_chunk_weights_are_a_partition_of_unity(chunk, context, fade):
    mel, x = torch.randn(2, 80, 53), torch.randn(2, 53 * 256)
    c = torch.tensor([0.3, 0.7])
    torch.testing.assert_close(ChunkedNet(_Ones(), 256, chunk, context, fade)(x, c, mel), torch.ones_like(x))
    torch.testing.assert_close(ChunkedNet(_MelEcho(), 256, chunk, context, fade)(x, c, mel),
                               _MelEcho()(x, c, mel))


def test_chunked_vocoding_matches_unchunked_and_is_seeded():
    vocoder = Vocoder(tiny_net()).eval()
    mel = torch.randn(1, 80, 44) - 4
    whole = vocoder(mel, 2, seed=1, chunk_frames=None)
    chunked = vocoder(mel, 2, seed=1, chunk_frames=12, context_frames=10, fade_frames=8)
    assert whole.shape == (1, 44 * 256) and whole.abs().max() <= 1  # clipped to the waveform range
    # context wider than the receptive field (about 8 frames): equal up to float rounding, so no seam
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=0)
    # too little context: windows are cross-faded, so the output stays close and has no jump
    short = vocoder(mel, 2, seed=1, chunk_frames=12, context_frames=2, fade_frames=4)
    assert (short - whole).abs().mean() < 0.5 * whole.abs().mean()
    assert not torch.allclose(vocoder(mel, 2, seed=2, chunk_frames=None), whole)
    # a list of different lengths: padded into one batch, each output trimmed to its own length
    outs = vocoder([mel[0], mel[0, :, :9]], 2, seed=1)
    assert [o.shape[-1] for o in outs] == [44 * 256, 9 * 256]


def test_beta_tables_and_grids():
    vocoder = Vocoder(tiny_net())
    ts = vocoder.grid(betas=[1e-4, 1e-3, 1e-2, 0.1, 0.5])
    assert ts.shape == (6,) and ts[-1] == 0 and torch.all(ts[1:] < ts[:-1])
    # the grid's noise levels are the table's
    ab = torch.cumprod(1 - torch.tensor([1e-4, 1e-3, 1e-2, 0.1, 0.5], dtype=torch.float64), 0)
    torch.testing.assert_close(vocoder.schedule.alpha_bar(ts[:-1]), ab.flip(0), rtol=1e-8, atol=1e-12)
    assert vocoder.betas_for(1000).numel() == 1000 and vocoder.betas_for(7).numel() == 7
    with pytest.raises(ValueError, match="beyond the training schedule's range"):
        check_betas([0.5, 0.9, 0.99], vocoder.schedule)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        check_betas([0.0, 0.1], vocoder.schedule)


def test_save_and_from_pretrained_round_trip(tmp_path):
    vocoder = Vocoder(tiny_net(), LinearBetaSchedule(1e-6, 1e-2, 1000), MelConfig())
    vocoder.set_noise_schedule([1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5])
    vocoder.save_pretrained(tmp_path / "m")
    loaded = Vocoder.from_pretrained(tmp_path / "m")
    assert loaded.mel_config == vocoder.mel_config and loaded.default_steps == 6
    assert loaded.noise_schedules == vocoder.noise_schedules
    assert loaded.schedule.config() == vocoder.schedule.config()
    mel = torch.randn(1, 80, 12) - 4
    torch.testing.assert_close(loaded(mel, seed=3), vocoder.eval()(mel, seed=3))
    with pytest.raises(MelConfigMismatchError, match="hop_length 256 vs 160, n_mels 80 vs 64"):
        Vocoder.from_pretrained(tmp_path / "m", expected_mel=MelConfig(n_mels=64, hop_length=160),
                                what="the text-to-sound model")
    Vocoder.from_pretrained(tmp_path / "m", expected_mel=MelConfig())  # the same config loads


# --------------------------------------------------------------------------------------------------
# schedule search (the optimiser; the search on a trained vocoder is in test_vocoder_training.py)


def test_search_finds_a_known_optimum_and_stays_valid():
    target = torch.tensor([3e-5, 4e-4, 3e-3, 3e-2, 0.2, 0.6], dtype=torch.float64)
    calls = []

    def objective(b):
        assert is_valid(b, 0.05)  # never asked to score an invalid table
        calls.append(b)
        return float(((b.log10() - target.log10()) ** 2).sum())

    naive = LinearBetaSchedule(1e-6, 1e-2, 1000).betas(6)
    res = search_betas(objective, 6, alpha_min=0.05, starts={"naive": naive}, log_steps=(0.5, 0.25, 0.1, 0.05),
                       rounds=20)
    b = torch.tensor(res.betas, dtype=torch.float64)
    assert is_valid(b, 0.05) and torch.all(b[1:] > b[:-1])
    assert res.objective < 0.01 < res.baselines["naive"]
    assert (b.log10() - target.log10()).abs().max() < 0.1
    assert res.evaluations == len(calls)


def test_geometric_betas_and_validity():
    b = geometric_betas(4, 1e-4, 0.1)
    torch.testing.assert_close(b, torch.tensor([1e-4, 1e-3, 1e-2, 1e-1], dtype=torch.float64))
    assert is_valid(b, 0.5) and not is_valid(b.flip(0), 0.5) and not is_valid(torch.tensor([0.9, 0.99]), 0.5)
    # the starting level sqrt(prod(1 - b)) = 0.94 here: too little noise to start from under alpha_max = 0.5
    assert not is_valid(b, 0.05, alpha_max=0.5) and is_valid(torch.tensor([1e-3, 0.5, 0.9]), 0.05, alpha_max=0.5)


# --------------------------------------------------------------------------------------------------
# metrics


def test_metrics_are_best_for_identical_signals_and_degrade_with_noise():
    x = speechlike(2.0)
    assert pesq_wb(x, x, SR) == pytest.approx(PESQ_MAX, abs=0.01)
    assert stoi_score(x, x, SR) == pytest.approx(1.0, abs=1e-6)
    assert log_mel_distance(x, x) == 0 and mr_stft_distance(x, x) == 0
    g = torch.Generator().manual_seed(0)
    rows = []
    for snr_db in (30, 10, 0):
        noise = torch.randn(x.shape, generator=g)
        noise *= x.pow(2).mean().sqrt() / noise.pow(2).mean().sqrt() * 10 ** (-snr_db / 20)
        y = x + noise
        rows.append((pesq_wb(x, y, SR), stoi_score(x, y, SR), log_mel_distance(x, y), mr_stft_distance(x, y)))
    for better, worse in zip(rows, rows[1:]):
        assert better[0] > worse[0] and better[1] > worse[1]  # PESQ, STOI fall
        assert better[2] < worse[2] and better[3] < worse[3]  # distances grow
    assert rows[0][0] < PESQ_MAX - 0.5
    # different lengths are cut to the shorter; silence has no PESQ
    assert log_mel_distance(x, torch.cat([x, x])) == 0
    assert math.isnan(pesq_wb(torch.zeros(SR), torch.zeros(SR), SR))


# --------------------------------------------------------------------------------------------------
# data


def test_audio_segments_pad_and_crop():
    from audiodiff.vocoder import AudioSegments

    clips = [{"audio": torch.arange(1000.0)}, {"audio": torch.ones(300)}]
    seg = AudioSegments(clips, 512, random=True, repeat=3)
    assert len(seg) == 6
    for _ in range(20):
        a = seg[0]["audio"]
        assert a.shape == (512,) and torch.equal(a, torch.arange(a[0], a[0] + 512))  # a contiguous window
    short = seg[1]["audio"]
    assert torch.equal(short[:300], torch.ones(300)) and torch.equal(short[300:], torch.zeros(212))
    assert torch.equal(AudioSegments(clips, 512, random=False)[0]["audio"], torch.arange(512.0))


def test_module_refuses_data_at_another_rate_or_segment():
    from types import SimpleNamespace

    from audiodiff.vocoder import VocoderModule

    module = VocoderModule(WaveGradNet.from_size("tiny"), ema_decay=None)
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(sample_rate=16000, segment_length=7680))
    with pytest.raises(ValueError, match="sample_rate 16000 differs from the model's mel sample_rate 22050"):
        module.setup("fit")
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(sample_rate=22050, segment_length=7000))
    with pytest.raises(ValueError, match="segment_length 7000 is not a multiple of the hop length 256"):
        module.setup("fit")
    with pytest.raises(ValueError, match="does not fit the network"):
        VocoderModule(WaveGradNet.from_size("tiny"), mel=MelConfig(n_mels=64))
