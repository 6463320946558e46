"""Cross-check of our DDIM and DPM-Solver++(2M) against diffusers' schedulers, step by step.

Both implementations run the same model on the same noise levels from the same starting values,
and every intermediate state must agree. The model is the exact denoiser of a Gaussian mixture,
written as an eps-network of the log-SNR, so diffusers (which hands the network an integer
timestep k) and we (who hand it a continuous t) see the same function: diffusers' side looks the
noise level up as alphas_cumprod[k], ours through ``as_denoiser(..., noise_input_kind="logsnr")``.

Convention mapping (diffusers -> diffcore), for 1000 training betas ``LinearBetaSchedule()``:

* diffusers' ``alphas_cumprod[k] = prod_{i<=k} (1 - beta_i)`` sits at our ``t = (k + 1) / N``;
  ``set_alpha_to_one=True`` (DDIM's final alpha_cumprod = 1) and ``final_sigmas_type="zero"``
  (DPM-Solver's final sigma = 0) are our ``t = 0``. So a diffusers run over ``scheduler.timesteps``
  is our grid ``[(k + 1) / N for k in timesteps] + [0]``.
* ``timestep_spacing="trailing"`` with N divisible by the step count is exactly our uniform grid:
  ``sample_ddim(D, x, 50, LinearBetaSchedule())`` is DDIMScheduler(timestep_spacing="trailing")
  with 50 steps, and likewise for DPMSolverMultistepScheduler and ``sample_dpmpp_2m``.
* diffusers' DDIM ends each step at ``prev = k - N // steps`` rather than at the next entry of
  ``timesteps``; the two agree only when N is divisible by the step count (checked below). With
  "trailing"/"linspace" spacing and other step counts diffusers' DDIM is not a single grid.
* diffusers clips x0 to [-1, 1] by default (``clip_sample=True``); we clip only when asked.
* Precision: diffusers keeps ``alphas_cumprod`` (and DPM-Solver's ``sigmas``) in float32 and casts
  the state to float32 inside ``DPMSolverMultistepScheduler.step``. The tight tests replace the
  tables by float64 ones (the same numbers, computed in float64). DPM-Solver's float32 cast of the
  state in ``step`` remains and limits that comparison to ~1e-6; ``test_dpmpp_2m_update_rules_float64``
  drives the scheduler's own update methods in float64 instead and agrees to round-off.
  ``test_stock_float32_tables`` runs diffusers unmodified.
* DPM-Solver++: with ``final_sigmas_type="zero"`` the last step is always first order (as ours).
  Its "lower_order_final and len(timesteps) < 15" rule makes the last step first order (already so)
  and the second-to-last at most second order, so for solver_order=2 it changes nothing (an 8-step
  run is checked too).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler  # noqa: E402

from diffcore import timesteps  # noqa: E402
from diffcore.parameterization import as_denoiser  # noqa: E402
from diffcore.samplers import sample_ddim, sample_dpmpp_2m  # noqa: E402
from diffcore.schedules import LinearBetaSchedule  # noqa: E402
from diffcore.testing import GaussianMixture  # noqa: E402

pytestmark = [
    pytest.mark.crosscheck,
    # diffusers' DPM-Solver set_timesteps calls np.array on a torch tensor (torch/numpy 2 notice).
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"),
]

N = 1000
BETA_START, BETA_END = 1e-4, 0.02
BATCH, DIM = 64, 8
NOISE_SEED = 1234

# float64 end to end: only round-off separates the two implementations.
DDIM_TOL = dict(rtol=1e-9, atol=1e-9)
# diffusers' DPM-Solver casts the state to float32 inside every step (see module docstring); the
# mixture's posterior amplifies that rounding (~6e-8) to ~1e-6 by the end (states are O(1)).
DPM_TOL = dict(rtol=1e-5, atol=1e-5)
# Unmodified diffusers: float32 alphas_cumprod / sigmas on its side, float64 schedule on ours.
STOCK_TOL = dict(rtol=1e-4, atol=1e-4)


def _mixture() -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, DIM, generator=g, dtype=torch.float64)
    return GaussianMixture([0.5, 0.3, 0.2], means, [0.5, 0.7, 1.0])


MIX = _mixture()


def eps_net(x: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
    """Exact eps-prediction for the mixture at log-SNR ``logsnr`` (B,): nonlinear in x and in the level."""
    alpha, sigma = torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()
    x0 = MIX.x0_mean(x, alpha, sigma)
    return (x - alpha[:, None] * x0) / sigma[:, None]


def _logsnr_at_k(alphas_cumprod: torch.Tensor, k: torch.Tensor, batch: int) -> torch.Tensor:
    ab = alphas_cumprod[k].to(torch.float64)
    return (torch.log(ab) - torch.log1p(-ab)).expand(batch)


def _x_T() -> torch.Tensor:
    # diffusers' init_noise_sigma is 1: x_T is a standard normal at the first timestep.
    return torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(42), dtype=torch.float64)


def _grid(ks: list[int]) -> torch.Tensor:
    """Our time grid for diffusers' integer timesteps: k -> (k + 1) / N, then the clean end t = 0."""
    return torch.tensor([(k + 1) / N for k in ks] + [0.0], dtype=torch.float64)


