"""General MIDI notes rendered with FluidSynth (audiodiff.data.midi), measured back by audiodiff.attributes.

Rendering tests skip when FluidSynth or the SoundFont is missing, saying how to install them; with
DIFFCORE_REQUIRE_SYSTEM=1 (set in CI) that skip is a failure instead. Spec, caption and held-out tests need
neither.
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
from audiodiff.data import midi as M

SR = 22050


@pytest.fixture(scope="module")
def system(need_system) -> None:
    """FluidSynth and the GM SoundFont, or a skip (a failure under DIFFCORE_REQUIRE_SYSTEM=1) saying why."""
    need_system(M.load_fluidsynth)


@pytest.fixture(scope="module")
def measured(system) -> list[tuple[M.NoteSpec, np.ndarray, dict]]:
    """48 random clips (every instrument four times, held-out combinations included) and their labels."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(48):
        labels = {k: v[rng.integers(len(v))] for k, v in M.CATEGORIES.items()}
        labels["instrument"] = list(M.INSTRUMENTS)[i % len(M.INSTRUMENTS)]
        spec = M.make_note_spec(rng, **labels)
        wave = M.render_notes(spec)
        out.append((spec, wave, attributes.classify_notes(attributes.measure(wave, SR, **M.SEGMENT_KWARGS),
                                                          spec.instrument)))
    return out


def test_labels_are_measured_back(measured):
    hits, misses = Counter(), []
    for spec, _, labels in measured:
        for attr, ok in attributes.score(spec.to_labels(), labels).items():
            hits[attr] += ok
            if not ok:
                misses.append((attr, getattr(spec, attr), labels[attr], spec))
    accuracy = {attr: hits[attr] / len(measured) for attr in ("count", "register", "duration", "loudness")}
    print(f"\nMIDI per-attribute accuracy over {len(measured)} clips: {accuracy}")
    for attr in ("count", "register", "loudness"):
        assert accuracy[attr] == 1.0, (accuracy, misses[:5])
    # 100% on 400 random clips and on every instrument x register x extreme hold x extreme level; duration has
    # the narrowest margin (release tails: measured shorts <= 0.31 s, longs >= 0.38 s, boundary 0.345 s).
    assert accuracy["duration"] >= 0.97, (accuracy, misses[:5])


def test_audio_format_level_and_no_clipping(measured):
    for spec, wave, _ in measured:
        assert wave.dtype == np.float32 and wave.shape == (3 * SR,)
        assert np.all(np.isfinite(wave)) and np.max(np.abs(wave)) < 1.0
        held = np.concatenate([wave[round(t * SR):round((t + spec.hold_seconds) * SR)] for t in spec.onsets])
        assert 10 * np.log10(np.mean(held.astype(np.float64) ** 2)) == pytest.approx(spec.level_db, abs=0.01)
        # Silent before the first note-on, but for FluidSynth's int16 dither (+-1 LSB, -60 dB re the peak at most).
        assert np.max(np.abs(wave[:round(spec.onsets[0] * SR)])) < 1e-3 * np.max(np.abs(wave))


