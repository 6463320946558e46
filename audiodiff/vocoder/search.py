"""Noise-schedule search: short inference beta tables that vocode well (WaveGrad, Chen et al. 2021, Sec. 4).

A model trained on a continuum of noise levels can sample along any beta table inside its range; with
few steps the choice of table decides the quality. As in the paper, we search tables on a handful of
validation utterances, scoring each table by the log-mel distance between the vocoded audio and the
reference (``vocoder_objective``); every candidate uses the same seed, so two tables are compared on
the same noise.

The search (``search_betas``) works on log10(beta) and keeps the table valid throughout: strictly
increasing betas in (0, 1) whose final noise level stays inside the training schedule's range and
is noisy enough (``max_start_alpha``) for sampling to start from pure noise; without that bound an
undertrained model's search drifts to tables that barely add noise. It
first scores geometric tables over a grid of (first beta, last beta), plus any tables given as starting
points (the vocoder's defaults), then refines the best one coordinate by coordinate with shrinking
steps. It never returns a table worse on the objective than the best starting point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..mel import MelConfig, MelSpectrogram
from .inference import Vocoder, logsnr_uniform_betas

Objective = Callable[[Tensor], float]


@dataclass
class SearchResult:
    """The best table found, its objective, the starting tables' objectives and every evaluation."""

    betas: list[float]
    objective: float
    baselines: dict[str, float] = field(default_factory=dict)
    history: list[tuple[list[float], float]] = field(default_factory=list)

    @property
    def evaluations(self) -> int:
        return len(self.history)


def is_valid(betas: Tensor, alpha_min: float, alpha_max: float = 1.0) -> bool:
    """Strictly increasing, in (0, 1), and the starting noise level sqrt(prod(1 - beta)) within
    [alpha_min, alpha_max]: inside the trained range, and noisy enough for sampling to start from noise."""
    b = betas.to(torch.float64)
    if not torch.all((b > 0) & (b < 1)) or (b.numel() > 1 and not torch.all(b[1:] > b[:-1])):
        return False
    log_alpha = float(torch.log1p(-b).sum()) / 2
    return math.log(alpha_min) - 1e-9 <= log_alpha <= math.log(alpha_max) + 1e-9


def geometric_betas(steps: int, first: float, last: float) -> Tensor:
    """``steps`` betas from ``first`` to ``last``, equally spaced in log."""
    if steps == 1:
        return torch.tensor([last], dtype=torch.float64)
    return torch.logspace(math.log10(first), math.log10(last), steps, dtype=torch.float64)


