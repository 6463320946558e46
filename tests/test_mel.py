"""The mel front end: config round trip and mismatch errors, band placement, librosa cross-check, Griffin-Lim."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audiodiff import testing
from audiodiff.mel import (
    MelConfig,
    MelConfigMismatchError,
    MelSpectrogram,
    griffin_lim,
    mel_filterbank,
    mel_image,
    write_png,
)

SR = 22050


def speechlike(seconds: float = 1.0, f0: float = 120.0, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(testing.speechlike(seconds, f0, seed))


def test_config_round_trip_and_mismatch_names_the_numbers():
    cfg = MelConfig()
    assert MelConfig.from_dict(cfg.to_dict()) == cfg
    cfg.check_compatible(MelConfig.from_dict(cfg.to_dict()))  # equal: no error
    other = MelConfig(sample_rate=16000, hop_length=160, n_mels=64)
    with pytest.raises(MelConfigMismatchError) as e:
        cfg.check_compatible(other, "the data set")
    msg = str(e.value)
    assert "the data set" in msg
    for part in ("sample_rate 22050 vs 16000", "hop_length 256 vs 160", "n_mels 80 vs 64"):
        assert part in msg
    assert "n_fft" not in msg and "f_max" not in msg  # only the differing fields are named
    assert set(e.value.differences) == {"sample_rate", "hop_length", "n_mels"}
    with pytest.raises(MelConfigMismatchError, match="f_max 8000.0 vs 11025.0"):
        cfg.check_compatible({**cfg.to_dict(), "f_max": 11025.0}, "the upstream model")
    with pytest.raises(ValueError, match="unknown mel config fields"):
        MelConfig.from_dict({**cfg.to_dict(), "fmax": 8000})
    with pytest.raises(ValueError, match="f_max"):
        MelConfig(f_max=12000.0)


def test_defaults_are_the_hifigan_convention():
    c = MelConfig()
    assert (c.sample_rate, c.n_fft, c.hop_length, c.win_length, c.n_mels, c.f_min, c.f_max) == \
        (22050, 1024, 256, 1024, 80, 0.0, 8000.0)
    assert c.compression == "ln" and c.power == 1.0 and c.clamp_min == 1e-5
    assert c.silence() == pytest.approx(math.log(1e-5))


@pytest.mark.parametrize("freq", [220.0, 1000.0, 3000.0, 6500.0])
def test_pure_tone_peaks_in_its_band(freq):
    librosa = pytest.importorskip("librosa")
    cfg = MelConfig()
    t = torch.arange(SR // 2) / SR
    mel = MelSpectrogram(cfg)(0.5 * torch.sin(2 * math.pi * freq * t))  # (80, F)
    band = int(mel.mean(1).argmax())
    # centre frequencies of the Slaney-scale triangles, from an independent implementation
    centres = librosa.mel_frequencies(cfg.n_mels + 2, fmin=cfg.f_min, fmax=cfg.f_max)[1:-1]
    assert band == int(np.abs(centres - freq).argmin())
    lo, hi = centres[max(band - 1, 0)], centres[min(band + 1, cfg.n_mels - 1)]
    assert lo <= freq <= hi


@pytest.mark.parametrize("scale", ["slaney", "htk"])
@pytest.mark.parametrize("norm", ["slaney", None])
@pytest.mark.parametrize("rate,n_fft,n_mels,f_min,f_max",
                         [(22050, 1024, 80, 0.0, 8000.0), (16000, 512, 64, 50.0, 7600.0)])
def test_filterbank_matches_librosa(scale, norm, rate, n_fft, n_mels, f_min, f_max):
    librosa = pytest.importorskip("librosa")
    c = MelConfig(sample_rate=rate, n_fft=n_fft, hop_length=n_fft // 4, win_length=n_fft, n_mels=n_mels,
                  f_min=f_min, f_max=f_max, mel_scale=scale, filter_norm=norm)
    ref = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max, htk=scale == "htk",
                              norm=norm)
    ours = mel_filterbank(c).numpy()
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-6 * ref.max()


def test_matches_librosa_hifigan_style_mel():
    librosa = pytest.importorskip("librosa")
    x = speechlike(0.7)
    c = MelConfig()
    pad = (c.n_fft - c.hop_length) // 2
    xp = np.pad(x.numpy(), (pad, pad), mode="reflect")
    spec = np.abs(librosa.stft(xp, n_fft=c.n_fft, hop_length=c.hop_length, win_length=c.win_length,
                               window="hann", center=False))
    fb = librosa.filters.mel(sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.f_min, fmax=c.f_max)
    ref = np.log(np.maximum(fb @ spec, c.clamp_min))
    ours = MelSpectrogram(c)(x).numpy()
    assert ours.shape == ref.shape
    loud = ref > -7  # away from the floor, where float32 rounding of tiny energies dominates
    assert np.abs(ours - ref)[loud].max() < 1e-3


@pytest.mark.parametrize("n", [256, 1000, 5 * 256, 22050])
def test_frame_count_and_batching(n):
    c = MelConfig()
    mel = MelSpectrogram(c)
    x = torch.randn(3, n) * 0.1
    out = mel(x)
    assert out.shape == (3, c.n_mels, n // c.hop_length) and c.num_frames(n) == n // c.hop_length
    torch.testing.assert_close(out[1], mel(x[1]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf = mel(x)
    assert bf.dtype == torch.float32
    torch.testing.assert_close(bf, out)


def test_log10_and_normalisation_are_an_affine_change():
    x = speechlike(0.5)
    base = MelSpectrogram(MelConfig())(x)
    other = MelSpectrogram(MelConfig(compression="log10", norm_mean=-2.0, norm_std=3.0))(x)
    torch.testing.assert_close(other, (base / math.log(10) + 2.0) / 3.0, atol=1e-5, rtol=1e-5)
    m = MelSpectrogram(MelConfig(compression="log10", norm_mean=-2.0, norm_std=3.0))
    torch.testing.assert_close(m.compress(m.decompress(other)), other, atol=1e-5, rtol=1e-5)


def test_griffin_lim_round_trip_has_bounded_log_mel_distance():
    c = MelConfig()
    x = speechlike(1.0)
    mel_fn = MelSpectrogram(c)
    mel = mel_fn(x)
    g = torch.Generator().manual_seed(0)
    y = griffin_lim(mel, c, n_iter=32, generator=g)
    assert y.shape == (mel.shape[-1] * c.hop_length,)
    d = float((mel_fn(y) - mel).abs().mean())
    d0 = float((mel_fn(griffin_lim(mel, c, n_iter=0, generator=torch.Generator().manual_seed(0))) - mel).abs().mean())
    assert d < 0.35, d  # natural-log units: about 30% in magnitude on average
    assert d < 0.7 * d0  # the iterations do the work, not the magnitude estimate alone
    # batched, and a one-frame mel
    yb = griffin_lim(torch.stack([mel, mel]), c, n_iter=2)
    assert yb.shape == (2, mel.shape[-1] * c.hop_length)
    assert griffin_lim(mel[:, :1], c, n_iter=2).shape == (c.hop_length,)


def test_mel_image_png(tmp_path):
    mel = MelSpectrogram()(speechlike(0.3))
    img = mel_image(mel)
    assert img.dtype == torch.uint8 and img.shape == (3, 80, mel.shape[-1])
    path = tmp_path / "mel.png"
    write_png(path, img)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pil = pytest.importorskip("PIL.Image")
    with pil.open(path) as im:
        assert im.size == (mel.shape[-1], 80)
        assert np.array_equal(np.asarray(im.convert("RGB")), img.permute(1, 2, 0).numpy())