def _float64_tables(sched, schedule: LinearBetaSchedule) -> None:
    """Replace diffusers' float32 alphas_cumprod by the same products in float64."""
    assert torch.allclose(sched.betas.double(), schedule.table, rtol=1e-6, atol=0)
    sched.alphas_cumprod = torch.cumprod(1 - schedule.table, 0)


def _compare(ours: list[torch.Tensor], theirs: list[torch.Tensor], tol: dict, what: str) -> None:
    """Assert that every step agrees (|a - b| <= atol + rtol |b| entrywise) and print the largest
    differences: absolute, relative to the step's largest |x| and entrywise relative (|x| >= 1e-2)."""
    assert len(ours) == len(theirs), f"{what}: {len(ours)} steps vs diffusers' {len(theirs)}"
    max_abs = max_norm = max_rel = 0.0
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.dtype == b.dtype == torch.float64
        torch.testing.assert_close(a, b, **tol, msg=lambda m, i=i: f"{what}, step {i}: {m}")
        d = (a - b).abs()
        max_abs = max(max_abs, float(d.max()))
        max_norm = max(max_norm, float(d.max() / b.abs().max()))
        big = b.abs() >= 1e-2
        max_rel = max(max_rel, float((d[big] / b.abs()[big]).max()))
    print(f"\n{what}: max abs {max_abs:.1e}, rel to max|x| {max_norm:.1e}, entrywise rel {max_rel:.1e}"
          f" ({len(ours)} steps)")


# --------------------------------------------------------------------------------------------------
# DDIM


def _ddim_scheduler(steps: int, spacing: str) -> DDIMScheduler:
    sched = DDIMScheduler(num_train_timesteps=N, beta_start=BETA_START, beta_end=BETA_END,
                          beta_schedule="linear", prediction_type="epsilon", clip_sample=False,
                          thresholding=False, set_alpha_to_one=True, steps_offset=0,
                          timestep_spacing=spacing, rescale_betas_zero_snr=False)
    return sched


def _run_ddim_pair(sched: DDIMScheduler, schedule, steps: int, eta: float, grid=None):
    sched.set_timesteps(steps)
    ks = sched.timesteps.tolist()
    # diffusers' DDIM steps from k to k - N // steps (alphas_cumprod = 1 below 0): the grid we build
    # from `timesteps` is the path it takes only if those endpoints are the next timesteps.
    stride = N // steps
    assert len(ks) == steps and ks[-1] - stride < 0
    assert all(a - b == stride for a, b in zip(ks, ks[1:], strict=False))
    grid = _grid(ks) if grid is None else grid
    x_T = _x_T()

    # diffusers. Noise: our sampler draws one randn(x.shape) from its generator per step that has
    # noise, i.e. every step but the last (to t = 0, where the DDIM variance is 0; diffusers' is 0
    # there too). Feed diffusers the same draws through `variance_noise`.
    g = torch.Generator().manual_seed(NOISE_SEED)
    x, theirs, theirs_x0 = x_T.clone(), [], []
    for k in sched.timesteps:
        eps = eps_net(x, _logsnr_at_k(sched.alphas_cumprod, k, BATCH))
        noise = None
        if eta > 0:
            last = int(k) - stride < 0
            noise = torch.zeros_like(x) if last else torch.randn(x.shape, generator=g, dtype=x.dtype)
        out = sched.step(eps, k, x, eta=eta, variance_noise=noise)
        x = out.prev_sample
        theirs.append(x)
        theirs_x0.append(out.pred_original_sample)

    # ours
    ours, ours_x0, ts = [], [], []
    D = as_denoiser(eps_net, schedule, prediction="eps", noise_input_kind="logsnr")
    final = sample_ddim(D, x_T.clone(), grid, schedule, eta=eta,
                        generator=torch.Generator().manual_seed(NOISE_SEED),
                        callback=lambda info: (ours.append(info["x"]), ours_x0.append(info["denoised"]),
                                               ts.append(info["t"])))
    assert ts == timesteps.as_grid(grid)[1:].tolist()
    assert torch.equal(final, ours[-1])
    return ours, theirs, ours_x0, theirs_x0


