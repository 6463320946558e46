"""Procedural sound events (audiodiff.data.procedural) and the attribute measurer (audiodiff.attributes).

The central property: every label a clip is captioned with can be measured back from its waveform.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from audiodiff import attributes
from audiodiff.data import procedural as P

SR = 22050


def _grid_specs(n: int, seed: int) -> list[P.EventSpec]:
    """n specs over a random sample of the 576 label combinations (held-out ones included)."""
    rng = np.random.default_rng(seed)
    combos = P.iter_categories()
    return [P.make_event_spec(rng, **combos[i]) for i in rng.permutation(len(combos))[:n]]


@pytest.fixture(scope="module")
def measured() -> list[tuple[P.EventSpec, np.ndarray, dict]]:
    """144 rendered clips with their measured labels."""
    out = []
    for spec in _grid_specs(144, seed=0):
        wave = P.render_events(spec)
        out.append((spec, wave, attributes.classify_events(attributes.measure(wave, SR))))
    return out


def test_labels_are_measured_back(measured):
    hits, total = Counter(), len(measured)
    misses = []
    for spec, _, labels in measured:
        for attr, ok in attributes.score(spec.to_labels(), labels).items():
            hits[attr] += ok
            if not ok:
                misses.append((attr, getattr(spec, attr), labels[attr], spec))
    accuracy = {attr: hits[attr] / total for attr in P.CATEGORIES}
    print(f"\nprocedural per-attribute accuracy over {total} clips: {accuracy}")
    for attr in ("count", "duration", "pitch", "loudness"):
        assert accuracy[attr] == 1.0, (accuracy, misses[:5])
    # Measured 100% on 1000+ clips; the worst margins are a short low noise burst's tonality (0.75 vs the
    # 0.88 boundary, tones >= 0.97) and a steady burst's level trend (|2.5| dB vs the 7.5 dB boundary).
    for attr in ("timbre", "envelope"):
        assert accuracy[attr] >= 0.98, (accuracy, misses[:5])


def test_audio_format_and_no_clipping(measured):
    for _, wave, _ in measured:
        assert wave.dtype == np.float32 and wave.shape == (3 * SR,)
        assert np.all(np.isfinite(wave)) and np.max(np.abs(wave)) < 1.0


@pytest.mark.parametrize("timbre", ["sine", "square", "sawtooth", "noise"])
@pytest.mark.parametrize("envelope", ["steady", "fading", "rising"])
def test_worst_case_headroom(timbre, envelope):
    """The loudest allowed level with the peakiest envelope stays clear of full scale (>= 3 dB headroom)."""
    rng = np.random.default_rng(1)
    for _ in range(3):
        spec = P.make_event_spec(rng, count=4, duration="long", pitch="low", timbre=timbre, envelope=envelope,
                                 loudness="loud")
        spec = dataclasses.replace(spec, level_db=P.LEVEL_RANGES_DB["loud"][1])
        assert np.max(np.abs(P.render_events(spec))) < 10 ** (-3 / 20)


def test_event_levels_and_onsets_are_exact():
    """Each event's RMS is level_db, and the audio is silent outside the events."""
    for spec in _grid_specs(24, seed=2):
        wave = P.render_events(spec).astype(np.float64)
        n = round(spec.event_seconds * SR)
        inside = np.zeros(len(wave), dtype=bool)
        for onset in spec.onsets:
            i = round(onset * SR)
            inside[i:i + n] = True
            rms_db = 10 * np.log10(np.mean(wave[i:i + n] ** 2))
            assert abs(rms_db - spec.level_db) < 0.01
            assert wave[i] == 0.0  # the raised-cosine fade-in starts from silence: no click
        assert np.all(wave[~inside] == 0.0)


