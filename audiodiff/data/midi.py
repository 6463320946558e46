"""General MIDI notes rendered offline with FluidSynth: real instrument sounds with exactly known labels.

A clip is one instrument playing the same note ``count`` times at regular spacing. Categorical attributes:
``instrument`` (one of ``INSTRUMENTS``), ``register`` (low / medium / high: three note ranges inside that
instrument's compass, 5+ semitones apart), ``count`` (1..4), ``duration`` (short / long hold) and
``loudness`` (quiet / loud). The exact MIDI note, hold, gap, onsets, velocity and level are in the spec.

Rendering: a fresh ``fluidsynth.Synth`` per clip (reverb and chorus off, one thread), notes switched on and
off between ``get_samples`` calls at the spec's sample positions (FluidSynth applies an event at its next
64-sample block, so up to 2.9 ms late at 22.05 kHz), stereo int16 averaged to mono. Loudness is set
two ways at once: the velocity (soft or hard playing, which changes the timbre) and a final gain that makes
the RMS over the held notes exactly ``level_db`` dBFS, so "quiet" and "loud" are 12+ dB apart whatever the
instrument. Output is byte-identical run to run (checked in tests/test_midi.py).

Instruments were chosen for a controllable note length and an unambiguous pitch in FluidR3_GM: marimba,
xylophone, harp, celesta and steel guitar ring for the same time whether held 0.15 s or 0.5 s, and the nylon
guitar rings on for ~1 s after a loud note's note-off, so "short" / "long" (and the count) would be a lie;
the drawbar and rock organs sound a sub-octave, which puts their f0 one or two octaves below the note.

Needs the ``fluidsynth`` module (``pip install pyfluidsynth``), the FluidSynth library and a GM SoundFont
(``apt-get install fluidsynth fluid-soundfont-gm``); imported lazily, so the rest works without them.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import itertools
import math
import os
from dataclasses import asdict, dataclass, field
from types import ModuleType

import numpy as np

from diffcore.data import MissingDependencyError

from .procedural import check_spec, sample_spec

DEFAULT_SOUNDFONT = os.environ.get("AUDIODIFF_SOUNDFONT", "/usr/share/sounds/sf2/FluidR3_GM.sf2")
SYSTEM_FIX = "apt-get install fluidsynth fluid-soundfont-gm"
PYTHON_FIX = "pip install pyfluidsynth"


@dataclass(frozen=True)
class Instrument:
    """A melodic GM instrument: ``program`` (0-based GM program number, as fluidsynth takes it) and its three
    registers as inclusive MIDI note ranges inside the instrument's playable compass."""

    name: str
    program: int
    registers: dict[str, tuple[int, int]] = field(hash=False)


def _instrument(name: str, program: int, low: tuple[int, int], medium: tuple[int, int],
                high: tuple[int, int]) -> Instrument:
    return Instrument(name, program, {"low": low, "medium": medium, "high": high})


# Twelve clearly distinct timbres: struck, plucked and mallet keys, reed organ, bowed strings, brass, reeds,
# flute. MIDI 60 = middle C (261.6 Hz). Registers keep 5+ semitones between ranges, so an f0 error of a
# couple of semitones never changes the register. Piano's high range stops at D5: from G5 up, notes fade
# by 20 dB within ~0.3 s, so a "long" hold would not sound long.
INSTRUMENTS: dict[str, Instrument] = {i.name: i for i in (
    _instrument("piano", 0, (36, 43), (55, 62), (67, 74)),
    _instrument("harpsichord", 6, (41, 47), (55, 62), (72, 79)),
    _instrument("vibraphone", 11, (53, 58), (65, 71), (79, 84)),
    _instrument("organ", 20, (36, 43), (57, 64), (76, 83)),
    _instrument("violin", 40, (55, 61), (67, 74), (83, 89)),
    _instrument("cello", 42, (36, 42), (50, 56), (64, 70)),
    _instrument("trumpet", 56, (54, 59), (65, 70), (76, 81)),
    _instrument("trombone", 57, (40, 46), (52, 58), (64, 70)),
    _instrument("alto saxophone", 65, (49, 54), (60, 66), (72, 78)),
    _instrument("oboe", 68, (58, 63), (68, 74), (80, 86)),
    _instrument("clarinet", 71, (50, 56), (62, 68), (76, 82)),
    _instrument("flute", 73, (60, 65), (70, 76), (84, 90)),
)}
CATEGORIES: dict[str, tuple[object, ...]] = {
    "instrument": tuple(INSTRUMENTS),
    "register": ("low", "medium", "high"),
    "count": (1, 2, 3, 4),
    "duration": ("short", "long"),
    "loudness": ("quiet", "loud"),
}
HOLD_RANGES_S = {"short": (0.08, 0.14), "long": (0.42, 0.50)}  # time between note-on and note-off
VELOCITY_RANGES = {"quiet": (40, 55), "loud": (100, 120)}
# RMS over the held notes, dBFS. Loud stops at -20: attacks peak up to 18 dB above the RMS (vibraphone).
LEVEL_RANGES_DB = {"quiet": (-44.0, -38.0), "loud": (-26.0, -20.0)}
GAP_RANGE_S = (0.28, 0.40)  # note-off to next note-on: longer than release tails fall 15 dB, so notes stay apart
MARGIN_S = 0.05  # silence before the first note
TAIL_S = 0.10  # room left after the last note-off (its release may run on into the clip's end fade)
# FluidSynth's master gain before its int16 output (with +-1 LSB dither). Soft velocities come out up to 27 dB
# quieter than loud ones, so they get 12 dB more gain: every note peaks between about -36 and -7 dBFS, inside int16
# and far above the dither. The final gain to level_db makes the two paths equivalent apart from that noise.
SYNTH_GAIN = {"quiet": 4.0, "loud": 1.0}
END_FADE_S = 0.01  # fade at the clip's end, in case a release tail is cut there
# Measuring notes back (audiodiff.attributes): a note is where the level is within 15 dB of the loudest frame.
# Release tails still add up to ~0.2 s to a short hold (vibraphone, cello) and slow attacks take ~0.04 s off
# a long one (clarinet): measured shorts end below ~0.31 s, longs above ~0.38 s, hence the threshold.
SEGMENT_KWARGS: dict[str, float] = {"on_db": -10.0, "off_db": -15.0}
DURATION_THRESHOLD_S = 0.345

