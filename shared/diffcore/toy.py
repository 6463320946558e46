"""The Gaussian-mixture toy: how close does each sampler get to a known data distribution?

With the exact denoiser of a Gaussian mixture (``diffcore.testing``) there is no model error, so what
is measured is the sampler alone: its discretisation error (deterministic samplers) or its mixing
(stochastic ones), against the sampling noise of a finite sample. Per sampler configuration:

* ``ks``: Kolmogorov-Smirnov distance sup |F_emp - F| of the first coordinate to the exact CDF,
* ``mean_err`` / ``var_err``: sample mean / variance minus the exact ones (worst dimension, signed),
* ``mode_weight``: fraction of samples with x[0] > 0 (the exact value, ``mode_target``, is
  1 - F(0) ~= 0.7 for the default mixture), and its error ``mode_err``,
* ``nfe``: denoiser evaluations (counted by wrapping the denoiser), ``steps`` (sampler iterations:
  grid steps, each of Langevin's carrying ``n_steps`` updates; accepted steps for the adaptive
  solver), wall time per step and per NFE.

All samplers start from the same exact draw of x_1 (common random numbers), and everything is seeded,
so a run is reproducible. A sample of the same size drawn directly from the data gives the sampling
noise floor of every metric (a KS distance above ~1.95 / sqrt(n) happens by chance with p = 0.001).

The single-Gaussian helpers (``linear_gaussian_denoiser``, ``exact_ode_map``) serve the sampler
benchmark (``bench/samplers.py``): for N(m, sd^2) data the probability-flow ODE is solvable in closed
form, which turns the error of a deterministic sampler into an exactly measurable number.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .samplers import ODE_SAMPLERS, SAMPLERS  # the one registry; the toy's tables use these names
from .schedules import CosineSchedule, Schedule
from .testing import GaussianMixture
from .timesteps import GRIDS, make_grid


@dataclass
class SamplerConfig:
    """One sampler setting: ``steps`` steps on the named grid (Langevin runs ``n_steps`` updates at
    each of the grid's N - 1 inner levels, then denoises), or none for the adaptive solver;
    ``kwargs`` go to the sampler (``eta``, ``n_steps``, ``step_size``, ``rtol``, ...)."""

    sampler: str
    steps: int | None = None
    grid: str = "uniform"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; known: {sorted(SAMPLERS)}")
        if (self.steps is None) != (self.sampler == "adaptive"):
            raise ValueError("every sampler but 'adaptive' needs a step count; 'adaptive' takes none")
        if self.sampler != "adaptive" and self.grid not in GRIDS:
            raise ValueError(f"unknown grid {self.grid!r}; known: {GRIDS}")

    @property
    def label(self) -> str:
        """Short description of steps and grid, e.g. '25 karras' or '20 uniform x 50 ss=0.2' (Langevin)."""
        kw = self.kwargs
        if self.sampler == "adaptive":
            rtol, atol = kw.get("rtol", 1e-3), kw.get("atol", 1e-3)
            return f"rtol=atol={rtol:g}" if rtol == atol else f"rtol={rtol:g} atol={atol:g}"
        text = f"{self.steps} {self.grid}"
        if self.sampler == "langevin":  # levels x Langevin steps per level (step size / sigma^2)
            text += f" x {kw.get('n_steps', 50)}" + (f" ss={kw['step_size']:g}" if "step_size" in kw else "")
        elif self.sampler == "pc":
            text += f" + {kw.get('n_corrector', 1)} corr" + (f" snr={kw['snr']:g}" if "snr" in kw else "")
        elif self.sampler == "ddim" and kw.get("eta", 0.0) != 0.0:
            text += f" eta={kw['eta']:g}"
        return text


# The standard configurations: each sampler on a grid that suits it, with a budget at which its
# discretisation error is at most about the sampling noise of 20k samples (KS bias <~ 0.008 against the
# exact flow on the same starting noise; Langevin excepted, which stays ~2x above it at 1k NFE).
# On the cosine schedule (logsnr_min = -15, s = sigma/alpha up to ~1800) the karras and log-SNR grids
# spend many of their steps at s >> 1, where the denoiser barely changes; hence the step counts.
# bench/samplers.py sweeps error versus NFE around these.
STANDARD_CONFIGS: tuple[SamplerConfig, ...] = (
    SamplerConfig("ddpm", 1000, "uniform"),
    SamplerConfig("ddim", 100, "uniform"),
    SamplerConfig("euler", 200, "logsnr"),
    SamplerConfig("heun", 50, "karras"),
    SamplerConfig("dpmpp_2m", 50, "logsnr"),
    SamplerConfig("langevin", 20, "uniform", {"n_steps": 50, "step_size": 0.2}),
    SamplerConfig("pc", 200, "uniform", {"n_corrector": 1}),
    SamplerConfig("adaptive", None, kwargs={"rtol": 1e-3, "atol": 1e-3}),
)


def toy_mixture(dim: int = 1) -> GaussianMixture:
    """The toy data: 0.3 N(-2 e1, 0.5^2 I) + 0.7 N(+2 e1, 0.5^2 I) in ``dim`` dimensions."""
    if dim < 1:
        raise ValueError("dim must be >= 1")
    lo, hi = [-2.0] + [0.0] * (dim - 1), [2.0] + [0.0] * (dim - 1)
    return GaussianMixture([0.3, 0.7], [lo, hi], [0.5, 0.5])


# --------------------------------------------------------------------------------------------------
# Running a sampler


class CountingDenoiser:
    """Wraps a denoiser and counts its calls (NFE)."""

    def __init__(self, D: Callable[..., Tensor]):
        self.D, self.nfe = D, 0

    def __call__(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        self.nfe += 1
        return self.D(x, t, **cond)


@dataclass
class SampleRun:
    x: Tensor
    nfe: int
    steps: int
    wall_s: float

    @property
    def ms_per_step(self) -> float:
        return 1e3 * self.wall_s / max(self.steps, 1)

    @property
    def ms_per_nfe(self) -> float:
        return 1e3 * self.wall_s / max(self.nfe, 1)


def _progress_bar(progress: bool, **kwargs):
    from tqdm.auto import tqdm

    # disable=None: bars only on a terminal, never in logs or captured test output
    return tqdm(disable=None if progress else True, dynamic_ncols=True, **kwargs)


def progress_iter(items: Sequence[Any], desc: str, progress: bool = True) -> Iterator[Any]:
    """Iterate with a progress bar (only on a terminal, and only if ``progress``)."""
    with _progress_bar(progress, total=len(items), desc=desc, leave=False) as bar:
        for item in items:
            yield item
            bar.update()


def expected_steps(cfg: SamplerConfig) -> int | None:
    """Number of callback calls the sampler will make (None: decided at run time)."""
    return None if cfg.sampler == "adaptive" else cfg.steps


def run_sampler(cfg: SamplerConfig, D: Callable[..., Tensor], x_T: Tensor, schedule: Schedule, *,
                generator: torch.Generator | None = None, progress: bool = False,
                count_steps: bool = True) -> SampleRun:
    """Run one configured sampler from x_T, counting denoiser calls and steps, timing the run.

    Steps are counted with the sampler's callback; ``count_steps=False`` passes none (for timing:
    the adaptive solver's callback costs an extra time inversion per step) and reports the planned
    step count, 0 for the adaptive solver."""
    counter = CountingDenoiser(D)
    steps = 0
    with _progress_bar(progress and count_steps, total=expected_steps(cfg),
                       desc=f"{cfg.sampler} {cfg.label}", leave=False, unit="step") as bar:

        def count(_info: dict[str, Any]) -> None:
            nonlocal steps
            steps += 1
            bar.update()

        callback = count if count_steps else None
        if not count_steps:
            steps = expected_steps(cfg) or 0
        fn = SAMPLERS[cfg.sampler]
        t0 = time.perf_counter()
        if cfg.sampler == "adaptive":
            x = fn(counter, x_T, schedule, callback=callback, **cfg.kwargs)
        else:
            grid = make_grid(cfg.grid, schedule, cfg.steps)
            x = fn(counter, x_T, grid, schedule, generator=generator, callback=callback, **cfg.kwargs)
        wall = time.perf_counter() - t0
    return SampleRun(x, counter.nfe, steps, wall)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------------------------------
# Metrics


def ks_distance(mix: GaussianMixture, x: Tensor) -> float:
    """Kolmogorov-Smirnov distance sup_x |F_emp(x) - F(x)| of the first coordinate of x (n, d)."""
    xs = torch.sort(x.reshape(x.shape[0], -1)[:, 0].to(torch.float64)).values
    n = xs.numel()
    cdf = mix.cdf_1d(xs)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())


def ks_critical(n: int, p: float = 1e-3) -> float:
    """Asymptotic KS critical value: P(sqrt(n) D > c) ~= p, c = sqrt(-log(p / 2) / 2) (1.95 at 1e-3)."""
    return math.sqrt(-math.log(p / 2) / 2) / math.sqrt(n)


def _worst(v: Tensor) -> float:
    """The entry of largest magnitude, with its sign."""
    return float(v.flatten()[v.abs().argmax()])


def sample_metrics(mix: GaussianMixture, x: Tensor) -> dict[str, float]:
    """KS distance, mean / variance error and weight of the x[0] > 0 mode of samples x (n, d)."""
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    mode_target = 1 - float(mix.cdf_1d(torch.zeros((), dtype=torch.float64)))
    mode_weight = float((x[:, 0] > 0).double().mean())
    return {
        "ks": ks_distance(mix, x),
        "mean_err": _worst(x.mean(0) - mix.mean()),
        "var_err": _worst(x.var(0) - mix.var()),
        "mode_weight": mode_weight,
        "mode_target": mode_target,
        "mode_err": mode_weight - mode_target,
    }


# --------------------------------------------------------------------------------------------------
# Single Gaussian: the probability-flow ODE in closed form


def linear_gaussian_denoiser(schedule: Schedule, mean: float, std: float) -> Callable[..., Tensor]:
    """Exact denoiser of N(mean, std^2 I) data, computed in the input's dtype (cheap: for timing)."""

    def D(x_t: Tensor, t: Tensor | float, **_) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).expand(x_t.shape[0])
        alpha, sigma = schedule.alpha_sigma(t)
        gain = alpha * std**2 / (alpha**2 * std**2 + sigma**2)
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        a, k = alpha.to(x_t.dtype).reshape(shape), gain.to(x_t.dtype).reshape(shape)
        return mean + k * (x_t - a * mean)

    return D


