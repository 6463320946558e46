"""The built-in sounds set: captions, labels that match the audio, held-out combinations only in test."""

from __future__ import annotations

import csv
import json

import numpy as np
import soundfile as sf

from audiodiff import attributes
from audiodiff.data import midi, procedural, sounds
from diffcore import data

SPLITS = ("train", "validation", "test")


def _rows(path):
    out = []
    for split in SPLITS:
        with open(path / split / "metadata.csv", encoding="utf-8") as f:
            out += [{**r, "split": split} for r in csv.DictReader(f)]
    return out


def test_every_kind_is_present_with_captions(sounds_tiny):
    rows = _rows(sounds_tiny)
    m = data.load_manifest(sounds_tiny)
    assert {r["kind"] for r in rows} == {"procedural", "midi", "speech", "effect"}
    assert sum(m["kinds"].values()) == len(rows) and all(m["splits"][s]["clips"] > 0 for s in SPLITS)
    for r in rows:
        assert len(r["caption"].split()) >= 3
        info = sf.info(sounds_tiny / r["split"] / r["file_name"])
        assert info.samplerate == 22050 and info.channels == 1
        if r["kind"] in ("procedural", "midi"):
            assert info.frames == int(sounds.CLIP_SECONDS * 22050)
    speech_rows = [r for r in rows if r["kind"] == "speech"]
    assert all(("a man" in r["caption"] or "male" in r["caption"]) == (r["gender"] == "male") for r in speech_rows)


def test_held_out_combinations_never_leave_test(sounds_tiny):
    rows = _rows(sounds_tiny)
    for r in rows:
        labels = {k: (int(v) if k == "count" else v) for k, v in r.items() if v != ""}
        module = {"procedural": procedural, "midi": midi}.get(r["kind"])
        if module is None:
            assert r["held_out"] == "0"
            continue
        assert module.held_out(labels) == (r["held_out"] == "1")
        if module.held_out(labels):
            assert r["split"] == "test"
    assert any(r["held_out"] == "1" for r in rows)


def test_written_clips_measure_back_to_their_labels(sounds_tiny):
    """The labels are true of the 16-bit files on disk, not only of the float renderings."""
    rows = [r for r in _rows(sounds_tiny) if r["kind"] in ("procedural", "midi")]
    for r in rows:
        wave, sr = sf.read(sounds_tiny / r["split"] / r["file_name"], dtype="float32")
        if r["kind"] == "procedural":
            got = attributes.classify_events(attributes.measure(wave, sr))
            want = {k: (int(r[k]) if k == "count" else r[k]) for k in procedural.CATEGORIES}
        else:
            got = attributes.classify_notes(attributes.measure(wave, sr, **midi.SEGMENT_KWARGS), r["instrument"])
            want = {"count": int(r["count"]), "register": r["register"], "duration": r["duration"],
                    "loudness": r["loudness"]}
        assert attributes.score(want, got) == {k: True for k in want}, (r["file_name"], r["caption"], got)
        if r["kind"] == "procedural":
            assert np.allclose(json.loads(r["onsets"]), procedural.EventSpec(**{
                k: (int(r[k]) if k in ("count", "seed") else float(r[k]) if k not in procedural.CATEGORIES else r[k])
                for k in procedural.EventSpec.__dataclass_fields__}).onsets)


def test_same_seed_gives_byte_identical_sounds(tmp_path, sounds_tiny):
    again = data.build("sounds", "tiny", root=tmp_path, progress=False)
    assert data.load_manifest(again)["files"] == data.load_manifest(sounds_tiny)["files"]


def test_effect_captions():
    rng = np.random.default_rng(0)
    caps = {sounds.caption_effect("A frog.", rng) for _ in range(40)}
    assert all("a frog" in c for c in caps) and len(caps) > 2
    assert "an electric kettle" in sounds.caption_effect("An electric kettle.", rng)