HELD_OUT: tuple[dict[str, object], ...] = (
    {"instrument": "violin", "register": "high"},
    {"instrument": "trumpet", "register": "low"},
    {"instrument": "piano", "count": 4},
)


@dataclass(frozen=True)
class NoteSpec:
    """One clip: ``count`` repeats of MIDI ``note`` on ``instrument``, and its exact labels.

    Categorical: ``instrument``, ``register``, ``count``, ``duration``, ``loudness`` (vocabulary in
    ``CATEGORIES``). Exact: ``note`` (MIDI number), ``hold_seconds`` (note-on to note-off), ``gap_seconds``
    (note-off to next note-on), ``start_seconds`` (first note-on), ``velocity`` (1..127) and ``level_db``
    (RMS in dBFS over the held notes). Construction checks that each value lies in its category.
    """

    instrument: str
    register: str
    count: int
    duration: str
    loudness: str
    note: int
    hold_seconds: float
    gap_seconds: float
    start_seconds: float
    velocity: int
    level_db: float

    def __post_init__(self) -> None:
        check_spec(self, CATEGORIES, lambda: {"note": INSTRUMENTS[self.instrument].registers[self.register],
                                              "hold_seconds": HOLD_RANGES_S[self.duration],
                                              "velocity": VELOCITY_RANGES[self.loudness],
                                              "level_db": LEVEL_RANGES_DB[self.loudness]}, GAP_RANGE_S[0])

    @property
    def onsets(self) -> tuple[float, ...]:
        """Note-on time (s) of each note."""
        return tuple(self.start_seconds + i * (self.hold_seconds + self.gap_seconds) for i in range(self.count))

    @property
    def frequency_hz(self) -> float:
        """Fundamental of ``note`` in equal temperament, A4 (MIDI 69) = 440 Hz."""
        return 440.0 * 2.0 ** ((self.note - 69) / 12)

    def to_labels(self) -> dict[str, object]:
        """All attributes and exact values as plain JSON types."""
        labels: dict[str, object] = asdict(self)
        labels.update(program=INSTRUMENTS[self.instrument].program, frequency_hz=round(self.frequency_hz, 3),
                      onsets=[round(t, 6) for t in self.onsets])
        return labels


def held_out(spec: NoteSpec | dict[str, object]) -> bool:
    """Whether a spec (or a labels dict) matches any combination in ``HELD_OUT``."""
    labels = spec.to_labels() if isinstance(spec, NoteSpec) else spec
    return any(all(labels.get(k) == v for k, v in combo.items()) for combo in HELD_OUT)


def iter_categories(held_out_only: bool | None = None) -> list[dict[str, object]]:
    """Every combination of categorical labels (576), optionally only held-out (True) or training (False)."""
    combos = [dict(zip(CATEGORIES, values)) for values in itertools.product(*CATEGORIES.values())]
    return combos if held_out_only is None else [c for c in combos if held_out(c) == held_out_only]