def exact_ode_map(schedule: Schedule, x_T: Tensor, mean: float, std: float, t_max: float = 1.0) -> Tensor:
    """Where the probability-flow ODE carries x_T (at t_max) at t = 0 for N(mean, std^2) data.

    In y = x / alpha and s = sigma / alpha the ODE is dy/ds = (y - D) / s with
    D = m + sd^2 / (sd^2 + s^2) (y - m), solved by y(s) = m + (y_T - m) sqrt(sd^2 + s^2) / sqrt(sd^2 + s_T^2).
    """
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(t_max, dtype=torch.float64)))
    y_T, s_T = x_T.to(torch.float64) / alpha, sigma / alpha
    return mean + (y_T - mean) * (std / math.sqrt(std**2 + s_T**2))


def rms(a: Tensor, b: Tensor) -> float:
    return float((a.to(torch.float64) - b.to(torch.float64)).pow(2).mean().sqrt())


def ode_map_error(cfg: SamplerConfig, schedule: Schedule, n: int, seed: int = 0, mean: float = 1.0,
                  std: float = 0.5, dim: int = 1) -> dict[str, Any]:
    """Deterministic error of an ODE sampler: RMS distance between its output and the exact flow map
    of the same x_1 (n exact draws) for N(mean, std^2 I) data, with that data's exact denoiser."""
    if cfg.sampler not in ODE_SAMPLERS:
        raise ValueError(f"{cfg.sampler} is stochastic: it has no deterministic map to compare")
    gauss = GaussianMixture.gaussian([mean] * dim, std)
    x_T = gauss.prior_sample(schedule, n, generator=_seeded(seed, 0))
    run = run_sampler(cfg, gauss.denoiser(schedule), x_T, schedule)
    return {"nfe": run.nfe, "ode_rms": rms(run.x, exact_ode_map(schedule, x_T, mean, std))}


