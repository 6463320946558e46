"""The spectrally shaped prior (``SpectralPrior``, SpecGrad-like): its gains, filter, sampler and training loss."""

from __future__ import annotations

import json

import pytest
import torch

from audiodiff.mel import MelConfig, MelSpectrogram
from audiodiff.vocoder import Vocoder, VocoderModule, WaveGradNet, sample_noise_level
from audiodiff.vocoder.inference import SpectralPrior, make_prior


def _lowpassed(n: int, seed: int) -> torch.Tensor:
    """White noise with its upper half-band (above ~5.5 kHz) removed."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    spec = torch.fft.rfft(x)
    spec[spec.numel() // 2:] = 0
    return torch.fft.irfft(spec, n).float()


def test_gains_follow_the_level_and_the_spectral_envelope():
    config = MelConfig()
    prior = SpectralPrior(config, h_min=0.001, gain=2.0)
    mel_fn = MelSpectrogram(config)
    g = torch.Generator().manual_seed(0)
    quiet, mid, loud = (a * torch.randn(20 * 256, generator=g) for a in (1e-5, 0.05, 0.9))
    h = prior.gains(mel_fn(torch.cat([quiet, mid, loud])[None]))
    assert h.shape == (1, config.n_fft // 2 + 1, 61)
    assert h.min() >= 0.001 and h.max() <= 1.0
    assert torch.allclose(h[0, :, 3:17], torch.tensor(0.001))  # near-silence: the floor
    # white noise of std 0.05: a flat envelope at gain * 0.05 = 0.1 in every bin, above 8 kHz included
    torch.testing.assert_close(h[0, 20:500, 24:37].median(), torch.tensor(0.1), atol=0.02, rtol=0)
    # louder than 1 / gain: the standard prior (bar a few narrow low bands, whose one or two bins fluctuate)
    assert (h[0, :, 44:57] == 1.0).float().mean() > 0.95
    # a low-passed signal: high bins get far less noise than low ones
    hl = prior.gains(mel_fn(0.1 * _lowpassed(40 * 256, 1)[None]))[0, :, 5:35]
    assert hl[:150].median() > 0.1 and hl[400:].median() < 0.01


def test_filter_is_exact_for_unit_gains_and_nearly_inverts_for_constant_gains():
    prior = SpectralPrior(MelConfig())
    x = torch.randn(2, 32 * 256, generator=torch.Generator().manual_seed(0))
    ones = torch.ones(2, 513, 33)
    torch.testing.assert_close(prior.filter(x, ones), x, atol=1e-5, rtol=1e-5)
    h = torch.linspace(0.01, 1, 513)[None, :, None].expand(2, 513, 33)
    y = prior.filter(x, h)
    assert (y - x).abs().mean() > 0.1
    back = prior.filter(y, 1 / h)  # zero-phase gains per windowed frame: not exactly invertible, but close
    assert (back - x).abs().mean() < 0.01 * x.abs().mean()


def test_colored_noise_has_the_mel_of_its_signal():
    config = MelConfig()
    prior = SpectralPrior(config, h_min=1e-4, gain=1.0)
    mel_fn = MelSpectrogram(config)
    audio = 0.1 * _lowpassed(60 * 256, 2)[None]
    mel = mel_fn(audio)
    color, whiten, std = prior.operators(mel)
    assert std is None
    z = torch.randn(audio.shape, generator=torch.Generator().manual_seed(3))
    shaped, white = ((mel_fn(n) - mel).abs()[..., 4:-4].mean() for n in (color(z), z))
    assert shaped < 0.7 and 4 * shaped < white  # white noise misses the envelope (3.3 nats); shaped noise follows it
    torch.testing.assert_close(color(whiten(audio)), audio, atol=0.02, rtol=0)  # L L^-1 close to the identity


def test_make_prior_knows_the_spectral_prior():
    config = MelConfig()
    prior = make_prior("spectral", config)
    assert isinstance(prior, SpectralPrior) and prior.config() == {"kind": "spectral", "h_min": 0.001, "gain": 1.0,
                                                                   "y_clip": 20.0}
    assert make_prior({"kind": "spectral", "h_min": 0.01, "gain": 1.5}, config).config()["h_min"] == 0.01
    with pytest.raises(ValueError, match="h_min"):
        SpectralPrior(config, h_min=0.0)


class _Oracle(torch.nn.Module):
    """The exact white eps under a prior: the net sees x = L y_t, and eps = (L^-1 x - alpha L^-1 x0) / sigma."""

    def __init__(self, x0: torch.Tensor, prior: SpectralPrior | None):
        super().__init__()
        self.x0, self.prior, self.n_mels, self.hop_length = x0, prior, 80, 256
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x_t, alpha, mel):
        a = alpha.reshape(-1, 1).to(torch.float64)
        sigma = (1 - a**2).sqrt()
        if self.prior is None:
            return ((x_t - a * self.x0) / sigma).to(x_t.dtype)
        _, whiten, _ = self.prior.operators(mel)
        return ((whiten(x_t).double() - a * whiten(self.x0.float()).double()) / sigma).to(x_t.dtype)


def test_spectral_sampler_returns_the_signal_with_an_exact_network():
    # the oracle recovers y_t = L^-1 x_t only approximately, so a mild filter (gains 0.5..1) keeps it exact enough
    audio = 0.2 * _lowpassed(16 * 256, 4)[None]
    mel = MelSpectrogram(MelConfig())(audio)
    prior = SpectralPrior(MelConfig(), h_min=0.5)
    assert prior.gains(mel).min() == 0.5  # the filter does shape the noise
    vocoder = Vocoder(_Oracle(audio.double(), prior), prior=prior.config(), clip=None)
    out = vocoder(mel, 6, seed=0, chunk_frames=None)
    assert (out - audio).abs().mean() < 0.01 * audio.abs().mean()
    # an oracle that assumes the standard prior is wrong under spectral sampling
    wrong = Vocoder(_Oracle(audio.double(), None), prior=prior.config(), clip=None)(mel, 6, seed=0, chunk_frames=None)
    assert (wrong - audio).abs().mean() > audio.abs().mean()


def test_spectral_training_loss_is_the_whitened_noise_l1_and_is_saved(tmp_path):
    torch.manual_seed(0)
    net = WaveGradNet.from_size("tiny")
    module = VocoderModule(net, prior={"kind": "spectral", "h_min": 0.001, "gain": 2.0}, ema_decay=None).eval()
    audio = torch.cat([0.01 * _lowpassed(14 * 256, 5), 0.5 * _lowpassed(14 * 256, 6)])[None].repeat(2, 1)
    mel = module.mel_fn(audio)
    with torch.no_grad():
        loss = module.compute_loss({"audio": audio, "mel": mel})
        gen = torch.Generator().manual_seed(0)  # what compute_loss draws in eval mode
        t = sample_noise_level(module.schedule, 2, generator=gen)
        noise = torch.randn(audio.shape, generator=gen)
        alpha = module.schedule.alpha(t).float()[:, None]
        color, whiten, _ = module.prior.operators(mel)
        x_t = color(alpha * whiten(audio) + (1 - alpha**2).sqrt() * noise)
        expected = (net(x_t, alpha[:, 0], mel=mel) - noise).abs().mean()
        # the net's input is the data plus noise shaped like it: x_t ~ alpha x0 + sigma L eps
        # (up to L L^-1, which is off mostly at the abrupt 34 dB step between the halves)
        ideal = alpha * audio + (1 - alpha**2).sqrt() * color(noise)
        assert (x_t - ideal).abs().mean() < 0.05 * ideal.abs().mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-4)
    vocoder = module.vocoder()
    vocoder.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "vocoder.json").read_text())["prior"]
    assert saved == {"kind": "spectral", "h_min": 0.001, "gain": 2.0, "y_clip": 20.0}
    assert isinstance(Vocoder.from_pretrained(tmp_path / "m").prior, SpectralPrior)


def test_prior_noise_is_the_no_network_reference_of_a_shaped_prior():
    """``Vocoder.prior_noise`` colours white noise by the mel (no network); the evaluation reports it as
    its own row for shaped priors only."""
    from audiodiff.vocoder.evaluate import evaluate

    config = MelConfig()
    mel_fn = MelSpectrogram(config)
    audio = torch.cat([1e-4 * torch.randn(30 * 256), 0.1 * _lowpassed(30 * 256, 3)])
    mel = mel_fn(audio)
    net = WaveGradNet.from_size("tiny")
    shaped, standard = Vocoder(net, prior="spectral"), Vocoder(net)
    a, b = shaped.prior_noise(mel, seed=0), standard.prior_noise(mel, seed=0)
    assert a.shape == b.shape == (mel.shape[-1] * 256,)
    assert torch.equal(a, shaped.prior_noise(mel, seed=0))
    d_shaped, d_white = ((mel_fn(x) - mel).abs().mean() for x in (a, b))
    assert d_shaped < d_white / 3, (d_shaped, d_white)  # 1.5 vs 5.7 nats (h_min bounds the quiet half)
    clips = [{"audio": audio}]
    rows = {r["system"] for r in evaluate(shaped, clips, steps=(2,))["rows"]}
    assert rows == {"ground_truth", "griffin_lim", "prior_noise", "vocoder"}
    assert "prior_noise" not in {r["system"] for r in evaluate(standard, clips, steps=(2,))["rows"]}
