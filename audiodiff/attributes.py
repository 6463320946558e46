"""Measure caption attributes back from a waveform: count, durations, pitch, timbre, envelope, loudness.

Used two ways: to prove that the procedural and MIDI generators (``audiodiff.data``) produce audio that
matches their labels, and later to score generated audio against its caption. So everything here works on
imperfect audio and never raises on silence, NaNs or a clip too short to analyse; it returns ``None`` for
what cannot be measured.

Pipeline: ``segment_events`` finds events by frame energy with hysteresis; ``measure`` analyses them
(numbers, plus timbre and envelope classes); ``classify_events`` / ``classify_notes`` turn the numbers into
the categorical vocabulary of ``EventSpec`` / ``NoteSpec``, with thresholds placed midway between the
generators' category ranges; ``score`` compares two label dicts attribute by attribute.
"""

from __future__ import annotations

import math

import numpy as np

from audiodiff.data import midi, procedural

ANALYSIS_FRAME_S = 0.093  # spectral frames (2048 samples at 22.05 kHz): ~11 Hz bins, 2-bin main lobe 21.5 Hz
EDGE_GUARD_S = 0.015  # skipped at both ends of an event when fitting its envelope: fades, segmentation slack
MIN_F0_HZ, MAX_F0_HZ = 40.0, 4200.0
SHS_DECAY = 0.84  # weight of harmonic k is SHS_DECAY**(k-1) (subharmonic summation, Hermes 1988)
NOISE_MAX_TONALITY = 0.88  # a line holds >97% of the power around it, a noise band ~30% (0.75 at worst)
TONALITY_SPAN = 1.8  # "around it": within a factor 1.8 of the line's frequency (its octave is outside)
SINE_MAX_OVERTONE_RATIO = 0.01  # overtones below -20 dB re the fundamental: a sine (a square's 3rd is -9.5 dB)
SAW_MIN_EVEN_SHARE = 0.3  # share of overtone power on even harmonics: square ~0, sawtooth ~0.64


def _as_mono(wave: np.ndarray) -> np.ndarray:
    """float64 1-D copy; channels (the shorter axis of a 2-D array) are averaged; NaN/inf become 0."""
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim == 2:
        x = x.mean(axis=int(np.argmin(x.shape)))
    return np.nan_to_num(x.reshape(-1), nan=0.0, posinf=0.0, neginf=0.0)


def _frame_power(x: np.ndarray, frame: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean-square power of rectangular frames (via a cumulative sum) and each frame's first sample."""
    if len(x) < frame:
        return np.zeros(0), np.zeros(0, dtype=int)
    csum = np.concatenate([[0.0], np.cumsum(x * x)])
    starts = np.arange(0, len(x) - frame + 1, hop)
    return (csum[starts + frame] - csum[starts]) / frame, starts


def segment_events(wave: np.ndarray, sr: int, *, on_db: float = -20.0, off_db: float = -35.0,
                   floor_db: float = -80.0, frame_s: float = 0.012, hop_s: float = 0.003,
                   min_gap_s: float = 0.05, min_event_s: float = 0.03) -> list[tuple[float, float]]:
    """Find events as (onset, offset) times in seconds.

    An event is a run of frames above ``off_db`` (dB re the loudest frame; or 6 dB above the clip's noise
    floor, if that is higher) that reaches ``on_db`` somewhere (hysteresis: a decaying tail stays in its
    event, a faint bump never starts one). Frames below ``floor_db`` dBFS never count, so silence and dither
    give no events. Events separated by less than ``min_gap_s`` are merged (a dip inside one sound is not
    two sounds); events shorter than ``min_event_s`` are dropped (clicks). Times are frame centres, so
    boundaries are accurate to about ``frame_s / 2``.
    """
    x = _as_mono(wave)
    frame, hop = max(1, round(frame_s * sr)), max(1, round(hop_s * sr))
    power, starts = _frame_power(x, frame, hop)
    if len(power) == 0:
        return []
    db = 10.0 * np.log10(power + 1e-30)
    peak = float(db.max())
    if peak < floor_db:
        return []
    # Generated audio may sit on a noise floor (its quietest 5% of frames): the lower threshold stays 6 dB above
    # it, or a floor within off_db of the peak would join everything into one event. Never above on_db, so a
    # clip that sounds throughout is one event rather than none.
    noise_floor = float(np.percentile(db, 5))
    low = max(peak + off_db, min(noise_floor + 6.0, peak + on_db), floor_db)
    above_off = db > low
    above_on = db > max(peak + on_db, low)
    # Runs of consecutive frames above the lower threshold: rising / falling edges of a 0/1 sequence.
    edges = np.diff(np.concatenate([[0], above_off.astype(np.int8), [0]]))
    runs = [(a, b) for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1)
            if above_on[a:b + 1].any()]
    centre = (starts + frame / 2) / sr
    events: list[list[float]] = []
    for a, b in runs:
        if events and centre[a] - events[-1][1] < min_gap_s:
            events[-1][1] = float(centre[b])
        else:
            events.append([float(centre[a]), float(centre[b])])
    return [(on, off) for on, off in events if off - on >= min_event_s]


