"""Evaluation of a text-to-sound pipeline on the built-in sounds set.

Caption adherence (``adherence_report``): for captions whose attribute combination never appeared in
training (test split, ``held_out`` = 1), generate a clip, measure its attributes back from the waveform
(``audiodiff.attributes``) and report per-attribute and all-correct accuracy, each with its 95% Wilson
interval, beside

* the ceiling: the real clips of those captions through the same path a generation takes, mel -> VAE
  encode/decode -> vocoder (or Griffin-Lim), scored the same way: no generator of this VAE can beat it
  (``ceiling_without_vae`` leaves the VAE out, for comparison);
* chance: the same generations scored against shuffled captions (a permutation within each kind), and the
  expected accuracy if labels were independent of captions (``chance_expected``: sum over classes of the
  target share times the measured share), the figure an interval is compared with.

``seen`` scores test captions of combinations seen in training the same way (other clips than the training
ones): a model that follows captions but does not compose them does well there and not on the held-out ones.

Paired one-word test (``paired_word_test``): caption pairs that differ only in the pitch word (low <-> high;
for MIDI the register word), generated with the same seed; the fraction of pairs whose measured pitch is
higher for the "high" caption, with its interval; and, a finer measure than that count, how far it moves:
the mean log2 ratio of the two measured pitches in octaves (``octaves``, with a bootstrap interval; the
procedural set's low and high bands are 3.3 octaves apart at their geometric centres, 224 vs 2,220 Hz).

Distribution distance (``frechet_distance``): the Frechet distance between Gaussian fits of features of an
in-domain audio classifier (``AudioClassifierNet``, trained here on the sounds set to predict the clip kind
and attribute labels; its pooled penultimate layer is the feature), with real-vs-real (two disjoint sets of
real clips of the same size) as the floor. With fewer clips than feature dimensions the estimate carries a
large small-sample bias: compare numbers at the same N only.

``sweep`` repeats both for guidance scales and step counts; ``run_evaluation`` does everything and writes
``eval.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffcore.pretrained import PretrainedMixin, capture_config

from ..attributes import classify_events, classify_notes, measure
from ..data import midi
from ..mel import MelConfig, MelSpectrogram

ATTRIBUTES = {"procedural": ("count", "duration", "pitch", "timbre", "envelope", "loudness"),
              "midi": ("count", "register", "duration", "loudness")}
# one-word swaps low -> high (whole words, longest first), per kind, with the attribute they set
PITCH_SWAPS = {"procedural": ("pitch", (("a low pitch", "a high pitch"), ("low-pitched", "high-pitched"),
                                        ("low", "high"), ("deep", "shrill"))),
               "midi": ("register", (("in its low register", "in its high register"), ("low", "high"),
                                     ("deep", "upper")))}
CLASSIFIER_HEADS = ("kind", "count", "duration", "loudness", "pitch", "timbre", "envelope", "instrument", "register")
CLIP_SECONDS = 3.0

# --------------------------------------------------------------------------------------------------
# caption adherence


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion k / n (95% for z = 1.96); (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def held_out_rows(clips: Any, kinds: Sequence[str] = ("procedural", "midi"), n: int | None = None, seed: int = 0,
                  held_out: bool = True, skip: int = 0) -> list[dict[str, Any]]:
    """Metadata rows (with ``index`` into ``clips``) of test clips of ``kinds``, held out (or not), in a
    seeded random order, ``n`` of them after skipping ``skip``."""
    rows = [{**it, "index": i} for i, it in enumerate(clips.items)
            if it.get("kind") in kinds and bool(it.get("held_out")) == held_out]
    order = np.random.default_rng(seed).permutation(len(rows))
    rows = [rows[i] for i in order][skip:]
    return rows[:n] if n else rows


def measure_labels(wave: np.ndarray, sample_rate: int, kind: str, instrument: str | None = None,
                   measured: dict | None = None) -> dict[str, Any]:
    """The categorical attributes of ``kind`` measured from a waveform (``None`` where not measurable).
    ``measured``: a cached ``attributes.measure`` result of the same wave."""
    if kind == "procedural":
        m = measured if measured is not None else measure(wave, sample_rate)
        labels = classify_events(m)
    elif kind == "midi":
        m = measured if measured is not None else measure(wave, sample_rate, **midi.SEGMENT_KWARGS)
        labels = classify_notes(m, instrument)
    else:
        raise ValueError(f"no attribute labels for clips of kind {kind!r}")
    return {k: labels.get(k) for k in ATTRIBUTES[kind]}


def score_clips(waves: Sequence[np.ndarray], rows: Sequence[dict[str, Any]], sample_rate: int,
                caption_rows: Sequence[dict[str, Any]] | None = None,
                details: dict[str, Any] | None = None,
                cache: dict[tuple[int, str], dict] | None = None) -> dict[str, Any]:
    """Accuracy of ``waves`` against the labels of ``caption_rows`` (default ``rows``: each clip's own).

    Returns per-attribute accuracy (over the clips that have the attribute), ``all_correct`` (every attribute
    of a clip right) and ``n``; by kind too. ``cache``: the measurements of these ``waves`` by (position, kind),
    filled here; pass the same dict to score the same waves against other captions without measuring again.
    """
    caption_rows = rows if caption_rows is None else caption_rows
    cache = {} if cache is None else cache
    hits: dict[str, list[bool]] = {}
    pairs: dict[str, list[tuple[str, str]]] = {}  # attribute -> (target, measured) labels
    by_kind: dict[str, list[bool]] = {}
    alls = []
    for i, (wave, target) in enumerate(zip(waves, caption_rows)):
        kind = target["kind"]
        key = (i, kind)
        if key not in cache:
            kw = midi.SEGMENT_KWARGS if kind == "midi" else {}
            cache[key] = measure(np.asarray(wave, dtype=np.float64), sample_rate, **kw)
        got = measure_labels(wave, sample_rate, kind, target.get("instrument") or None, cache[key])
        ok = {k: got[k] is not None and str(got[k]) == str(target.get(k)) for k in ATTRIBUTES[kind]}
        for k, v in ok.items():
            hits.setdefault(k, []).append(v)
            pairs.setdefault(k, []).append((str(target.get(k)), str(got[k])))
        alls.append(all(ok.values()))
        by_kind.setdefault(kind, []).append(all(ok.values()))
    out: dict[str, Any] = {k: float(np.mean(v)) for k, v in sorted(hits.items())}
    out["all_correct"] = float(np.mean(alls)) if alls else float("nan")
    out["all_correct_by_kind"] = {k: float(np.mean(v)) for k, v in by_kind.items()}
    out["n"] = len(alls)
    if details is not None:  # kept apart, so the accuracy dict stays attribute -> float
        details["counts"] = {k: [int(sum(v)), len(v)] for k, v in sorted(hits.items())}
        details["interval"] = {k: list(wilson_interval(int(sum(v)), len(v))) for k, v in sorted(hits.items())}
        details["interval"]["all_correct"] = list(wilson_interval(int(sum(alls)), len(alls)))
        details["chance_expected"] = {k: expected_chance(v) for k, v in sorted(pairs.items())}
        details["confusion"] = {k: confusion(v) for k, v in sorted(pairs.items())}
    return out


def confusion(pairs: Sequence[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """How often each target label was measured as each label: ``{target: {measured: count}}`` ("None":
    the attribute could not be measured), so a low accuracy says which way the generations go wrong."""
    out: dict[str, dict[str, int]] = {}
    for t, m in pairs:
        out.setdefault(t, {})
        out[t][m] = out[t].get(m, 0) + 1
    return {t: dict(sorted(row.items())) for t, row in sorted(out.items())}


def expected_chance(pairs: Sequence[tuple[str, str]]) -> float:
    """Accuracy expected if measured labels were independent of the targets: sum over classes c of
    P(target = c) * P(measured = c), from the (target, measured) label pairs themselves."""
    if not pairs:
        return float("nan")
    n = len(pairs)
    targets = {c: sum(t == c for t, _ in pairs) / n for c, _ in pairs}
    return float(sum(share * sum(m == c for _, m in pairs) / n for c, share in targets.items()))


def shuffled_within_kind(rows: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """A permutation of ``rows`` that moves each row to another of the same kind (where there is one)."""
    rng = np.random.default_rng(seed)
    out = list(rows)
    for kind in {r["kind"] for r in rows}:
        idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
        if len(idx) < 2:
            continue
        shift = int(rng.integers(1, len(idx)))  # a cyclic shift by 1..n-1: no row keeps its own caption
        perm = list(rng.permutation(idx))
        for a, b in zip(perm, perm[shift:] + perm[:shift]):
            out[a] = rows[b]
    return out


def adherence_report(generated: Sequence[np.ndarray], real: Sequence[np.ndarray], rows: Sequence[dict[str, Any]],
                     sample_rate: int, seed: int = 0, real_without_vae: Sequence[np.ndarray] | None = None
                     ) -> dict[str, Any]:
    """``generated`` scored against their captions, the ``real`` clips (through mel -> VAE -> audio) as the
    ceiling, and the generations against shuffled captions as chance. ``stats[who]``: per-attribute counts,
    95% Wilson intervals and expected chance. Per attribute also the verdicts: ``beats_chance`` (the
    generated interval's lower end above the expected chance) and ``of_ceiling`` (generated / ceiling)."""
    stats: dict[str, dict[str, Any]] = {"generated": {}, "ceiling": {}}
    measured: dict[tuple[int, str], dict] = {}  # the generated clips, measured once for both scorings
    gen = score_clips(generated, rows, sample_rate, details=stats["generated"], cache=measured)
    ceiling = score_clips(real, rows, sample_rate, details=stats["ceiling"])
    out: dict[str, Any] = {"generated": gen, "ceiling": ceiling,
                           "chance": score_clips(generated, rows, sample_rate, shuffled_within_kind(rows, seed),
                                                 cache=measured)}
    if real_without_vae is not None:
        out["ceiling_without_vae"] = score_clips(real_without_vae, rows, sample_rate)
    g = stats["generated"]
    attrs = list(g["counts"])
    out["stats"] = stats
    out["beats_chance"] = {k: bool(g["interval"][k][0] > g["chance_expected"][k]) for k in attrs}
    out["of_ceiling"] = {k: (gen[k] / ceiling[k] if ceiling[k] > 0 else float("nan")) for k in attrs}
    return out


def swap_pitch_word(caption: str, kind: str, direction: str = "high") -> str | None:
    """The caption with its low pitch word swapped for the high one (``direction="high"``), or the other way
    round; None unless exactly one such word is in it."""
    import re

    _, swaps = PITCH_SWAPS[kind]
    spans: list[tuple[int, int, str]] = []  # every pitch word (longest phrases first, no overlaps)
    for low, high in swaps:
        old, new = (low, high) if direction == "high" else (high, low)
        for m in re.finditer(rf"(?<![\w-]){re.escape(old)}(?![\w-])", caption):
            if not any(m.start() < e and s < m.end() for s, e, _ in spans):
                spans.append((m.start(), m.end(), new))
    if len(spans) != 1:
        return None
    a, b, new = spans[0]
    return caption[:a] + new + caption[b:]


def pitch_pairs(rows: Sequence[dict[str, Any]], n: int | None = None) -> list[dict[str, Any]]:
    """(low caption, high caption) pairs from rows whose pitch (procedural) or register (MIDI) is low or
    high, the other caption made by ``swap_pitch_word``; at most ``n``."""
    out = []
    for r in rows:
        kind = r.get("kind")
        if kind not in PITCH_SWAPS:
            continue
        attr = PITCH_SWAPS[kind][0]
        label = str(r.get(attr))
        if label not in ("low", "high"):
            continue
        other = swap_pitch_word(r["caption"], kind, "high" if label == "low" else "low")
        if other is None:
            continue
        low, high = (r["caption"], other) if label == "low" else (other, r["caption"])
        out.append({"kind": kind, "attribute": attr, "low": low, "high": high, "index": r.get("index")})
    return out[:n] if n else out


def measured_pitch(wave: np.ndarray, sample_rate: int, kind: str) -> float | None:
    """The clip's pitch in Hz as ``attributes.measure`` gives it (None if not measurable)."""
    kw = midi.SEGMENT_KWARGS if kind == "midi" else {}
    m = measure(np.asarray(wave, dtype=np.float64), sample_rate, **kw)
    value = m.get("pitch_hz") or m.get("f0_hz")
    return float(value) if value else None


def paired_word_test(pipe: Any, pairs: Sequence[dict[str, Any]], *, steps: int | None = None,
                     guidance: float | None = None, seed: int = 0, seconds: float = CLIP_SECONDS,
                     batch_size: int = 8) -> dict[str, Any]:
    """Generate each pair's low and high caption with the same seed (pair i: seed + i) and count the pairs
    whose measured pitch is higher for the high caption (a pair with an unmeasurable clip counts as wrong).

    ``octaves``: over the pairs with both pitches measured, log2(high / low) averaged (``mean``, with a 95%
    bootstrap ``interval``) and its ``median``; ``measured`` pairs of ``n``. A caption-deaf model gives ~0.
    """
    lows = generate_for(pipe, [{"caption": p["low"]} for p in pairs], steps=steps, guidance=guidance, seed=seed,
                        batch_size=batch_size, seconds=seconds)
    highs = generate_for(pipe, [{"caption": p["high"]} for p in pairs], steps=steps, guidance=guidance, seed=seed,
                         batch_size=batch_size, seconds=seconds)
    out: dict[str, Any] = {}
    for kind in sorted({p["kind"] for p in pairs}):
        right, octaves = [], []
        for p, lo, hi in zip(pairs, lows, highs):
            if p["kind"] != kind:
                continue
            a, b = measured_pitch(lo, pipe.sample_rate, kind), measured_pitch(hi, pipe.sample_rate, kind)
            right.append(a is not None and b is not None and b > a)
            if a and b:
                octaves.append(math.log2(b / a))
        attr = PITCH_SWAPS[kind][0]
        k = int(sum(right))
        out[attr] = {"right_way": k / len(right), "interval": list(wilson_interval(k, len(right))),
                     "n": len(right), "octaves": octave_shift(octaves)}
    return out


def octave_shift(octaves: Sequence[float], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean and median of per-pair pitch shifts in octaves, with a 95% percentile-bootstrap interval of the
    mean (seeded, so a report is reproducible); None figures when no pair was measurable."""
    x = np.asarray(octaves, dtype=np.float64)
    if x.size == 0:
        return {"mean": None, "median": None, "interval": [None, None], "measured": 0}
    boot = np.random.default_rng(seed).choice(x, size=(resamples, x.size)).mean(axis=1)
    return {"mean": float(x.mean()), "median": float(np.median(x)),
            "interval": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))], "measured": int(x.size)}


def format_adherence(report: dict[str, Any]) -> str:
    """A table: per attribute, generated accuracy [95% interval], expected chance, ceiling, generated /
    ceiling."""
    gen, ceil, st = report["generated"], report["ceiling"], report["stats"]["generated"]
    lines = [f"{'attribute':<10} {'generated [95% CI]':>22} {'chance':>7} {'ceiling':>8} {'of ceil':>8}  n"]
    for k in st["counts"]:
        lo, hi = st["interval"][k]
        lines.append(f"{k:<10} {gen[k]:>7.2f} [{lo:.2f}, {hi:.2f}] {st['chance_expected'][k]:>7.2f} "
                     f"{ceil[k]:>8.2f} {report['of_ceiling'][k]:>8.2f}  {st['counts'][k][1]}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# in-domain classifier and Frechet distance


class AudioClassifierNet(nn.Module, PretrainedMixin):
    """A small CNN over the log-mel with one classification head per label (``heads``: name -> classes).

    ``features(mel)`` is the time- and frequency-averaged output of the last conv block (``channels[-1]``
    wide), the embedding used for the Frechet distance.
    """

    def __init__(self, heads: dict[str, list[str]], mel_config: dict | None = None,
                 channels: Sequence[int] = (16, 32, 64, 128)):
        super().__init__()
        self.config = capture_config(locals())
        self.config.update(channels=list(channels), mel_config=mel_config or MelConfig().to_dict())
        self.mel_config = MelConfig.from_dict(self.config["mel_config"])
        layers: list[nn.Module] = []
        c = 1
        for ch in channels:
            layers += [nn.Conv2d(c, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1),
                       nn.BatchNorm2d(ch), nn.ReLU(), nn.MaxPool2d(2)]
            c = ch
        self.body = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(c, len(classes)) for name, classes in heads.items()})
        self.register_buffer("mel_mean", torch.zeros(self.mel_config.n_mels))
        self.register_buffer("mel_std", torch.ones(self.mel_config.n_mels))

    def features(self, mel: Tensor) -> Tensor:
        x = (mel - self.mel_mean[:, None]) / self.mel_std[:, None]
        return self.body(x[:, None]).mean((2, 3))

    def forward(self, mel: Tensor) -> dict[str, Tensor]:
        h = self.features(mel)
        return {name: head(h) for name, head in self.heads.items()}


def _fixed_mels(waves: Sequence[np.ndarray | Tensor], config: MelConfig, frames: int) -> Tensor:
    """Log-mels of the waves cut or padded (with silence) to ``frames`` frames: (N, n_mels, frames)."""
    mel_fn = MelSpectrogram(config)
    out = torch.full((len(waves), config.n_mels, frames), config.silence())
    for i, w in enumerate(waves):
        m = mel_fn(torch.as_tensor(np.asarray(w), dtype=torch.float32)[: frames * config.hop_length])
        out[i, :, : m.shape[-1]] = m[:, :frames]
    return out


def _labels(items: Sequence[dict[str, Any]], heads: dict[str, list[str]]) -> dict[str, Tensor]:
    return {h: torch.tensor([classes.index(str(it.get(h))) if str(it.get(h)) in classes else -100 for it in items])
            for h, classes in heads.items()}


def train_classifier(data: str, directory: str | Path | None = None, *, epochs: int = 8, batch_size: int = 32,
                     frames: int = 256, lr: float = 2e-3, seed: int = 0,
                     progress: Callable[[str], None] | None = None) -> tuple[AudioClassifierNet, dict[str, float]]:
    """Train the in-domain classifier on the train split of the sounds set ``data``; returns it and its
    validation accuracy per head (saved to ``directory`` if given, with ``metrics.json``)."""
    from ..data.loaders import AudioClips

    torch.manual_seed(seed)
    config = MelConfig()
    splits = {s: AudioClips(data, split=s) for s in ("train", "validation")}
    heads = {h: sorted({str(it[h]) for it in splits["train"].items if str(it.get(h, "")) not in ("", "None")})
             for h in CLASSIFIER_HEADS}
    heads = {h: c for h, c in heads.items() if len(c) > 1}
    mels = {s: _fixed_mels([c[i]["audio"] for i in range(len(c))], config, frames) for s, c in splits.items()}
    labels = {s: _labels(c.items, heads) for s, c in splits.items()}
    net = AudioClassifierNet(heads, config.to_dict())
    net.mel_mean.copy_(mels["train"].mean((0, 2)))
    net.mel_std.copy_(mels["train"].std((0, 2)).clamp(min=1e-2))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    n = mels["train"].shape[0]
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for a in range(0, n, batch_size):
            idx = perm[a:a + batch_size]
            x = mels["train"][idx]
            shift = int(torch.randint(-16, 17, (), generator=gen))  # random time shift (circular)
            x = torch.roll(x, shift, dims=-1)
            out = net(x)
            loss = sum(F.cross_entropy(out[h], labels["train"][h][idx], ignore_index=-100)
                       for h in heads if (labels["train"][h][idx] >= 0).any())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if progress:
            progress(f"classifier epoch {epoch + 1}/{epochs}: loss {total / n:.3f}")
    net.eval()
    with torch.no_grad():
        out = net(mels["validation"])
    metrics = {}
    for h in heads:
        y = labels["validation"][h]
        ok = y >= 0
        if ok.any():
            metrics[h] = float((out[h].argmax(-1)[ok] == y[ok]).float().mean())
    if directory is not None:
        net.save_pretrained(directory, extra={"metrics.json": {"validation_accuracy": metrics, "epochs": epochs,
                                                               "data": str(data)}})
    return net, metrics


@torch.no_grad()
def classifier_features(net: AudioClassifierNet, waves: Sequence[np.ndarray | Tensor], frames: int = 256) -> np.ndarray:
    net.eval()
    return net.features(_fixed_mels(waves, net.mel_config, frames)).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2) between Gaussian fits of (N, D) features.

    The matrix square roots come from symmetric eigendecompositions (negative round-off eigenvalues set to
    0), which stays real and stable for the singular covariances of small samples.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a Frechet distance needs at least 2 clips per side (got {len(a)} and {len(b)}); "
                         "evaluate more captions")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("non-finite features: a generated clip holds NaN/Inf samples")
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)

    def sqrtm_psd(m: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh((m + m.T) / 2)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    ra = sqrtm_psd(sa)
    cross = np.linalg.eigvalsh((ra @ sb @ ra + (ra @ sb @ ra).T) / 2)
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


# --------------------------------------------------------------------------------------------------
# generation, sweeps, the whole evaluation


def generate_for(pipe: Any, rows: Sequence[dict[str, Any]], *, steps: int | None = None, guidance: float | None = None,
                 seed: int = 0, batch_size: int = 8, seconds: float = CLIP_SECONDS) -> list[np.ndarray]:
    """One clip per row's caption (row i uses seed + i, whatever the batching)."""
    waves = []
    for a in range(0, len(rows), batch_size):
        caps = [r["caption"] for r in rows[a:a + batch_size]]
        out = pipe(caps, seconds=seconds, steps=steps, guidance=guidance, seed=seed + a)
        waves += [w.cpu().numpy() for w in out.audio]
    return waves


def resynthesize(pipe: Any, waves: Sequence[np.ndarray], seconds: float = CLIP_SECONDS, seed: int = 0,
                 batch_size: int = 8, through_vae: bool = True) -> list[np.ndarray]:
    """Real clips through the path a generation takes: mel -> VAE encode (posterior mean) / decode ->
    vocoder (or Griffin-Lim); the adherence ceiling. ``through_vae=False`` leaves the VAE out."""
    mels = _fixed_mels(waves, pipe.mel_config, pipe.frames_for(seconds)).to(pipe.device)
    out = []
    for a in range(0, len(mels), batch_size):
        mel = mels[a:a + batch_size]
        if through_vae:
            with torch.no_grad():
                mel = pipe.vae.decode_latents(pipe.vae.encode_latents(mel)[0], mel.shape[-1])
        out += [w.cpu().numpy() for w in pipe.to_audio(mel, seed + a)]
    return out


def sweep(pipe: Any, rows: Sequence[dict[str, Any]], real_features: np.ndarray, classifier: AudioClassifierNet, *,
          scales: Sequence[float] = (), steps_list: Sequence[int] = (), steps: int | None = None,
          guidance: float | None = None, seed: int = 0, seconds: float = CLIP_SECONDS,
          progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Adherence and Frechet distance for each guidance scale (at ``steps``) and each step count (at ``guidance``)."""
    out = []
    settings = [(s, steps) for s in scales] + [(guidance if guidance is not None else pipe.guidance, n)
                                               for n in steps_list]
    for scale, n in settings:
        t0 = time.perf_counter()
        waves = generate_for(pipe, rows, steps=n, guidance=scale, seed=seed, seconds=seconds)
        elapsed = time.perf_counter() - t0
        acc = score_clips(waves, rows, pipe.sample_rate)
        fd = frechet_distance(classifier_features(classifier, waves), real_features)
        out.append({"guidance": scale, "steps": n or pipe.steps, "all_correct": acc["all_correct"],
                    "accuracy": acc, "frechet_distance": fd, "seconds_per_clip": elapsed / len(rows)})
        if progress:
            progress(f"guidance {scale:g}, {n or pipe.steps} steps: all-correct {acc['all_correct']:.3f}, "
                     f"FD {fd:.2f}, {elapsed / len(rows):.2f} s per clip")
    return out


def _excerpts(test: Any, rows: Sequence[dict[str, Any]], seconds: float, sample_rate: int) -> list[np.ndarray]:
    """The first ``seconds`` of each row's real test clip."""
    return [test[r["index"]]["audio"].numpy()[: round(seconds * sample_rate)] for r in rows]


def _seen_adherence(pipe: Any, test: Any, kinds: Sequence[str], n: int, seed: int, steps: int | None,
                    guidance: float | None, seconds: float, batch_size: int) -> dict[str, Any]:
    """``adherence_report`` for ``n`` test captions of attribute combinations seen in training."""
    rows = held_out_rows(test, kinds, n, seed, held_out=False)
    real = _excerpts(test, rows, seconds, pipe.sample_rate)
    generated = generate_for(pipe, rows, steps=steps, guidance=guidance, seed=seed, seconds=seconds,
                             batch_size=batch_size)
    return adherence_report(generated, resynthesize(pipe, real, seconds, seed=seed, batch_size=batch_size), rows,
                            pipe.sample_rate, seed)


def run_evaluation(model: str, data: str, *, out: str | Path = "runs/t2s-eval", classifier: str | None = None,
                   n: int = 96, seed: int = 0, steps: int | None = None, guidance: float | None = None,
                   sweep_scales: Sequence[float] | None = None, sweep_steps: Sequence[int] | None = None,
                   device: str = "cpu", vocoder: str | None = None, kinds: Sequence[str] = ("procedural", "midi"),
                   classifier_epochs: int = 8, seconds: float = CLIP_SECONDS, pairs: int = 32,
                   without_vae: bool = True, batch_size: int = 8, seen: int = 0,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole evaluation (see the module doc); writes ``eval.json`` and the first generated clips to ``out``.

    ``n``: held-out captions (96 by default: a per-attribute accuracy then carries about +-0.1 at 95%).
    ``pairs``: caption pairs of the paired pitch-word test (0: skip it).
    ``seconds``: length of the generated clips and of the real ones' excerpts (the sounds set's procedural
    and MIDI clips are 3 s long; shorter only to test the code path quickly).
    ``without_vae``: also score the real clips through the audio path without the VAE (``ceiling_without_vae``,
    one more rendering of every clip; the ceiling the targets use is the one through the VAE).
    ``batch_size``: clips generated (and rendered) at once.
    ``seen``: also score this many test captions of combinations seen in training (``held_out`` = 0; other
    clips than the training ones), generated and scored the same way with their own ceiling and chance
    (``adherence_seen``): it tells a model that does not follow captions from one that does not compose them.
    ``eval.json`` records the seconds each part took (``timings``).
    """
    from ..audio import write_wav
    from ..data.loaders import AudioClips
    from .inference import AudioPipeline

    say = progress or (lambda s: None)
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(timings.get(name, 0.0) + now - clock[0], 2)
        clock[0] = now

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = AudioPipeline.from_pretrained(model, device, vocoder=vocoder)
    test = AudioClips(data, split="test")
    rows = held_out_rows(test, kinds, n, seed)
    floor_rows = held_out_rows(test, kinds, len(rows), seed, skip=len(rows))
    real = _excerpts(test, rows, seconds, pipe.sample_rate)
    say(f"{len(rows)} held-out captions ({', '.join(kinds)}) from the test split of {data}")

    # VAE reconstruction error on these clips (log-mel L1, natural-log units)
    mel = _fixed_mels(real, pipe.mel_config, pipe.frames_for(seconds)).to(pipe.device)
    with torch.no_grad():
        z, _ = pipe.vae.encode_latents(mel)
        vae_l1 = float((pipe.vae.decode_latents(z, mel.shape[-1]) - mel).abs().mean())
    say(f"VAE reconstruction log-mel L1 on them: {vae_l1:.3f}")
    lap("load")

    t0 = time.perf_counter()
    generated = generate_for(pipe, rows, steps=steps, guidance=guidance, seed=seed, seconds=seconds,
                             batch_size=batch_size)
    gen_seconds = (time.perf_counter() - t0) / len(rows)
    lap("generate")
    ceiling_waves = resynthesize(pipe, real, seconds, seed=seed, batch_size=batch_size)
    lap("ceiling")
    plain = resynthesize(pipe, real, seconds, seed=seed, through_vae=False, batch_size=batch_size) \
        if without_vae else None
    lap("ceiling_without_vae")
    report = adherence_report(generated, ceiling_waves, rows, pipe.sample_rate, seed, real_without_vae=plain)
    lap("score")
    for i, w in enumerate(generated[:8]):
        write_wav(out / f"gen_{i:02d}.wav", np.clip(w, -1, 1), pipe.sample_rate)
    (out / "captions.txt").write_text("\n".join(r["caption"] for r in rows[:8]) + "\n")
    say(f"adherence (all correct): generated {report['generated']['all_correct']:.3f}, ceiling through the VAE "
        f"{report['ceiling']['all_correct']:.3f}, chance {report['chance']['all_correct']:.3f}")
    say(format_adherence(report))
    paired = None
    if pairs:
        pp = pitch_pairs(held_out_rows(test, kinds, None, seed), pairs)
        paired = paired_word_test(pipe, pp, steps=steps, guidance=guidance, seed=seed, seconds=seconds,
                                  batch_size=batch_size)
        say("paired pitch-word test: " + ", ".join(
            f"{k} {v['right_way']:.2f} [{v['interval'][0]:.2f}, {v['interval'][1]:.2f}] of {v['n']} pairs"
            + (f" (moves {v['octaves']['mean']:+.2f} octaves on average)" if v["octaves"]["measured"] else "")
            for k, v in paired.items()))

    lap("paired")
    seen_report = None
    if seen:
        seen_report = _seen_adherence(pipe, test, kinds, seen, seed, steps, guidance, seconds, batch_size)
        say(f"seen combinations ({seen_report['generated']['n']} test captions):\n" + format_adherence(seen_report))
    lap("seen")
    cls_dir = Path(classifier) if classifier else out / "classifier"
    if (cls_dir / "config.json").is_file():
        cls_net = AudioClassifierNet.from_pretrained(cls_dir)
        cls_metrics = json.loads((cls_dir / "metrics.json").read_text()).get("validation_accuracy", {}) \
            if (cls_dir / "metrics.json").is_file() else {}
    else:
        say(f"training the in-domain classifier on {data} ({classifier_epochs} epochs)")
        cls_net, cls_metrics = train_classifier(data, cls_dir, epochs=classifier_epochs, seed=seed, progress=say)
    lap("classifier")
    real_feat = classifier_features(cls_net, real)
    floor_feat = classifier_features(cls_net, _excerpts(test, floor_rows, seconds, pipe.sample_rate))
    # the floor needs a second, disjoint set of held-out clips; a tiny test split may not have one
    floor = frechet_distance(floor_feat, real_feat) if len(floor_rows) >= 2 else float("nan")
    fd = {"generated_vs_real": frechet_distance(classifier_features(cls_net, generated), real_feat),
          "resynthesized_real_vs_real": frechet_distance(classifier_features(cls_net, ceiling_waves), real_feat),
          "real_vs_real_floor": floor, "floor_n": len(floor_rows), "n": len(rows),
          "features": f"in-domain classifier ({cls_net.config['channels'][-1]}-d pooled conv features)"}
    say(f"Frechet distance (in-domain features): generated {fd['generated_vs_real']:.2f}, resynthesized real "
        f"{fd['resynthesized_real_vs_real']:.2f}, real-vs-real floor {fd['real_vs_real_floor']:.2f}")
    lap("frechet")

    result: dict[str, Any] = {"model": str(model), "data": str(data), "n": len(rows), "seed": seed, "seconds": seconds,
                              "steps": steps or pipe.steps, "guidance": guidance if guidance is not None
                              else pipe.guidance, "sampler": pipe.sampler,
                              "audio": "vocoder" if pipe.vocoder is not None else "Griffin-Lim",
                              "vae_logmel_l1": vae_l1, "seconds_per_clip": gen_seconds, "adherence": report,
                              "adherence_seen": seen_report,
                              "paired": paired, "frechet": fd, "classifier_validation_accuracy": cls_metrics,
                              "timings": timings}
    if sweep_scales or sweep_steps:
        result["sweep"] = sweep(pipe, rows, real_feat, cls_net, scales=sweep_scales or (),
                                steps_list=sweep_steps or (), steps=steps, guidance=guidance, seed=seed,
                                seconds=seconds, progress=say)
        scale_rows = [r for r in result["sweep"][: len(sweep_scales or ())]]
        if scale_rows:
            best = max(scale_rows, key=lambda r: (r["all_correct"], -r["frechet_distance"]))
            result["best_guidance"] = best["guidance"]
    result["summary"] = {
        "all_correct": {k: report[k]["all_correct"] for k in ("generated", "ceiling", "chance")},
        "frechet": {k: fd[k] for k in ("generated_vs_real", "resynthesized_real_vs_real", "real_vs_real_floor")},
        "vae_logmel_l1": vae_l1, "best_guidance": result.get("best_guidance"),
        "beats_chance": report["beats_chance"], "of_ceiling": report["of_ceiling"],
        "paired": {k: v["right_way"] for k, v in (paired or {}).items()}}
    if seen_report is not None:
        result["summary"]["seen"] = {k: seen_report[k] for k in ("beats_chance", "of_ceiling")}
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    say(f"wrote {out / 'eval.json'}")
    return result