# --------------------------------------------------------------------------------------------------
# The toy run


def _seeded(seed: int, stream: int) -> torch.Generator:
    """Independent generator streams from one seed: 0 = x_1 draw, 1 = sampler noise, 2 = data floor."""
    return torch.Generator().manual_seed(seed * 1000 + stream)


def evaluate(cfg: SamplerConfig, mix: GaussianMixture, schedule: Schedule, x_T: Tensor, seed: int,
             progress: bool = False) -> dict[str, Any]:
    """Run ``cfg`` from x_T with the mixture's exact denoiser; one result row (metrics + cost)."""
    run = run_sampler(cfg, mix.denoiser(schedule), x_T, schedule, generator=_seeded(seed, 1),
                      progress=progress)
    if not torch.isfinite(run.x).all():
        raise FloatingPointError(f"{cfg.sampler} {cfg.label}: non-finite samples")
    return {
        "sampler": cfg.sampler,
        "config": cfg.label,
        "steps": run.steps,
        "nfe": run.nfe,
        **sample_metrics(mix, run.x),
        "wall_s": run.wall_s,
        "ms_per_step": run.ms_per_step,
        "ms_per_nfe": run.ms_per_nfe,
    }


def data_floor(mix: GaussianMixture, n: int, seed: int) -> dict[str, Any]:
    """The same metrics for n samples drawn directly from the data: the sampling-noise floor."""
    x, _ = mix.sample(n, _seeded(seed, 2))
    return {"sampler": "data", "config": "exact draw", "steps": 0, "nfe": 0, **sample_metrics(mix, x),
            "wall_s": None, "ms_per_step": None, "ms_per_nfe": None}