def _interior(on: float, off: float, sr: int) -> tuple[int, int]:
    """Sample range of an event without its edges (or the whole event if it is too short for that)."""
    a, b = round((on + EDGE_GUARD_S) * sr), round((off - EDGE_GUARD_S) * sr)
    return (a, b) if b - a >= round(0.03 * sr) else (round(on * sr), round(off * sr))


def _tukey(n: int, alpha: float = 0.5) -> np.ndarray:
    """Tukey window: flat, with raised-cosine tapers over ``alpha / 2`` of the length at each end."""
    window = np.ones(n)
    m = max(1, int(alpha * n / 2))
    taper = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
    window[:m], window[n - m:] = taper, taper[::-1]
    return window


def _mean_spectrum(x: np.ndarray, sr: int,
                   events: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Power spectrum averaged over frames inside the events (Welch), on one zero-padded grid, and the length
    of the shortest frame used (it sets the widest main lobe).

    Frames are at most ANALYSIS_FRAME_S long and Tukey-windowed: a short event is one frame that keeps most of
    its samples (a Hann window would halve the data a short noise burst has to show that it is not a line).
    """
    frame = round(ANALYSIS_FRAME_S * sr)
    n_fft = 1 << int(math.ceil(math.log2(4 * frame)))  # zero-padding: finer grid for peak positions
    total, frames, shortest = np.zeros(n_fft // 2 + 1), 0, frame
    for on, off in events:
        seg = x[round(on * sr):round(off * sr)]
        if len(seg) < 16:
            continue
        length = len(seg) if len(seg) < 2 * frame else frame
        shortest = min(shortest, length)
        window = _tukey(length)
        for s in range(0, len(seg) - length + 1, max(1, length // 2)):
            total += np.abs(np.fft.rfft(seg[s:s + length] * window, n_fft)) ** 2 / np.sum(window**2)
            frames += 1
    return np.fft.rfftfreq(n_fft, 1.0 / sr), total / max(frames, 1), shortest


def _peak_near(freqs: np.ndarray, power: np.ndarray, target: float, tol: float) -> tuple[float, float]:
    """(frequency, power) of the largest bin within a relative tolerance ``tol`` of ``target``."""
    lo, hi = np.searchsorted(freqs, [target * (1 - tol), target * (1 + tol)])
    if hi <= lo:
        return target, 0.0
    i = lo + int(np.argmax(power[lo:hi]))
    return float(freqs[i]), float(power[i])


def _estimate_f0(freqs: np.ndarray, power: np.ndarray, top: float) -> float | None:
    """Fundamental frequency by subharmonic summation over candidate peaks.

    Candidates are the strong spectral peaks and their integer fractions (1/2, 1/3, 1/4), which catches
    tones whose fundamental is weaker than an overtone (low piano notes). A candidate's score sums the
    compressed amplitude found near each harmonic, harmonic k weighted SHS_DECAY**(k-1): the true f0
    collects every harmonic, an octave above it misses the odd ones, an octave below adds only empty slots.
    """
    band = (freqs >= MIN_F0_HZ) & (freqs <= top)
    if not band.any() or power[band].max() <= 0:
        return None
    p_max = float(power[band].max())
    local_max = (power[1:-1] >= power[:-2]) & (power[1:-1] > power[2:]) & band[1:-1]
    peaks = np.flatnonzero(local_max) + 1
    peaks = peaks[np.argsort(power[peaks])[::-1][:8]]
    candidates = {freqs[p] / d for p in peaks for d in (1, 2, 3, 4) if freqs[p] / d >= MIN_F0_HZ}
    best, best_score = None, -1.0
    for f0 in sorted(c for c in candidates if c <= MAX_F0_HZ):
        n_harm = int(min(12, top // f0))
        # Fourth root of power = square root of amplitude: compressed, so one strong partial cannot dominate.
        score = sum(SHS_DECAY ** (k - 1) * (_peak_near(freqs, power, k * f0, 0.03)[1] / p_max) ** 0.25
                    for k in range(1, n_harm + 1))
        if score > best_score + 1e-9:
            best, best_score = f0, score
    if best is None:
        return None
    return _peak_near(freqs, power, best, 0.03)[0]


def _harmonics(freqs: np.ndarray, power: np.ndarray, f0: float, top: float, half_width: float) -> np.ndarray:
    """Power within +-half_width Hz of each harmonic k * f0 (k = 1.. below ``top``), centred on its peak."""
    out = []
    for k in range(1, int(top // f0) + 1):
        centre = _peak_near(freqs, power, k * f0, 0.03)[0]
        out.append(float(power[np.abs(freqs - centre) <= half_width].sum()))
    return np.array(out)


def _tonality(freqs: np.ndarray, power: np.ndarray, top: float, half_width: float) -> float:
    """Share of the power near the strongest spectral peak that lies inside that peak's main lobe.

    "Near" is within +-TONALITY_SPAN of the peak frequency. A tone's strongest partial is a line of one
    main-lobe width with no other partial that close (its neighbours are >= 1/3 of its frequency away), so
    the share is ~1. A band of noise spreads over the whole span: at a low pitch, where the one-octave band is
    narrowest in Hz compared with the main lobe (~43 Hz), the share averages ~0.3 and stays below ~0.75.
    """
    band = (freqs >= MIN_F0_HZ) & (freqs <= top)
    if not band.any() or power[band].max() <= 0:
        return 0.0
    peak = float(freqs[band][np.argmax(power[band])])
    line = power[np.abs(freqs - peak) <= half_width].sum()
    near = (freqs >= peak / TONALITY_SPAN) & (freqs <= peak * TONALITY_SPAN)
    return float(line / power[near].sum())


def _envelope_trend(x: np.ndarray, sr: int, events: list[tuple[float, float]]) -> float | None:
    """Level change (dB) from start to end of an event: a least-squares line through 20 ms frame levels.

    The slope is pooled over all events (each with its own intercept, time scaled to 0..1 per event), which
    averages out what one event's level fluctuation would leave.
    """
    frame, hop = round(0.02 * sr), round(0.005 * sr)
    us, dbs = [], []
    for on, off in events:
        a, b = _interior(on, off, sr)
        power, starts = _frame_power(x[a:b], frame, hop)
        if len(power) < 3:
            continue
        u = (a + starts + frame / 2) / sr
        u = (u - on) / (off - on)
        db = 10.0 * np.log10(power + 1e-30)
        us.append(u - u.mean())
        dbs.append(db - db.mean())
    if not us:
        return None
    u, db = np.concatenate(us), np.concatenate(dbs)
    return float(np.sum(u * db) / np.sum(u * u))


def measure(wave: np.ndarray, sr: int, **segment_kwargs: float) -> dict[str, object]:
    """Measure a clip. Returns plain JSON values (``None`` where nothing can be measured):

    ``count``, ``onsets`` and ``durations`` (s) of the events; ``loudness_db`` (RMS in dBFS over the events);
    ``f0_hz`` (fundamental), ``midi_note`` (f0 as a fractional MIDI number), ``pitch_hz`` (f0 for tones, the
    log-frequency power centroid for noise); ``tonality`` (share of the power near the strongest peak inside
    its main lobe: ~1 for tones, ~0.3 for noise bands), ``overtone_ratio`` (overtone power re the
    fundamental), ``even_share`` (share of that on even harmonics), ``timbre`` (sine / square / sawtooth /
    noise); ``envelope_db`` (level change across an event, pooled) and ``envelope`` (steady / fading /
    rising). ``segment_kwargs`` go to ``segment_events``.
    """
    x = _as_mono(wave)
    events = segment_events(x, sr, **segment_kwargs)
    out: dict[str, object] = {
        "count": len(events), "onsets": [round(a, 4) for a, _ in events],
        "durations": [round(b - a, 4) for a, b in events], "loudness_db": None, "f0_hz": None, "midi_note": None,
        "pitch_hz": None, "tonality": None, "overtone_ratio": None, "even_share": None, "timbre": None,
        "envelope_db": None, "envelope": None,
    }
    if not events:
        return out
    active = np.concatenate([x[round(a * sr):round(b * sr) + 1] for a, b in events])
    out["loudness_db"] = round(10.0 * math.log10(float(np.mean(active**2)) + 1e-30), 2)

    top = 0.45 * sr  # the generators keep partials below this, and so does any sane band limit
    freqs, power, shortest = _mean_spectrum(x, sr, events)
    f0 = _estimate_f0(freqs, power, top)
    if f0 is not None:
        # Where a spectral line's power lies: 2 bins of the shortest frame either side (Hann's main lobe; the
        # Tukey window's is narrower). 21.5 Hz for full 2048-sample frames at 22.05 kHz.
        lobe = 2.0 * sr / shortest
        tonality = _tonality(freqs, power, top, lobe)
        harm = _harmonics(freqs, power, f0, top, half_width=min(lobe, f0 / 4))
        overtones = harm[1:] / harm[0] if harm[0] > 0 else np.zeros(0)
        ratio, even = float(overtones.sum()), float(overtones[0::2].sum())  # overtones[0] is harmonic 2
        if tonality < NOISE_MAX_TONALITY:
            timbre = "noise"
            # Pitch of a noise band: its power centroid in log-frequency (a geometric mean frequency).
            sel = (freqs >= MIN_F0_HZ) & (freqs <= top)
            pitch = float(2.0 ** (np.sum(power[sel] * np.log2(freqs[sel])) / np.sum(power[sel])))
        else:
            pitch = f0
            if ratio < SINE_MAX_OVERTONE_RATIO:
                timbre = "sine"
            else:
                timbre = "sawtooth" if even / ratio > SAW_MIN_EVEN_SHARE else "square"
        out.update(f0_hz=round(f0, 2), midi_note=round(69.0 + 12.0 * math.log2(f0 / 440.0), 2),
                   pitch_hz=round(pitch, 2), tonality=round(tonality, 4), overtone_ratio=round(ratio, 5),
                   even_share=round(even / ratio, 4) if ratio > 0 else 0.0, timbre=timbre)

    trend = _envelope_trend(x, sr, events)
    if trend is not None:
        half = procedural.ENVELOPE_SWING_DB / 2  # midway between steady (0 dB) and fading / rising (-+15 dB)
        out["envelope_db"] = round(trend, 2)
        out["envelope"] = "fading" if trend < -half else "rising" if trend > half else "steady"
    return out


def _nearest_band(value: float, ranges: dict[str, tuple[float, float]], log: bool = False) -> str:
    """The category whose [lo, hi] range is nearest to ``value`` (in log scale if ``log``)."""
    f = math.log if log else float

    def distance(r: tuple[float, float]) -> float:
        return max(f(r[0]) - f(value), f(value) - f(r[1]), 0.0)

    return min(ranges, key=lambda name: distance(ranges[name]))


def classify_events(measured: dict[str, object]) -> dict[str, object]:
    """Categorical labels in ``EventSpec``'s vocabulary from ``measure``'s output.

    Pitch, duration and loudness go to the nearest category range of ``audiodiff.data.procedural`` (so the
    boundaries sit midway between ranges: 396 Hz, 1245 Hz (geometric), 0.325 s, -30 dBFS); duration uses
    the median event. Attributes that could not be measured are ``None``; silence gives count 0.
    """
    durations = measured.get("durations") or []
    pitch, level = measured.get("pitch_hz"), measured.get("loudness_db")
    return {
        "count": int(measured.get("count") or 0),
        "duration": _nearest_band(float(np.median(durations)), procedural.DURATION_RANGES_S) if durations else None,
        "pitch": _nearest_band(float(pitch), procedural.PITCH_RANGES_HZ, log=True) if pitch else None,
        "timbre": measured.get("timbre"),
        "envelope": measured.get("envelope"),
        "loudness": _nearest_band(float(level), procedural.LEVEL_RANGES_DB) if level is not None else None,
    }


def classify_notes(measured: dict[str, object], instrument: str) -> dict[str, object]:
    """Categorical labels in ``NoteSpec``'s vocabulary (count, register, duration, loudness).

    The register needs the instrument, because registers are ranges of that instrument's compass
    (``midi.INSTRUMENTS``): the measured f0 goes to the nearest of its three note ranges. ``measured``
    should come from ``measure(wave, sr, **midi.SEGMENT_KWARGS)``; durations are compared with
    ``midi.DURATION_THRESHOLD_S``, which allows for the release tails instruments add after note-off.
    """
    durations = measured.get("durations") or []
    note, level = measured.get("midi_note"), measured.get("loudness_db")
    registers = {name: (float(lo), float(hi)) for name, (lo, hi) in midi.INSTRUMENTS[instrument].registers.items()}
    return {
        "count": int(measured.get("count") or 0),
        "register": _nearest_band(float(note), registers) if note is not None else None,
        "duration": (("long" if float(np.median(durations)) > midi.DURATION_THRESHOLD_S else "short")
                     if durations else None),
        "loudness": _nearest_band(float(level), midi.LEVEL_RANGES_DB) if level is not None else None,
    }


def score(labels_true: dict[str, object], labels_measured: dict[str, object]) -> dict[str, bool]:
    """Per attribute of ``labels_measured``: does it equal the true label? (``None`` never does.)"""
    return {k: v is not None and labels_true.get(k) == v for k, v in labels_measured.items()}