def test_byte_identical_run_to_run(system):
    spec = M.make_note_spec(np.random.default_rng(1), instrument="violin", register="medium", count=3,
                            duration="short", loudness="quiet")
    a = M.render_notes(spec)
    assert a.tobytes() == M.render_notes(spec).tobytes()
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    code = ("import hashlib; from audiodiff.data import midi as M; "
            f"print(hashlib.sha256(M.render_notes(M.NoteSpec(**{fields!r})).tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1]
    assert out == hashlib.sha256(a.tobytes()).hexdigest()
    other = dataclasses.replace(spec, note=spec.note + 1)
    assert M.render_notes(other).tobytes() != a.tobytes()


def test_other_sample_rate(system):
    spec = M.make_note_spec(np.random.default_rng(2), instrument="flute", register="low", count=2, duration="long",
                            loudness="loud", seconds=2.5)
    wave = M.render_notes(spec, sample_rate=16000, seconds=2.5)
    assert wave.shape == (40000,)
    labels = attributes.classify_notes(attributes.measure(wave, 16000, **M.SEGMENT_KWARGS), "flute")
    assert attributes.score(spec.to_labels(), labels) == dict.fromkeys(labels, True)


def test_missing_system_raises_with_the_fix(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match="apt-get install fluidsynth fluid-soundfont-gm"):
        M.render_notes(M.sample_note_spec(np.random.default_rng(3)), soundfont=str(tmp_path / "none.sf2"))
    monkeypatch.setitem(sys.modules, "fluidsynth", None)  # makes `import fluidsynth` fail
    with pytest.raises(RuntimeError, match="pip install pyfluidsynth"):
        M.load_fluidsynth()


def test_spec_validation_and_labels():
    spec = M.sample_note_spec(np.random.default_rng(4))
    labels = json.loads(json.dumps(spec.to_labels()))
    assert labels["program"] == M.INSTRUMENTS[spec.instrument].program
    assert labels["frequency_hz"] == pytest.approx(440 * 2 ** ((spec.note - 69) / 12), abs=1e-3)
    fields = {f.name for f in dataclasses.fields(M.NoteSpec)}
    assert M.NoteSpec(**{k: v for k, v in labels.items() if k in fields}) == spec
    lo, hi = M.INSTRUMENTS[spec.instrument].registers[spec.register]
    with pytest.raises(ValueError):
        dataclasses.replace(spec, note=hi + 1)
    with pytest.raises(ValueError):
        dataclasses.replace(spec, instrument="kazoo")
    for instrument in M.INSTRUMENTS.values():  # registers ascend with 5+ semitones between them
        low, medium, high = (instrument.registers[r] for r in ("low", "medium", "high"))
        assert medium[0] - low[1] >= 5 and high[0] - medium[1] >= 5


def test_every_category_combination_fits_the_clip():
    rng = np.random.default_rng(5)
    for combo in M.iter_categories():
        spec = M.make_note_spec(rng, **combo)
        assert spec.onsets[-1] + spec.hold_seconds + M.TAIL_S <= 3.0 + 1e-9


def test_captions_name_every_attribute_unambiguously():
    vocabulary = {
        "instrument": {name: (name,) for name in M.INSTRUMENTS},
        "register": {k: M.REGISTER_WORDS[k] + (M.REGISTER_PHRASES[k],) for k in M.REGISTER_WORDS},
        "count": {n: M.COUNT_WORDS[n] + M.COUNT_ADVERBS[n] for n in M.COUNT_WORDS},
        "duration": M.DURATION_WORDS,
        "loudness": M.LOUDNESS_WORDS,
    }
    rng = np.random.default_rng(6)
    for _ in range(400):
        spec = M.sample_note_spec(rng, held_out=None)
        caption = M.caption_notes(spec, rng)
        for attr, values in vocabulary.items():
            found = {v for v, phrases in values.items()
                     if any(re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", caption) for p in phrases)}
            assert found == {getattr(spec, attr)}, (attr, caption)
    spec = M.sample_note_spec(np.random.default_rng(7))
    assert len({M.caption_notes(spec, rng) for _ in range(50)}) >= 8


def test_held_out_never_leaks():
    rng = np.random.default_rng(8)
    assert not any(M.held_out(M.sample_note_spec(rng)) for _ in range(400))
    test = [M.sample_note_spec(rng, held_out=True) for _ in range(100)]
    assert all(M.held_out(s) for s in test)
    for combo in M.HELD_OUT:
        assert any(all(getattr(s, k) == v for k, v in combo.items()) for s in test)
    assert len(M.iter_categories(True)) + len(M.iter_categories(False)) == len(M.iter_categories())


def test_silence_gives_no_notes():
    m = attributes.measure(np.zeros(3 * SR, dtype=np.float32), SR, **M.SEGMENT_KWARGS)
    labels = attributes.classify_notes(m, "piano")
    assert labels == {"count": 0, "register": None, "duration": None, "loudness": None}
