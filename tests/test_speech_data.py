"""The built-in speech set: real and synthetic speakers, speaker-disjoint splits, reproducible builds."""

from __future__ import annotations

import csv

import numpy as np
import soundfile as sf

from audiodiff.data import speech
from diffcore import data


def _rows(path, split):
    with open(path / split / "metadata.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_tiny_speech_set_contents(speech_tiny):
    m = data.load_manifest(speech_tiny)
    assert m["format"] == "audiofolder" and m["sample_rate"] == 22050
    assert set(m["splits"]) == {"train", "validation", "test"}
    sources = set()
    for split in ("train", "validation", "test"):
        rows = _rows(speech_tiny, split)
        assert len(rows) == m["splits"][split]["clips"] > 0
        for r in rows:
            info = sf.info(speech_tiny / split / r["file_name"])
            assert info.samplerate == 22050 and info.channels == 1 and info.subtype == "PCM_16"
            assert abs(info.frames / 22050 - float(r["seconds"])) < 1e-3 and 0.3 <= info.frames / 22050 <= 20
            wave, _ = sf.read(speech_tiny / split / r["file_name"])
            assert 0.85 < np.abs(wave).max() <= 0.91  # peak-normalised, never clipped
            assert r["speaker"] and r["source"] in {"tuxpaint", "espeak-ng", "flite", "festival", "piper"}
            if r["source"] != "tuxpaint":
                assert len(r["text"].split()) >= 5  # a WordNet example sentence
            sources.add(r["source"])
    assert sources == {"tuxpaint", "espeak-ng", "flite", "festival", "piper"}
    assert data.verify(speech_tiny) == []


def test_speakers_never_cross_from_test_to_training(speech_tiny):
    by_split = {s: {r["person"] for r in _rows(speech_tiny, s)} for s in ("train", "validation", "test")}
    assert by_split["test"] and by_split["train"]
    assert not by_split["test"] & (by_split["train"] | by_split["validation"])
    assert all(speech.is_test(p) for p in by_split["test"])
    # both real recorded and synthetic unseen speakers are in test
    assert any(p.startswith("tux-") for p in by_split["test"]) and any(not p.startswith("tux-")
                                                                       for p in by_split["test"])


def test_same_seed_gives_byte_identical_speech(tmp_path, speech_tiny, need_system):
    need_system(speech.check_requirements)
    again = data.build("speech", "tiny", root=tmp_path, progress=False)
    assert data.load_manifest(again)["files"] == data.load_manifest(speech_tiny)["files"]


def test_split_rule_keeps_one_validation_utterance():
    items = [(f"u{i}", "joe") for i in range(3)] + [("t0", "awb")]
    got = speech.assign_speech_splits(items, seed=0)
    assert got["t0"] == "test" and list(got.values()).count("validation") == 1


def test_voices_cover_accents_and_hold_out_speakers():
    voices = speech.synthetic_voices(seed=0)
    espeak = voices["espeak-ng"]
    assert len(espeak) == len(speech.ESPEAK_ACCENTS) * len(speech.ESPEAK_VARIANTS)
    assert len({(v.pitch, v.rate) for v in espeak}) > 40  # each speaker has its own prosody
    assert {v.person for v in espeak if speech.is_test(v.person)} == {"espeak-en-029", "espeak-f4", "espeak-m5"}
    order = speech._interleave_test(espeak, seed=0)
    assert sorted(v.speaker for v in order) == sorted(v.speaker for v in espeak)
    assert speech.is_test(order[1].person) and not speech.is_test(order[0].person)


def test_wordnet_sentences_are_clean(need_system):
    need_system(lambda: data.require_path(speech.WORDNET / "data.noun", "apt-get install wordnet-base"))
    sents = speech.wordnet_sentences()
    assert len(sents) > 10_000
    assert all(s[0].isupper() and s[-1] in ".?!" and '"' not in s and "|" not in s for s in sents[:2000])