def test_band_limited_no_aliasing():
    """All power sits on the partials (tones) or in the band (noise), all below HARMONIC_LIMIT * sr: an aliased
    partial would land between harmonics. 300 Hz of slack covers the spread from fades and envelopes."""
    rng = np.random.default_rng(3)
    for timbre in ("sine", "square", "sawtooth", "noise"):
        for pitch in ("low", "high"):
            spec = P.make_event_spec(rng, count=1, duration="long", pitch=pitch, timbre=timbre, envelope="fading",
                                     loudness="loud")
            wave = P.render_events(spec).astype(np.float64)
            power = np.abs(np.fft.rfft(wave)) ** 2
            freqs = np.fft.rfftfreq(len(wave), 1 / SR)
            f0 = spec.frequency_hz
            if timbre == "noise":
                stray = freqs > min(2 * f0 + P.NOISE_MIN_BANDWIDTH_HZ, P.HARMONIC_LIMIT * SR) + 300
            else:
                partials = f0 * np.arange(1, int(P.HARMONIC_LIMIT * SR // f0) + 1)
                stray = np.min(np.abs(freqs[:, None] - partials[None, :]), axis=1) > 300
            assert power[stray].sum() / power.sum() < 1e-6, (timbre, pitch)
            assert power[freqs > P.HARMONIC_LIMIT * SR + 300].sum() / power.sum() < 1e-6, (timbre, pitch)


def test_deterministic_and_byte_identical_across_processes():
    spec = P.make_event_spec(np.random.default_rng(4), count=3, duration="short", pitch="medium", timbre="noise",
                             envelope="fading", loudness="quiet")
    a, b = P.render_events(spec), P.render_events(spec)
    assert a.tobytes() == b.tobytes()
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    code = ("import hashlib; from audiodiff.data import procedural as P; "
            f"print(hashlib.sha256(P.render_events(P.EventSpec(**{fields!r})).tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == hashlib.sha256(a.tobytes()).hexdigest()
    other = dataclasses.replace(spec, seed=spec.seed + 1)
    assert P.render_events(other).tobytes() != a.tobytes()  # the seed is the noise realisation


def test_labels_are_json_and_rebuild_the_spec():
    spec = P.sample_event_spec(np.random.default_rng(5))
    labels = json.loads(json.dumps(spec.to_labels()))
    fields = {f.name for f in dataclasses.fields(P.EventSpec)}
    assert P.EventSpec(**{k: v for k, v in labels.items() if k in fields}) == spec
    assert labels["onsets"] == pytest.approx(list(spec.onsets))


def test_spec_validation():
    spec = P.sample_event_spec(np.random.default_rng(6))
    with pytest.raises(ValueError):
        dataclasses.replace(spec, timbre="triangle")
    with pytest.raises(ValueError):  # a "low" pitch must lie in the low band
        dataclasses.replace(spec, pitch="low", frequency_hz=1000.0)
    with pytest.raises(ValueError):
        P.render_events(spec, seconds=spec.end_seconds - 0.01)


def _vocabulary() -> dict[str, dict[object, tuple[str, ...]]]:
    """Every phrase the captioner may use for each value of each attribute."""
    timbre = {k: tuple(v) for k, v in P.TIMBRE_WORDS.items()}
    timbre["noise"] = ("noise", "hiss", "hisses")
    return {
        "count": {n: P.COUNT_WORDS[n] + P.COUNT_ADVERBS[n] for n in P.COUNTS},
        "duration": P.DURATION_WORDS,
        "pitch": {k: P.PITCH_WORDS[k] + (P.PITCH_NOUNS[k],) for k in P.PITCH_WORDS},
        "timbre": timbre,
        "envelope": {k: P.ENVELOPE_ADJECTIVES[k] + P.ENVELOPE_PHRASES[k] for k in P.ENVELOPE_PHRASES},
        "loudness": P.LOUDNESS_WORDS,
    }


def parse_caption(caption: str, vocabulary: dict[str, dict[object, tuple[str, ...]]]) -> dict[str, set]:
    """For each attribute, the set of values whose phrases occur in the caption as whole words."""
    found: dict[str, set] = {}
    for attr, values in vocabulary.items():
        found[attr] = {value for value, phrases in values.items()
                       if any(re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", caption) for p in phrases)}
    return found


def test_captions_name_every_attribute_unambiguously():
    rng = np.random.default_rng(7)
    vocabulary = _vocabulary()
    for _ in range(400):
        spec = P.sample_event_spec(rng, held_out=None)
        caption = P.caption_events(spec, rng)
        found = parse_caption(caption, vocabulary)
        for attr in P.CATEGORIES:
            assert found[attr] == {getattr(spec, attr)}, (attr, caption)


def test_captions_vary():
    spec = P.sample_event_spec(np.random.default_rng(8))
    rng = np.random.default_rng(9)
    captions = {P.caption_events(spec, rng) for _ in range(50)}
    assert len(captions) >= 10


def test_held_out_never_leaks():
    rng = np.random.default_rng(10)
    train = [P.sample_event_spec(rng) for _ in range(400)]
    assert not any(P.held_out(s) for s in train)
    test = [P.sample_event_spec(rng, held_out=True) for _ in range(150)]
    assert all(P.held_out(s) for s in test)
    for combo in P.HELD_OUT:  # every held-out combination is produced on request
        assert any(all(getattr(s, k) == v for k, v in combo.items()) for s in test)
    everything = P.iter_categories()
    assert len(everything) == 576
    assert len(P.iter_categories(True)) + len(P.iter_categories(False)) == 576
    assert not any(P.held_out(c) for c in P.iter_categories(False))


def test_silence_and_garbage_never_crash():
    for wave in (np.zeros(3 * SR), np.zeros(10), np.zeros(0), np.full(SR, np.nan),
                 1e-6 * np.random.default_rng(0).standard_normal(SR)):  # -120 dBFS: below the floor
        m = attributes.measure(wave, SR)
        assert m["count"] == 0 and m["loudness_db"] is None
        labels = attributes.classify_events(m)
        assert labels["count"] == 0 and all(v is None for k, v in labels.items() if k != "count")
        json.dumps(m)
    for wave in (np.random.default_rng(1).uniform(-1, 1, 3 * SR), np.ones(SR), np.zeros((2, SR)) + 0.1):
        labels = attributes.classify_events(attributes.measure(wave, SR))
        json.dumps(labels)
        assert labels["count"] >= 0


def test_measurement_tolerates_a_noise_floor_and_stereo():
    """Imperfect audio: white noise 30 dB below the events, and a stereo copy, still measure right."""
    rng = np.random.default_rng(11)
    for spec in _grid_specs(24, seed=12):
        wave = P.render_events(spec)
        floor = 10 ** ((spec.level_db - 30) / 20) * rng.standard_normal(len(wave))
        for noisy in (wave + floor, np.stack([wave, wave])):
            labels = attributes.classify_events(attributes.measure(noisy, SR))
            assert attributes.score(spec.to_labels(), labels) == dict.fromkeys(labels, True), (spec, labels)
