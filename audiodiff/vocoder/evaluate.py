"""Evaluation of a vocoder on held-out speech, next to references computed in the same run.

For every utterance (by default the ``test`` split, whose speakers were never seen in training) the
mel is computed with the vocoder's own front end and turned back into audio by

* the vocoder at each requested number of steps (6, 25, 50, 1000 by default),
* Griffin-Lim from the same mel (``audiodiff.mel.griffin_lim``: the no-learning floor),
* for a vocoder with a shaped prior (PriorGrad, spectral), the prior's noise alone (``prior_noise``):
  it follows the mel without any network, so the network must beat it,
* nothing: the ground truth itself (the ceiling, where each metric reaches its best value),

and each output is scored against the ground truth (cut to frames * hop samples) with log-mel
distance, multi-resolution STFT distance, wideband PESQ at 16 kHz and STOI (``audiodiff.metrics``).
Real-time factor (processing seconds per second of audio; below 1 is faster than real time) is
measured for every system on the device the vocoder is on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..mel import griffin_lim
from ..metrics import all_metrics
from .inference import Vocoder

METRICS = ("logmel", "mrstft", "pesq_wb", "stoi")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(vocoder: Vocoder, clips: Sequence[dict[str, Any]] | Any, steps: Sequence[int] = (6, 25, 50, 1000), *,
             limit: int | None = None, max_seconds: float | None = None, seed: int = 0, griffin_lim_iters: int = 60,
             audio_dir: str | Path | None = None, save_audio: int = 0,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score the vocoder, Griffin-Lim and the ground truth on ``clips`` (items with an ``audio`` (T,) tensor).

    Args:
        steps: the vocoder's step counts to evaluate (each uses its searched table if the vocoder has one).
        limit: evaluate at most this many clips. max_seconds: cut each clip to this length.
        seed: sampling seed (the same for every utterance and step count).
        audio_dir, save_audio: write the first ``save_audio`` utterances' outputs as WAV files there.

    Returns ``{"rows": [{"system", "steps", <metric>_mean, <metric>_sem, "rtf", "n"}...], "utterances": [...]}``.
    """
    import soundfile as sf

    sr, hop, device = vocoder.sample_rate, vocoder.hop_length, vocoder.device
    systems: list[tuple[str, int | None]] = [("ground_truth", None), ("griffin_lim", None)]
    if vocoder.prior is not None:  # a shaped prior's noise alone: what the network adds is measured against it
        systems.append(("prior_noise", None))
    systems += [("vocoder", int(s)) for s in steps]
    scores: dict[tuple[str, int | None], list[dict[str, float]]] = {k: [] for k in systems}
    timing: dict[tuple[str, int | None], float] = {k: 0.0 for k in systems}
    total_seconds = 0.0
    utterances = []
    n = len(clips) if limit is None else min(limit, len(clips))
    for i in range(n):
        item = clips[i]
        audio = torch.as_tensor(item["audio"], dtype=torch.float32).flatten()
        if max_seconds is not None:
            audio = audio[: int(max_seconds * sr)]
        mel = vocoder.mel(audio.to(device))
        ref = audio[: mel.shape[-1] * hop]
        seconds = ref.numel() / sr
        total_seconds += seconds
        record: dict[str, Any] = {"path": str(item.get("path", i)), "speaker": item.get("speaker"), "seconds": seconds}
        for key in systems:
            name, k = key
            _sync(device)
            t0 = time.perf_counter()
            if name == "ground_truth":
                out: Tensor = ref
            elif name == "griffin_lim":
                out = griffin_lim(mel, vocoder.mel_config, n_iter=griffin_lim_iters,
                                  generator=torch.Generator().manual_seed(seed))
            elif name == "prior_noise":
                out = vocoder.prior_noise(mel, seed=seed)
            else:
                out = vocoder(mel, k, seed=seed)
            _sync(device)
            timing[key] += time.perf_counter() - t0
            out = out.float().cpu()
            m = all_metrics(ref, out, sr, vocoder.mel_config)
            scores[key].append(m)
            label = _label(key)
            record[label] = m
            if audio_dir is not None and i < save_audio:
                Path(audio_dir).mkdir(parents=True, exist_ok=True)
                sf.write(Path(audio_dir) / f"{i:03d}_{label}.wav", out.clamp(-1, 1).numpy(), sr, subtype="PCM_16")
        utterances.append(record)
        if progress is not None:
            summary = "  ".join(f"{_label(key)} {record[_label(key)]['pesq_wb']:.2f}" for key in systems)
            progress(f"[{i + 1}/{n}] {record['path']} ({seconds:.1f} s) PESQ-wb: {summary}")
    rows = []
    for key in systems:
        name, k = key
        row: dict[str, Any] = {"system": name, "steps": k, "n": len(scores[key])}
        for metric in METRICS:
            values = [s[metric] for s in scores[key] if not math.isnan(s[metric])]
            mean = sum(values) / len(values) if values else math.nan
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else math.nan
            row[f"{metric}_mean"] = mean
            row[f"{metric}_sem"] = math.sqrt(var / len(values)) if len(values) > 1 else math.nan
        row["rtf"] = timing[key] / total_seconds if total_seconds else math.nan
        rows.append(row)
    return {"rows": rows, "utterances": utterances, "seconds": total_seconds, "device": str(device), "seed": seed}


def _label(key: tuple[str, int | None]) -> str:
    return key[0] if key[1] is None else f"{key[0]}_{key[1]}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of ``evaluate``'s rows (mean ± standard error)."""
    names = ("log-mel L1 (lower)", "MR-STFT (lower)", "PESQ-wb (higher)", "STOI (higher)")
    head = f"{'system':<14}{'steps':>6}  " + "  ".join(f"{h:>18}" for h in names) + f"  {'RTF':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_sem']:.3f}" if not math.isnan(r[f"{m}_sem"])
                 else f"{r[f'{m}_mean']:.3f}" for m in METRICS]
        steps = "" if r["steps"] is None else str(r["steps"])
        lines.append(f"{r['system']:<14}{steps:>6}  " + "  ".join(f"{c:>18}" for c in cells) + f"  {r['rtf']:>7.3f}")
    return "\n".join(lines)
