"""Procedural sound events whose every caption attribute is known exactly and can be measured back.

A clip is ``count`` identical events (beeps or noise bursts) at regular spacing. Six categorical attributes
describe it: ``count`` (1..4), ``duration`` (short / long), ``pitch`` (low / medium / high), ``timbre``
(sine / square / sawtooth / noise), ``envelope`` (steady / fading / rising) and ``loudness`` (quiet / loud).
Every category is a numeric range, and the ranges are separated by wide gaps (pitch bands an octave apart,
durations 0.25 s apart, levels 12 dB apart), so that ``audiodiff.attributes`` can recover each label from
the waveform with a wide margin. The exact numbers drawn inside each category are part of the spec too.

Synthesis choices, each made so the audio cannot contradict its label:

* square and sawtooth are additive sums of their Fourier series, stopping below ``HARMONIC_LIMIT * sr``:
  no aliasing, so the harmonic pattern (odd only / all) that names the timbre is exactly what is heard;
* ``noise`` is random noise band-limited to one octave (at least 250 Hz) centred (geometrically) on
  ``frequency_hz``, so it has a pitch in the same bands as the tones; its envelope is flattened
  (``_band_noise``) so that its level follows the envelope label rather than chance;
* envelopes are linear in dB: fading drops ``ENVELOPE_SWING_DB`` over the event, rising climbs as much;
* every event starts and ends with a ``FADE_S`` raised-cosine ramp, so there are no clicks;
* ``level_db`` is the exact RMS (dBFS) of each event, and the level ranges leave headroom for the worst crest
  factor (noise x envelope), so nothing ever clips; ``render_events`` raises rather than clip.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

COUNTS = (1, 2, 3, 4)
CATEGORIES: dict[str, tuple[object, ...]] = {
    "count": COUNTS,
    "duration": ("short", "long"),
    "pitch": ("low", "medium", "high"),
    "timbre": ("sine", "square", "sawtooth", "noise"),
    "envelope": ("steady", "fading", "rising"),
    "loudness": ("quiet", "loud"),
}
# Numeric range (inclusive) behind each category. The bands are far apart on purpose: neighbouring pitch
# bands differ by a factor 2 (an octave), event lengths by >= 0.25 s, levels by >= 12 dB.
PITCH_RANGES_HZ = {"low": (180.0, 280.0), "medium": (560.0, 880.0), "high": (1760.0, 2800.0)}
DURATION_RANGES_S = {"short": (0.12, 0.20), "long": (0.45, 0.60)}
LEVEL_RANGES_DB = {"quiet": (-42.0, -36.0), "loud": (-24.0, -18.0)}
GAP_RANGE_S = (0.12, 0.35)  # silence between events: long enough to hear (and segment) them apart
MARGIN_S = 0.05  # silence kept at both ends of the clip
FADE_S = 0.008  # raised-cosine fade at each event edge (no clicks)
ENVELOPE_SWING_DB = 15.0  # level change across a fading / rising event
HARMONIC_LIMIT = 0.45  # partials stop below this fraction of the sample rate (0.5 would be Nyquist)
NOISE_BAND_OCTAVES = 1.0  # width of the noise band, centred in log-frequency on frequency_hz ...
NOISE_MIN_BANDWIDTH_HZ = 250.0  # ... but at least this wide, so a short low burst is audibly (and measurably) noise

# Attribute combinations never produced for training; held-out specs test compositional generalisation.
HELD_OUT: tuple[dict[str, object], ...] = (
    {"timbre": "square", "pitch": "high"},
    {"timbre": "sawtooth", "envelope": "rising"},
    {"count": 3, "duration": "long"},
)


def check_spec(spec: object, categories: dict[str, tuple[object, ...]],
               ranges: Callable[[], dict[str, tuple[float, float]]], min_gap: float) -> None:
    """``ValueError`` unless every categorical field of ``spec`` is in its vocabulary, then every exact field
    lies in the range of its category (``ranges()``, called once the categories are known to be valid), and
    several events are at least ``min_gap`` seconds apart."""
    for name, values in categories.items():
        if getattr(spec, name) not in values:
            raise ValueError(f"{name}={getattr(spec, name)!r} is not one of {values}")
    for what, (lo, hi) in ranges().items():
        value = getattr(spec, what)
        if not lo <= value <= hi:
            raise ValueError(f"{what}={value} is outside [{lo}, {hi}], the range of its category")
    gap = spec.gap_seconds
    if spec.count > 1 and gap < min_gap:
        raise ValueError(f"gap_seconds={gap} is shorter than {min_gap} s")


@dataclass(frozen=True)
class EventSpec:
    """Everything needed to render one clip, and its exact labels.

    Categorical labels: ``count``, ``duration``, ``pitch``, ``timbre``, ``envelope``, ``loudness``
    (vocabulary in ``CATEGORIES``). Exact values: ``frequency_hz`` (fundamental, or noise band centre),
    ``event_seconds`` (length of each event), ``gap_seconds`` (silence between events), ``start_seconds``
    (onset of the first event), ``level_db`` (RMS of each event in dBFS) and ``seed`` (the noise
    realisation; unused by the tonal timbres). Construction checks that each value lies in its category.
    """

    count: int
    duration: str
    pitch: str
    timbre: str
    envelope: str
    loudness: str
    frequency_hz: float
    event_seconds: float
    gap_seconds: float
    start_seconds: float
    level_db: float
    seed: int = 0

    def __post_init__(self) -> None:
        check_spec(self, CATEGORIES, lambda: {"frequency_hz": PITCH_RANGES_HZ[self.pitch],
                                              "event_seconds": DURATION_RANGES_S[self.duration],
                                              "level_db": LEVEL_RANGES_DB[self.loudness]}, GAP_RANGE_S[0])
        if self.start_seconds < 0:
            raise ValueError("start_seconds must be >= 0")
        if self.start_seconds < 0:
            raise ValueError("start_seconds must be >= 0")

    @property
    def onsets(self) -> tuple[float, ...]:
        """Onset time (s) of each event."""
        return tuple(self.start_seconds + i * (self.event_seconds + self.gap_seconds) for i in range(self.count))

    @property
    def end_seconds(self) -> float:
        """End time (s) of the last event."""
        return self.onsets[-1] + self.event_seconds

    def to_labels(self) -> dict[str, object]:
        """All attributes and exact values as plain JSON types (str, int, float, list)."""
        labels: dict[str, object] = asdict(self)
        labels["onsets"] = [round(t, 6) for t in self.onsets]
        return labels


def held_out(spec: EventSpec | dict[str, object]) -> bool:
    """Whether a spec (or a labels dict) matches any combination in ``HELD_OUT``."""
    labels = spec.to_labels() if isinstance(spec, EventSpec) else spec
    return any(all(labels.get(k) == v for k, v in combo.items()) for combo in HELD_OUT)


def iter_categories(held_out_only: bool | None = None) -> list[dict[str, object]]:
    """Every combination of categorical labels (576 in all), optionally only held-out (True) or only
    training (False) ones. Pair with ``make_event_spec`` to render a whole grid, e.g. for evaluation."""
    names = list(CATEGORIES)
    combos = [dict(zip(names, values)) for values in itertools.product(*CATEGORIES.values())]
    if held_out_only is None:
        return combos
    return [c for c in combos if held_out(c) == held_out_only]


def make_event_spec(rng: np.random.Generator, *, count: int, duration: str, pitch: str, timbre: str,
                    envelope: str, loudness: str, seconds: float = 3.0) -> EventSpec:
    """Draw the exact values (uniformly inside each category's range) for given categorical labels.

    ``seconds`` is the clip length the spec must fit in, with ``MARGIN_S`` of silence at both ends.
    """
    lo, hi = PITCH_RANGES_HZ[pitch]
    # Log-uniform: equal musical intervals are equally likely.
    frequency = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    event = float(rng.uniform(*DURATION_RANGES_S[duration]))
    level = float(rng.uniform(*LEVEL_RANGES_DB[loudness]))
    room = seconds - 2 * MARGIN_S - count * event
    if count > 1:
        # Cap the gap so that all events fit; the tightest case (4 x 0.6 s) still leaves >= 0.12 s gaps at 3 s.
        max_gap = min(GAP_RANGE_S[1], room / (count - 1))
        if max_gap < GAP_RANGE_S[0]:
            raise ValueError(f"{count} {duration} events do not fit in {seconds} s")
        gap = float(rng.uniform(GAP_RANGE_S[0], max_gap))
    else:
        gap = 0.0
    slack = room - (count - 1) * gap
    start = MARGIN_S + float(rng.uniform(0.0, max(slack, 0.0)))
    seed = int(rng.integers(2**31))
    return EventSpec(count, duration, pitch, timbre, envelope, loudness, round(frequency, 3), round(event, 4),
                     round(gap, 4), round(start, 4), round(level, 2), seed)


_held_out = held_out  # sample_event_spec's argument shadows the function's name


def sample_spec(rng: np.random.Generator, categories: dict[str, tuple[object, ...]],
                held_out_combos: Sequence[dict[str, object]], make: Callable[..., Any],
                is_held_out: Callable[[Any], bool], which: bool | None, seconds: float) -> Any:
    """Rejection sampler shared by the procedural and MIDI generators: draw labels uniformly from
    ``categories`` (with ``which=True``, one of ``held_out_combos`` on top), build ``make(rng, seconds=...,
    **labels)``, and keep it if ``is_held_out(spec) == which`` (``which=None``: keep anything). Rejection
    (about a quarter of the draws for training) keeps the distribution uniform over what is left."""
    while True:
        labels = {name: values[rng.integers(len(values))] for name, values in categories.items()}
        if which:
            labels.update(held_out_combos[rng.integers(len(held_out_combos))])
        spec = make(rng, seconds=seconds, **labels)
        if which is None or is_held_out(spec) == which:
            return spec


def sample_event_spec(rng: np.random.Generator, held_out: bool | None = False, seconds: float = 3.0) -> EventSpec:
    """Draw a random spec.

    ``held_out=False`` (the default, for training data) never returns a held-out combination; ``True``
    always does (one of ``HELD_OUT`` chosen uniformly, the other attributes free); ``None`` draws from the
    full product of categories.
    """
    return sample_spec(rng, CATEGORIES, HELD_OUT, make_event_spec, _held_out, held_out, seconds)


def _partials(timbre: str, frequency: float, sample_rate: float) -> list[tuple[int, float]]:
    """(harmonic number, amplitude) of the Fourier series, truncated below HARMONIC_LIMIT * sample_rate."""
    top = int(HARMONIC_LIMIT * sample_rate // frequency)
    if timbre == "sine":
        return [(1, 1.0)]
    if timbre == "square":  # odd harmonics, amplitude 1/k
        return [(k, 1.0 / k) for k in range(1, top + 1, 2)]
    if timbre == "sawtooth":  # all harmonics, amplitude 1/k, alternating sign
        return [(k, (-1.0) ** (k + 1) / k) for k in range(1, top + 1)]
    raise ValueError(timbre)


def _band_limit(x: np.ndarray, low: float, high: float, sample_rate: float) -> np.ndarray:
    """Zero every FFT bin of ``x`` outside [low, high] Hz."""
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1.0 / sample_rate)
    spectrum[(freqs < low) | (freqs > high)] = 0.0
    return np.fft.irfft(spectrum, len(x))


def _hilbert_envelope(x: np.ndarray) -> np.ndarray:
    """|analytic signal| of ``x``: the FFT with negative frequencies removed and positive ones doubled."""
    n = len(x)
    weights = np.zeros(n)
    weights[0] = 1.0
    weights[1:(n + 1) // 2] = 2.0
    if n % 2 == 0:
        weights[n // 2] = 1.0
    return np.abs(np.fft.ifft(np.fft.fft(x) * weights))


def _band_noise(rng: np.random.Generator, n: int, frequency: float, sample_rate: float) -> np.ndarray:
    """Noise band-limited to NOISE_BAND_OCTAVES (or NOISE_MIN_BANDWIDTH_HZ) around ``frequency``, with a
    flattened envelope.

    Plain band-limited Gaussian noise of a 0.12 s burst swings by several dB from one 20 ms frame to the next
    (few degrees of freedom), which blurs its own "steady / fading / rising" label, and has a 4-5 sigma crest
    factor. One round of the "low-noise noise" recipe (Pumplin 1985; Kohlrausch et al. 1997): divide by the
    Hilbert envelope, band-limit again, cuts the worst level error of a short steady burst from ~15 dB to
    ~2.5 dB and the crest factor to ~8 dB. More rounds flatten it further but drift towards a single
    sinusoid: a short low burst would then be heard (and measured) as a tone.
    """
    # Edges f / r and f * r: r = 2 ** (octaves / 2), or larger where that band is under the minimum width,
    # from f * (r - 1 / r) = width.
    ratio = NOISE_MIN_BANDWIDTH_HZ / frequency
    half = max(2.0 ** (NOISE_BAND_OCTAVES / 2), (ratio + np.sqrt(ratio**2 + 4.0)) / 2.0)
    low, high = frequency / half, min(frequency * half, HARMONIC_LIMIT * sample_rate)
    x = _band_limit(rng.standard_normal(n), low, high, sample_rate)
    return _band_limit(x / np.maximum(_hilbert_envelope(x), 1e-12), low, high, sample_rate)


def _event(spec: EventSpec, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """One event of ``spec``, float64, with envelope and fades, scaled to RMS = level_db."""
    n = int(round(spec.event_seconds * sample_rate))
    t = np.arange(n) / sample_rate
    if spec.timbre == "noise":
        x = _band_noise(rng, n, spec.frequency_hz, sample_rate)
    else:
        x = np.zeros(n)
        for k, a in _partials(spec.timbre, spec.frequency_hz, sample_rate):
            x += a * np.sin(2 * np.pi * k * spec.frequency_hz * t)
    ramp = t / spec.event_seconds  # 0 -> 1 across the event
    gain_db = {"steady": 0.0 * ramp, "fading": -ENVELOPE_SWING_DB * ramp,
               "rising": -ENVELOPE_SWING_DB * (1.0 - ramp)}[spec.envelope]
    x = x * 10.0 ** (gain_db / 20.0)
    m = min(int(round(FADE_S * sample_rate)), n // 2)
    fade = 0.5 - 0.5 * np.cos(np.pi * np.arange(m) / m)
    x[:m] *= fade
    x[n - m:] *= fade[::-1]
    return x * (10.0 ** (spec.level_db / 20.0) / np.sqrt(np.mean(x**2)))


def render_events(spec: EventSpec, sample_rate: int = 22050, seconds: float = 3.0) -> np.ndarray:
    """Render ``spec`` to a mono float32 waveform of ``round(seconds * sample_rate)`` samples in [-1, 1].

    Deterministic: the same spec, rate and length give byte-identical audio. Raises ``ValueError`` if the
    events do not fit in ``seconds`` or (never for specs inside the category ranges) if the peak would clip.
    """
    if spec.end_seconds > seconds + 1e-9:
        raise ValueError(f"events end at {spec.end_seconds:.3f} s, after the clip's {seconds} s")
    first_overtone = {"square": 3, "sawtooth": 2}.get(spec.timbre)
    if first_overtone and spec.frequency_hz * first_overtone > HARMONIC_LIMIT * sample_rate:
        # Without its first overtone a square or sawtooth would sound (and measure) as a sine.
        raise ValueError(f"sample_rate={sample_rate} is too low to carry the overtones of a {spec.timbre}")
    wave = np.zeros(int(round(seconds * sample_rate)))
    rng = np.random.default_rng(spec.seed)
    for onset in spec.onsets:
        x = _event(spec, sample_rate, rng)
        i = int(round(onset * sample_rate))
        x = x[: len(wave) - i]
        wave[i:i + len(x)] += x
    peak = float(np.max(np.abs(wave)))
    if peak >= 1.0:
        raise ValueError(f"spec would clip (peak {peak:.3f}); refusing to rescale and change its level")
    return wave.astype(np.float32)


# Caption vocabulary. Each phrase names exactly one value of one attribute, and no phrase of one value
# contains a phrase of another value of the same attribute as a whole word, so a caption can be parsed back
# (tests/test_procedural.py does). "fading in" is deliberately not used for "rising": it contains "fading".
COUNT_WORDS = {1: ("one", "a single"), 2: ("two", "a pair of"), 3: ("three",), 4: ("four",)}
COUNT_ADVERBS = {1: ("once", "a single time"), 2: ("twice", "two times"), 3: ("three times", "thrice"),
                 4: ("four times",)}
DURATION_WORDS = {"short": ("short", "brief", "quick"), "long": ("long", "sustained", "drawn-out")}
PITCH_WORDS = {"low": ("low", "low-pitched", "deep"), "medium": ("medium-pitched", "mid-pitched", "mid-range"),
               "high": ("high", "high-pitched", "shrill")}
PITCH_NOUNS = {"low": "a low pitch", "medium": "a medium pitch", "high": "a high pitch"}
TIMBRE_WORDS = {"sine": ("sine", "pure sine-wave", "pure"), "square": ("square-wave", "square", "hollow square-wave"),
                "sawtooth": ("sawtooth", "buzzy sawtooth", "saw-wave")}  # noise is named by its noun instead
LOUDNESS_WORDS = {"quiet": ("quiet", "soft", "faint"), "loud": ("loud", "strong", "powerful")}
ENVELOPE_ADJECTIVES = {"steady": ("steady", "constant in volume"), "fading": ("fading", "decaying"),
                       "rising": ("swelling", "rising in volume")}
ENVELOPE_PHRASES = {"steady": ("at a steady volume", "with constant volume", "holding a steady level"),
                    "fading": ("fading out", "dying away", "tapering off"),
                    "rising": ("swelling up", "growing in volume", "building in volume")}
TONE_NOUNS = (("tone", "tones"), ("beep", "beeps"), ("note", "notes"))
NOISE_NOUNS = (("burst of noise", "bursts of noise"), ("noise burst", "noise bursts"), ("hiss", "hisses"))
VERBS = ("sounds", "plays", "is heard")


def caption_events(spec: EventSpec, rng: np.random.Generator) -> str:
    """A caption naming all six attributes of ``spec``, in one of several phrasings chosen by ``rng``.

    e.g. "three short high square-wave beeps, fading out", "a quiet deep sawtooth tone, brief and steady,
    sounds twice", "four times, a loud long burst of noise at a low pitch, swelling up".
    """
    def pick(options: tuple[str, ...]) -> str:
        return options[rng.integers(len(options))]

    n = spec.count
    singular, plural = pick(NOISE_NOUNS if spec.timbre == "noise" else TONE_NOUNS)
    noun = singular if n == 1 else plural
    # Noise nouns already say "noise"; tones need a timbre word in front of the noun.
    timbre = "" if spec.timbre == "noise" else pick(TIMBRE_WORDS[spec.timbre]) + " "
    loud, dur, pitch = pick(LOUDNESS_WORDS[spec.loudness]), pick(DURATION_WORDS[spec.duration]), pick(
        PITCH_WORDS[spec.pitch])
    form = rng.integers(3)
    if form == 0:  # "three short high square-wave beeps, fading out"
        adjectives = [loud, dur, pitch]
        rng.shuffle(adjectives)
        return f"{pick(COUNT_WORDS[n])} {' '.join(adjectives)} {timbre}{noun}, {pick(ENVELOPE_PHRASES[spec.envelope])}"
    article = "an" if loud[0] in "aeiou" else "a"
    if form == 1:  # "a quiet low square tone, short and steady, sounds twice"
        envelope = pick(ENVELOPE_ADJECTIVES[spec.envelope])
        pair = f"{dur} and {envelope}" if rng.integers(2) else f"{envelope} and {dur}"
        return f"{article} {loud} {pitch} {timbre}{singular}, {pair}, {pick(VERBS)} {pick(COUNT_ADVERBS[n])}"
    # "twice, a loud brief sawtooth beep at a high pitch, dying away"
    article = "an" if dur[0] in "aeiou" else "a"
    return (f"{pick(COUNT_ADVERBS[n])}, {article} {dur} {timbre}{singular} at {PITCH_NOUNS[spec.pitch]}, "
            f"{loud} and {pick(ENVELOPE_PHRASES[spec.envelope])}")