@pytest.mark.parametrize("steps,spacing,eta", [
    (50, "leading", 0.0),
    (20, "leading", 0.0),
    (50, "trailing", 0.0),
    (20, "trailing", 0.0),
    (50, "leading", 1.0),
    (20, "trailing", 0.5),
])
def test_ddim_matches_diffusers(steps, spacing, eta):
    schedule = LinearBetaSchedule(BETA_START, BETA_END, N)
    sched = _ddim_scheduler(steps, spacing)
    _float64_tables(sched, schedule)
    ours, theirs, ours_x0, theirs_x0 = _run_ddim_pair(sched, schedule, steps, eta)
    name = f"DDIM {steps} steps, {spacing}, eta={eta}"
    _compare(ours, theirs, DDIM_TOL, name)
    _compare(ours_x0, theirs_x0, DDIM_TOL, name + " (x0 estimates)")
    # the final sample is the denoised estimate at the last timestep
    torch.testing.assert_close(ours[-1], ours_x0[-1], rtol=0, atol=0)


@pytest.mark.parametrize("steps", [50, 20])
def test_ddim_trailing_is_our_uniform_grid(steps):
    """diffusers' "trailing" spacing is our default grid: passing the bare step count matches."""
    schedule = LinearBetaSchedule(BETA_START, BETA_END, N)
    sched = _ddim_scheduler(steps, "trailing")
    sched.set_timesteps(steps)
    torch.testing.assert_close(_grid(sched.timesteps.tolist()), timesteps.uniform(steps), rtol=0, atol=1e-15)
    _float64_tables(sched, schedule)
    ours, theirs, _, _ = _run_ddim_pair(sched, schedule, steps, 0.0, grid=steps)
    _compare(ours, theirs, DDIM_TOL, f"DDIM {steps} steps, bare step count vs trailing")


def test_crosscheck_detects_an_off_by_one_grid():
    """The comparison has teeth: mapping k -> k / N instead of (k + 1) / N fails by far more than
    the tolerance (so the tolerance, not luck, is what the other tests pass at)."""
    schedule = LinearBetaSchedule(BETA_START, BETA_END, N)
    sched = _ddim_scheduler(20, "leading")
    _float64_tables(sched, schedule)
    sched.set_timesteps(20)
    ks = sched.timesteps.tolist()
    wrong = torch.tensor([max(k, 1e-3) / N for k in ks] + [0.0], dtype=torch.float64)
    ours, theirs, _, _ = _run_ddim_pair(sched, schedule, 20, 0.0, grid=wrong)
    worst = max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True))
    assert worst > 1e3 * DDIM_TOL["atol"]


# --------------------------------------------------------------------------------------------------
# DPM-Solver++(2M)


def _dpm_scheduler(spacing: str) -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(
        num_train_timesteps=N, beta_start=BETA_START, beta_end=BETA_END, beta_schedule="linear",
        prediction_type="epsilon", thresholding=False, algorithm_type="dpmsolver++", solver_order=2,
        solver_type="midpoint", lower_order_final=True, euler_at_final=False, final_sigmas_type="zero",
        use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False, use_lu_lambdas=False,
        use_flow_sigmas=False, lambda_min_clipped=-float("inf"), variance_type=None,
        timestep_spacing=spacing, steps_offset=0, rescale_betas_zero_snr=False)