def search_betas(objective: Objective, steps: int, *, alpha_min: float, alpha_max: float = 1.0,
                 starts: dict[str, Tensor] | None = None,
                 firsts: Sequence[float] = (1e-6, 1e-5, 1e-4, 1e-3),
                 lasts: Sequence[float] = (0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9),
                 log_steps: Sequence[float] = (0.5, 0.25, 0.1), rounds: int = 2,
                 progress: Callable[[str], None] | None = None) -> SearchResult:
    """Minimise ``objective(betas)`` over valid increasing tables of ``steps`` betas (see the module doc).

    Args:
        objective: the score of a table (lower is better), e.g. ``vocoder_objective(...)``.
        alpha_min: the smallest noise level sqrt(alpha_bar) the model was trained on.
        alpha_max: the largest allowed starting level: sampling starts from pure noise sigma z, which
            stands for alpha x0 + sigma z only while alpha |x0| << sigma.
        starts: named starting tables (scored and kept as baselines; invalid ones are skipped).
        firsts, lasts: the grid of geometric tables scored first.
        log_steps: the coordinate steps in log10(beta), one refinement pass per value.
        rounds: the most sweeps over the coordinates per step size (stops early without improvement).
    """
    cache: dict[tuple[float, ...], float] = {}
    result = SearchResult(betas=[], objective=math.inf)

    def score(b: Tensor) -> float:
        key = tuple(round(v, 12) for v in b.tolist())
        if key not in cache:
            cache[key] = float(objective(b))
            result.history.append((list(key), cache[key]))
            if progress is not None:
                progress(f"[{len(result.history)}] {cache[key]:.4f}  " + " ".join(f"{v:.3g}" for v in key))
        return cache[key]

    best, best_val = None, math.inf
    for name, b in (starts or {}).items():
        b = torch.as_tensor(b, dtype=torch.float64)
        if b.numel() == steps and is_valid(b, alpha_min, alpha_max):
            val = result.baselines[name] = score(b)
            if val < best_val:
                best, best_val = b, val
    for first in firsts:
        for last in lasts:
            if last <= first and steps > 1:
                continue
            b = geometric_betas(steps, first, last)
            if is_valid(b, alpha_min, alpha_max):
                val = score(b)
                if val < best_val:
                    best, best_val = b, val
    if best is None:
        raise ValueError(f"no valid {steps}-step table among the starting points and the grid (starting noise "
                         f"level between {alpha_min} and {alpha_max})")
    log_b = best.log10()
    for delta in log_steps:
        for _ in range(rounds):
            improved = False
            for i in range(steps):
                for sign in (-1.0, 1.0):
                    trial = log_b.clone()
                    trial[i] += sign * delta
                    b = 10**trial
                    if not is_valid(b, alpha_min, alpha_max):
                        continue
                    val = score(b)
                    if val < best_val - 1e-9:
                        log_b, best_val, improved = trial, val, True
                        break
            if not improved:
                break
    result.betas, result.objective = (10**log_b).tolist(), best_val
    return result


def vocoder_objective(vocoder: Vocoder, audios: Sequence[Tensor], seed: int = 0,
                      mel_config: MelConfig | None = None) -> Objective:
    """Mean log-mel L1 distance between the references and their vocoded versions for a beta table.

    The references' mels are computed once; each table is sampled from the same seed (common random
    numbers). ``audios`` are 1-D waveforms at the vocoder's sample rate; they are vocoded as one batch.
    """
    mel_fn = MelSpectrogram(mel_config or vocoder.mel_config).to(vocoder.device)
    refs = [a.to(vocoder.device, torch.float32).flatten() for a in audios]
    mels = [mel_fn(r) for r in refs]

    def objective(betas: Tensor) -> float:
        waves = vocoder(mels, betas=betas, seed=seed)
        return float(torch.stack([(mel_fn(w) - m).abs().mean() for w, m in zip(waves, mels)]).mean())

    return objective


def search_schedule(vocoder: Vocoder, audios: Sequence[Tensor], steps: int = 6, *, seed: int = 0,
                    max_start_alpha: float = 0.5, progress: Callable[[str], None] | None = None,
                    **search_kwargs) -> SearchResult:
    """Search a ``steps``-step table for ``vocoder`` on ``audios``; baselines: the training schedule seen
    through ``steps`` uniform steps in t ("uniform_t") and equal log-SNR spacing ("logsnr_uniform").

    ``max_start_alpha`` bounds the starting noise level sqrt(alpha_bar_N) (0.5: speech at an RMS of 0.1
    is then 25 dB below the starting noise). ``search_kwargs`` go to ``search_betas`` (rounds, firsts,
    lasts, log_steps)."""
    alpha_min = float(vocoder.schedule.alpha(torch.tensor(1.0, dtype=torch.float64)))
    starts = {"uniform_t": vocoder.schedule.betas(steps),
              "logsnr_uniform": logsnr_uniform_betas(vocoder.schedule, steps)}
    if steps in vocoder.noise_schedules:
        starts["stored"] = torch.tensor(vocoder.noise_schedules[steps], dtype=torch.float64)
    return search_betas(vocoder_objective(vocoder, audios, seed), steps, alpha_min=alpha_min,
                        alpha_max=max_start_alpha, starts=starts, progress=progress, **search_kwargs)