def run_toy(n: int = 20_000, seed: int = 0, progress: bool = True, *,
            configs: Sequence[SamplerConfig] = STANDARD_CONFIGS, schedule: Schedule | None = None,
            dim: int = 1, threads: int | None = 1, floor: bool = True) -> list[dict[str, Any]]:
    """Run every configuration on n samples of the toy mixture; one row per configuration, plus
    (``floor``) a last row for an equal-size exact draw of the data.

    ``threads=1`` by default: the tensors are small, so intra-op threading only adds synchronisation
    (and on a busy machine it can make every call many times slower); None keeps torch's setting.
    """
    schedule = schedule if schedule is not None else CosineSchedule()
    mix = toy_mixture(dim)
    x_T = mix.prior_sample(schedule, n, generator=_seeded(seed, 0))
    rows = []
    with torch_threads(threads), _progress_bar(progress, total=len(configs), desc="toy", unit="cfg") as bar:
        for cfg in configs:
            bar.set_postfix_str(f"{cfg.sampler} {cfg.label}")
            rows.append(evaluate(cfg, mix, schedule, x_T, seed, progress=progress))
            bar.update()
        if floor:
            rows.append(data_floor(mix, n, seed))
    return rows


# --------------------------------------------------------------------------------------------------
# Reporting

TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (key, header, format)
    ("sampler", "sampler", "<9"),
    ("config", "steps / grid", "<26"),
    ("nfe", "NFE", ">5"),
    ("ks", "KS", ">7.4f"),
    ("mean_err", "mean err", ">9.4f"),
    ("var_err", "var err", ">9.4f"),
    ("mode_weight", "mode w", ">7.4f"),
    ("ms_per_step", "ms/step", ">8.2f"),
    ("ms_per_nfe", "ms/NFE", ">7.2f"),
)


def format_table(rows: Sequence[dict[str, Any]],
                 columns: Sequence[tuple[str, str, str]] = TABLE_COLUMNS) -> str:
    """Fixed-width text table of rows under (key, header, format spec) columns; None prints as '-'."""

    def cell(value: Any, fmt: str) -> str:
        if value is None:
            return format("-", fmt[0] + fmt[1:].split(".")[0])
        return format(value, fmt)

    header = "  ".join(format(h, f[0] + f[1:].split(".")[0]) for _, h, f in columns)
    lines = [header, "-" * len(header)]
    lines += ["  ".join(cell(r.get(k), f) for k, _, f in columns) for r in rows]
    return "\n".join(lines)


def print_table(rows: Sequence[dict[str, Any]], n: int | None = None) -> None:
    """Pretty-print run_toy's rows, with the KS critical value for n samples as a footnote."""
    print(format_table(rows))
    if n:
        target = next((r["mode_target"] for r in rows if "mode_target" in r), None)
        note = f"KS of n={n} exact samples exceeds {ks_critical(n):.4f} with p = 0.001"
        if target is not None:
            note += f"; exact mode weight P(x > 0) = {target:.4f}"
        print(note)


def machine_info() -> dict[str, Any]:
    """CPU model, core count, 1-minute load average, torch version and thread count (benchmark headers)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = round(os.getloadavg()[0], 2)  # timings on a busy machine are slower and noisier
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "load": load, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