def _run_dpm_pair(sched: DPMSolverMultistepScheduler, schedule, steps: int, float64: bool, grid=None):
    if float64:
        _float64_tables(sched, schedule)
    sched.set_timesteps(steps)
    ks = sched.timesteps.tolist()
    assert len(ks) == steps
    # diffusers' sigma here is sigma/alpha = sqrt((1 - ab) / ab), taken at the integer timesteps
    # (np.interp at integer points), followed by a final 0: exactly our grid's levels.
    ac = sched.alphas_cumprod.to(torch.float64)
    sigmas = torch.cat([((1 - ac) / ac).sqrt()[sched.timesteps], torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(sched.sigmas.double(), sigmas, rtol=1e-6, atol=0)
    if float64:
        sched.sigmas = sigmas  # the same levels without the float32 rounding
    grid = _grid(ks) if grid is None else grid
    x_T = _x_T()

    x, theirs = x_T.clone(), []
    for k in sched.timesteps:
        eps = eps_net(x, _logsnr_at_k(sched.alphas_cumprod, k, BATCH))
        x = sched.step(eps, k, x).prev_sample
        theirs.append(x)

    ours, ts = [], []
    D = as_denoiser(eps_net, schedule, prediction="eps", noise_input_kind="logsnr")
    final = sample_dpmpp_2m(D, x_T.clone(), grid, schedule,
                            callback=lambda info: (ours.append(info["x"]), ts.append(info["t"])))
    assert ts == timesteps.as_grid(grid)[1:].tolist()
    assert torch.equal(final, ours[-1])
    return ours, theirs


@pytest.mark.parametrize("steps,spacing", [
    (20, "linspace"),
    (25, "linspace"),
    (20, "trailing"),
    (25, "leading"),
    (8, "linspace"),
])
def test_dpmpp_2m_matches_diffusers(steps, spacing):
    schedule = LinearBetaSchedule(BETA_START, BETA_END, N)
    ours, theirs = _run_dpm_pair(_dpm_scheduler(spacing), schedule, steps, float64=True)
    _compare(ours, theirs, DPM_TOL, f"DPM-Solver++(2M) {steps} steps, {spacing}")


@pytest.mark.parametrize("steps", [20, 25])
def test_dpmpp_2m_trailing_is_our_uniform_grid(steps):
    schedule = LinearBetaSchedule(BETA_START, BETA_END, N)
    sched = _dpm_scheduler("trailing")
    sched.set_timesteps(steps)
    torch.testing.assert_close(_grid(sched.timesteps.tolist()), timesteps.uniform(steps), rtol=0, atol=1e-15)
    ours, theirs = _run_dpm_pair(_dpm_scheduler("trailing"), schedule, steps, float64=True, grid=steps)
    _compare(ours, theirs, DPM_TOL, f"DPM-Solver++(2M) {steps} steps, bare step count vs trailing")


@pytest.mark.parametrize("steps", [20, 25])
def test_dpmpp_2m_update_rules_float64(steps):
    """The same run without ``step``'s float32 cast: drive the scheduler's own update methods in
    float64, choosing the order as ``step`` does for solver_order=2 with final_sigmas_type="zero"
    (first order on the first step and on the last, to sigma = 0; second order in between; the
    test above confirms that choice at float32 precision). Agreement is then at round-off."""
    schedule = LinearBetaSchedule(BETA_START, BETA_END, N)
    sched = _dpm_scheduler("linspace")
    ours, theirs_step = _run_dpm_pair(sched, schedule, steps, float64=True)  # float64 tables, sigmas
    x, theirs, x0_prev = _x_T(), [], None
    for i, k in enumerate(sched.timesteps):
        sched._step_index = i  # the update methods read their levels at scheduler.step_index
        eps = eps_net(x, _logsnr_at_k(sched.alphas_cumprod, k, BATCH))
        x0 = sched.convert_model_output(eps, sample=x)
        if i == 0 or i == steps - 1:
            x = sched.dpm_solver_first_order_update(x0, sample=x)
        else:
            x = sched.multistep_dpm_solver_second_order_update([x0_prev, x0], sample=x)
        x0_prev = x0
        theirs.append(x)
    _compare(theirs_step, theirs, DPM_TOL, f"diffusers step() vs its float64 update methods, {steps} steps")
    _compare(ours, theirs, DDIM_TOL, f"DPM-Solver++(2M) {steps} steps, float64 update methods")


def test_dpmpp_2m_is_not_ddim():
    """Second order matters: our DDIM on the same grid is far outside the 2M tolerance."""
    schedule = LinearBetaSchedule(BETA_START, BETA_END, N)
    sched = _dpm_scheduler("linspace")
    ours, theirs = _run_dpm_pair(sched, schedule, 20, float64=True)
    D = as_denoiser(eps_net, schedule, prediction="eps", noise_input_kind="logsnr")
    ddim = sample_ddim(D, _x_T(), _grid(sched.timesteps.tolist()), schedule)
    assert float((ddim - theirs[-1]).abs().max()) > 1e3 * DPM_TOL["atol"]


# --------------------------------------------------------------------------------------------------
# Unmodified diffusers (float32 tables) against our float64 schedule


def test_stock_float32_tables():
    schedule = LinearBetaSchedule(BETA_START, BETA_END, N)
    ours, theirs, ours_x0, theirs_x0 = _run_ddim_pair(_ddim_scheduler(50, "trailing"), schedule, 50, 0.0)
    _compare(ours, theirs, STOCK_TOL, "stock DDIM 50 steps, trailing")
    _compare(ours_x0, theirs_x0, STOCK_TOL, "stock DDIM 50 steps, trailing (x0 estimates)")
    ours, theirs = _run_dpm_pair(_dpm_scheduler("linspace"), schedule, 20, float64=False)
    _compare(ours, theirs, STOCK_TOL, "stock DPM-Solver++(2M) 20 steps, linspace")