def make_note_spec(rng: np.random.Generator, *, instrument: str, register: str, count: int, duration: str,
                   loudness: str, seconds: float = 3.0) -> NoteSpec:
    """Draw the exact values (uniformly inside each category's range) for given categorical labels."""
    lo, hi = INSTRUMENTS[instrument].registers[register]
    note = int(rng.integers(lo, hi + 1))
    hold = float(rng.uniform(*HOLD_RANGES_S[duration]))
    room = seconds - MARGIN_S - TAIL_S - count * hold
    gap = 0.0
    if count > 1:
        max_gap = min(GAP_RANGE_S[1], room / (count - 1))
        if max_gap < GAP_RANGE_S[0]:
            raise ValueError(f"{count} {duration} notes do not fit in {seconds} s")
        gap = float(rng.uniform(GAP_RANGE_S[0], max_gap))
    start = MARGIN_S + float(rng.uniform(0.0, max(room - (count - 1) * gap, 0.0)))
    velocity = int(rng.integers(VELOCITY_RANGES[loudness][0], VELOCITY_RANGES[loudness][1] + 1))
    level = float(rng.uniform(*LEVEL_RANGES_DB[loudness]))
    # Rounded down to 0.1 ms, so that rounding never pushes the last note past the room left for its tail.
    hold, gap, start = (math.floor(v * 1e4) / 1e4 for v in (hold, gap, start))
    return NoteSpec(instrument, register, count, duration, loudness, note, hold, gap, start, velocity,
                    round(level, 2))


_held_out = held_out  # sample_note_spec's argument shadows the function's name


def sample_note_spec(rng: np.random.Generator, held_out: bool | None = False, seconds: float = 3.0) -> NoteSpec:
    """Draw a random spec: ``held_out=False`` (default, for training) never returns a held-out combination,
    ``True`` always does (one of ``HELD_OUT``, other attributes free), ``None`` draws from everything."""
    return sample_spec(rng, CATEGORIES, HELD_OUT, make_note_spec, _held_out, held_out, seconds)


def load_fluidsynth(soundfont: str = DEFAULT_SOUNDFONT) -> ModuleType:
    """Import ``fluidsynth`` and check the SoundFont exists (else ``MissingDependencyError`` naming the fix)."""
    try:
        # pyfluidsynth prints where it found the library when $CI is set; keep that off our stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            import fluidsynth
    except ModuleNotFoundError as e:
        raise MissingDependencyError(f"the fluidsynth Python module is missing ({e}); fix: {PYTHON_FIX} "
                           f"(and {SYSTEM_FIX} for the library and the SoundFont)") from e
    except (ImportError, OSError) as e:  # pyfluidsynth is there but libfluidsynth is not
        raise MissingDependencyError(f"the FluidSynth library is missing ({e}); fix: {SYSTEM_FIX}") from e
    if not os.path.isfile(soundfont):
        raise MissingDependencyError(f"SoundFont {soundfont} not found; fix: {SYSTEM_FIX} "
                           "(or set AUDIODIFF_SOUNDFONT to a General MIDI .sf2)")
    return fluidsynth


def _write_float(fluidsynth: ModuleType, synth: object, frames: int) -> np.ndarray:
    """``frames`` stereo float32 frames, shape (frames, 2). Float output, unlike pyfluidsynth's int16
    ``get_samples``, has no dither: FluidSynth's dither noise comes from a process-wide table whose position
    depends on everything rendered before, which made clips differ between processes."""
    out = np.zeros((frames, 2), dtype=np.float32)
    ptr = out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    # fluid_synth_write_float(synth, len, lout, loff, lincr, rout, roff, rincr): interleave L and R into `out`
    fn = fluidsynth._fl.fluid_synth_write_float
    fp = ctypes.POINTER(ctypes.c_float)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, fp, ctypes.c_int, ctypes.c_int, fp, ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    err = fn(synth.synth, frames, ptr, 0, 2, ptr, 1, 2)
    if err != 0:
        raise RuntimeError("fluid_synth_write_float failed")
    return out


def render_notes(spec: NoteSpec, sample_rate: int = 22050, seconds: float = 3.0,
                 soundfont: str = DEFAULT_SOUNDFONT) -> np.ndarray:
    """Render ``spec`` with FluidSynth to mono float32 of ``round(seconds * sample_rate)`` samples.

    The RMS over the held notes is exactly ``spec.level_db``. Byte-identical for the same arguments.
    Raises ``MissingDependencyError`` (with the install command) if FluidSynth or the SoundFont is missing, and
    ``ValueError`` if the notes do not fit in ``seconds`` or the result would clip.
    """
    fluidsynth = load_fluidsynth(soundfont)
    n = int(round(seconds * sample_rate))
    # Integer sample positions of every note-on / note-off, in time order.
    events = []
    for onset in spec.onsets:
        on, off = round(onset * sample_rate), round((onset + spec.hold_seconds) * sample_rate)
        events += [(on, True), (off, False)]
    if events[-1][0] > n:
        raise ValueError(f"notes end after the clip's {seconds} s")
    # A fresh synth per clip: no voice, controller or dither state carries over, so output is reproducible.
    # Dynamic sample loading reads only this preset's samples (~20 ms instead of ~0.5 s for the whole .sf2).
    synth = fluidsynth.Synth(gain=SYNTH_GAIN[spec.loudness], samplerate=float(sample_rate), **{
        "synth.reverb.active": 0, "synth.chorus.active": 0, "synth.cpu-cores": 1,
        "synth.dynamic-sample-loading": 1})
    try:
        sfid = synth.sfload(soundfont)
        if sfid < 0:
            raise RuntimeError(f"fluidsynth could not load {soundfont}; fix: {SYSTEM_FIX}")
        synth.program_select(0, sfid, 0, INSTRUMENTS[spec.instrument].program)
        chunks, position = [], 0
        for at, is_on in events:
            if at > position:
                chunks.append(_write_float(fluidsynth, synth, at - position))
                position = at
            if is_on:
                synth.noteon(0, spec.note, spec.velocity)
            else:
                synth.noteoff(0, spec.note)
        if n > position:
            chunks.append(_write_float(fluidsynth, synth, n - position))
    finally:
        synth.delete()
    wave = np.concatenate(chunks).astype(np.float64).mean(axis=1)[:n]
    fade = round(END_FADE_S * sample_rate)
    wave[n - fade:] *= np.linspace(1.0, 0.0, fade)
    held = np.concatenate([wave[events[i][0]:events[i + 1][0]] for i in range(0, len(events), 2)])
    rms = float(np.sqrt(np.mean(held**2)))
    if rms == 0.0:
        raise RuntimeError(f"fluidsynth rendered silence for {spec}; is {soundfont} a General MIDI SoundFont?")
    wave *= 10.0 ** (spec.level_db / 20.0) / rms
    peak = float(np.max(np.abs(wave)))
    if peak >= 1.0:
        raise ValueError(f"spec would clip (peak {peak:.3f}); refusing to rescale and change its level")
    return wave.astype(np.float32)


# Caption vocabulary: each phrase names one value of one attribute (tests/test_midi.py parses captions back).
COUNT_WORDS = {1: ("one", "a single"), 2: ("two",), 3: ("three",), 4: ("four",)}
COUNT_ADVERBS = {1: ("once", "just once"), 2: ("twice", "two times"), 3: ("three times",), 4: ("four times",)}
REGISTER_WORDS = {"low": ("low", "deep"), "medium": ("mid-range", "middle-register"), "high": ("high", "upper")}
REGISTER_PHRASES = {"low": "in its low register", "medium": "in its middle register", "high": "in its high register"}
DURATION_WORDS = {"short": ("short", "brief", "staccato"), "long": ("long", "sustained", "held")}
LOUDNESS_WORDS = {"quiet": ("quiet", "soft", "gentle"), "loud": ("loud", "forceful", "strong")}


def caption_notes(spec: NoteSpec, rng: np.random.Generator) -> str:
    """A caption naming instrument, register, count, duration and loudness, phrased at random by ``rng``.

    e.g. "a violin playing two soft short high notes", "a loud cello plays a sustained deep note twice",
    "three brief quiet notes on a flute in its high register".
    """
    def pick(options: tuple[str, ...]) -> str:
        return options[rng.integers(len(options))]

    n, name = spec.count, spec.instrument
    a_name = ("an " if name[0] in "aeiou" else "a ") + name
    note = "note" if n == 1 else "notes"
    loud, dur = pick(LOUDNESS_WORDS[spec.loudness]), pick(DURATION_WORDS[spec.duration])
    form = rng.integers(3)
    if form == 0:  # "a violin playing two soft short high notes"
        adjectives = [loud, dur]
        rng.shuffle(adjectives)
        register = pick(REGISTER_WORDS[spec.register])
        return f"{a_name} playing {pick(COUNT_WORDS[n])} {' '.join(adjectives)} {register} {note}"
    if form == 1:  # "a loud cello plays a sustained deep note twice"
        article = "an" if dur[0] in "aeiou" else "a"
        return (f"a {loud} {name} plays {article} {dur} {pick(REGISTER_WORDS[spec.register])} note "
                f"{pick(COUNT_ADVERBS[n])}")
    # "three brief quiet notes on a flute in its high register"
    return f"{pick(COUNT_WORDS[n])} {dur} {loud} {note} on {a_name} {REGISTER_PHRASES[spec.register]}"
