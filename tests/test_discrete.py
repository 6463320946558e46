"""Masked (absorbing-state) discrete diffusion: schedules, forward process, SUBS, NELBO, samplers.

Statistical tests use fixed seeds (so they are deterministic) and tolerances derived from the
sample size: a correct implementation fails a chi-square check at p < 1e-3 with probability 1e-3
for a fresh seed, while the biases these checks guard against are many standard errors wide.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from diffcore import timesteps
from diffcore.discrete import (
    CosineMasking,
    LinearMasking,
    LinearNoiseMasking,
    LogLinearMasking,
    PolynomialMasking,
    block_times,
    factorized_entropy,
    factorized_logits_fn,
    filter_logits,
    mask_tokens,
    masked_nelbo,
    masking_from_config,
    sample_factorized,
    sample_masked,
    subs_log_probs,
)

SCHEDULES = [LogLinearMasking(), CosineMasking(), PolynomialMasking(2.0), LinearNoiseMasking(),
             LogLinearMasking(eps=0.0)]
MASK = 4  # the mask id: last column of a 5-token vocabulary, 4 real tokens


def make_pi(length: int, vocab: int = 5, mask_id: int = MASK, seed: int = 0) -> torch.Tensor:
    """Per-position token probabilities (L, V), every real token >= ~0.03, mask column 0."""
    g = torch.Generator().manual_seed(seed)
    pi = torch.rand(length, vocab, generator=g, dtype=torch.float64) ** 2 + 0.05
    pi[:, mask_id] = 0
    return pi / pi.sum(-1, keepdim=True)


def chi2_pvalue(z: torch.Tensor, pi: torch.Tensor, positions: list[int] | None = None) -> float:
    """Pooled chi-square goodness of fit of per-position token counts to pi (independent positions).

    Tokens of zero probability must never appear (checked exactly)."""
    positions = list(range(pi.shape[0])) if positions is None else positions
    stat, df = 0.0, 0
    for l in positions:
        counts = torch.bincount(z[:, l], minlength=pi.shape[1]).double()
        support = pi[l] > 0
        assert counts[~support].sum() == 0, f"position {l} sampled a zero-probability token"
        expected = pi[l, support] * z.shape[0]
        stat += float(((counts[support] - expected) ** 2 / expected).sum())
        df += int(support.sum()) - 1
    return float(stats.chi2.sf(stat, df))


def all_masked(n: int, length: int) -> torch.Tensor:
    return torch.full((n, length), MASK, dtype=torch.long)


# --------------------------------------------------------------------------------------------------
# Schedules


@pytest.mark.parametrize("sch", SCHEDULES, ids=repr)
def test_schedule_endpoints_and_monotone(sch):
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    alpha, dalpha = sch(t)
    assert alpha[0] == 1.0
    assert alpha[-1] <= 1e-3 + 1e-15
    assert torch.all(alpha[1:] < alpha[:-1])
    assert torch.all(dalpha[1:-1] < 0)
    assert torch.allclose(sch.mask_prob(t), 1 - alpha, atol=1e-15)


@pytest.mark.parametrize("sch", SCHEDULES, ids=repr)
def test_schedule_derivative_and_weight(sch):
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64).requires_grad_(True)
    alpha, dalpha = sch(t)
    (grad,) = torch.autograd.grad(alpha.sum(), t)
    assert torch.allclose(dalpha.detach(), grad, rtol=1e-10, atol=1e-12)
    h = 1e-6  # central differences: truncation error O(h^2) ~ 1e-12
    with torch.no_grad():
        fd = (sch.alpha(t + h) - sch.alpha(t - h)) / (2 * h)
    assert torch.allclose(dalpha.detach(), fd, rtol=1e-6, atol=1e-8)
    w = sch.weight(t.detach())
    assert torch.all(w >= 0)
    assert torch.allclose(w, -dalpha.detach() / (1 - alpha.detach()), rtol=1e-9)


def test_loglinear_weight_is_one_over_t_and_linear_alias():
    t = torch.tensor([1e-5, 0.1, 0.5, 1.0], dtype=torch.float64)
    sch = LogLinearMasking(eps=1e-3)
    assert torch.allclose(sch.weight(t), 1 / t, rtol=1e-12)
    assert torch.allclose(sch.alpha(t), 1 - (1 - 1e-3) * t)
    assert LinearMasking is LogLinearMasking
    assert sch.weight(torch.tensor([0.25])).dtype == torch.float32  # results keep the input dtype


@pytest.mark.parametrize("sch", SCHEDULES, ids=repr)
def test_schedule_config_roundtrip(sch):
    again = masking_from_config(sch.config())
    t = torch.rand(16, dtype=torch.float64)
    assert type(again) is type(sch) and torch.equal(again.alpha(t), sch.alpha(t))
    with pytest.raises(ValueError):
        masking_from_config({"name": "nope"})


# --------------------------------------------------------------------------------------------------
# Forward process and SUBS


def test_mask_tokens_keep_frequency_and_fixed():
    b, length = 8, 20000
    alpha = torch.linspace(0.05, 0.95, b, dtype=torch.float64)
    x0 = torch.randint(0, MASK, (b, length), generator=torch.Generator().manual_seed(0))
    fixed = torch.zeros(b, length, dtype=torch.bool)
    fixed[:, :100] = True
    z = mask_tokens(x0, alpha, MASK, generator=torch.Generator().manual_seed(1), fixed=fixed)
    assert torch.equal(z[fixed], x0[fixed])
    free = ~fixed
    assert torch.all((z == x0) | (z == MASK))
    kept = ((z == x0) & free).sum(1).double() / free.sum(1).double()
    # binomial: n = 19900 per row, SE = sqrt(a(1-a)/n) <= 0.0036; allow 5 SE
    se = (alpha * (1 - alpha) / free.sum(1).double()).sqrt()
    assert torch.all((kept - alpha).abs() < 5 * se)
    assert torch.equal(mask_tokens(x0, 1.0, MASK), x0)
    assert torch.all(mask_tokens(x0, 0.0, MASK) == MASK)


def test_subs_log_probs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 5, generator=g, requires_grad=True)
    z = torch.randint(0, 5, (3, 7), generator=g)
    z[:, 0], z[:, 1] = MASK, 2
    logp = subs_log_probs(logits, z, MASK)
    p = logp.exp()
    assert torch.all(p[..., MASK] == 0)  # the mask token is never predicted
    assert torch.allclose(p.sum(-1), torch.ones(3, 7))
    unmasked = z != MASK
    assert torch.equal(p[unmasked], torch.nn.functional.one_hot(z[unmasked], 5).float())  # carry-over
    masked = ~unmasked
    ref = torch.log_softmax(logits[..., :MASK], -1)
    assert torch.allclose(logp[masked][:, :MASK], ref[masked])
    nll = -logp.gather(-1, torch.zeros_like(z).unsqueeze(-1))[masked].sum()
    nll.backward()
    assert torch.isfinite(logits.grad).all() and torch.all(logits.grad[unmasked] == 0)
    with pytest.raises(ValueError):
        subs_log_probs(logits, z, 5)


# --------------------------------------------------------------------------------------------------
# NELBO


def test_nelbo_of_exact_denoiser_is_the_entropy_and_wrong_denoisers_pay_their_kl():
    length, n = 32, 4096
    pi = make_pi(length)
    sch = LogLinearMasking(eps=1e-3)
    x0 = sample_factorized(pi, n, torch.Generator().manual_seed(0))
    exact = masked_nelbo(factorized_logits_fn(pi), x0, sch, MASK, generator=torch.Generator().manual_seed(1),
                         reduce=False).double()
    # E_t[w (1 - alpha)] over t ~ U(t_min, 1) = (alpha(t_min) - alpha(1)) / (1 - t_min) = 1 - eps exactly here
    target = float(factorized_entropy(pi).mean()) * (1 - 1e-3)
    se = float(exact.std()) / math.sqrt(n)  # ~0.012 for these settings
    assert abs(float(exact.mean()) - target) < 4 * se

    # Wrong denoisers, with common random numbers (same seed: same t and z_t): the excess is the
    # masked positions' cross-entropy minus entropy, whose mean is (1 - eps) * mean_l KL(pi_l || q_l).
    uniform = torch.full_like(pi, 1.0 / MASK)
    uniform[:, MASK] = 0
    shuffled = pi[torch.roll(torch.arange(length), 1)]
    for q in (uniform, shuffled):
        wrong = masked_nelbo(factorized_logits_fn(q), x0, sch, MASK, reduce=False,
                             generator=torch.Generator().manual_seed(1)).double()
        excess = wrong - exact
        kl = float((pi * (torch.log(pi.clamp(min=1e-300)) - torch.log(q.clamp(min=1e-300)))).sum(-1).mean())
        assert kl > 0.02
        assert float(excess.mean()) > 0
        assert abs(float(excess.mean()) - (1 - 1e-3) * kl) < 4 * float(excess.std()) / math.sqrt(n)


def test_nelbo_with_one_time_per_block_is_still_the_entropy():
    # Block diffusion: each block of 8 positions has its own t. For an exact factorised denoiser each
    # position's term still averages to (1 - eps) H_l; a weight taken from the wrong block's time (or the
    # window's first time) would not.
    length, n = 32, 4096
    pi = make_pi(length, seed=5)
    sch = LogLinearMasking(eps=1e-3)
    x0 = sample_factorized(pi, n, torch.Generator().manual_seed(0))
    t = block_times(n, length, 8, generator=torch.Generator().manual_seed(2))
    assert t.shape == (n, length) and float(t.min()) >= 1e-3 and float(t.max()) <= 1.0
    assert torch.equal(t[:, :8], t[:, :1].expand(n, 8)) and not torch.equal(t[:, 0], t[:, 8])
    vals = masked_nelbo(factorized_logits_fn(pi), x0, sch, MASK, t=t, reduce=False,
                        generator=torch.Generator().manual_seed(1)).double()
    target = float(factorized_entropy(pi).mean()) * (1 - 1e-3)
    assert abs(float(vals.mean()) - target) < 4 * float(vals.std()) / math.sqrt(n)
    # a per-window time (B,) and the same time repeated along the window (B, L) are the same estimate
    t1 = torch.rand(n, generator=torch.Generator().manual_seed(3)) * 0.999 + 1e-3
    a = masked_nelbo(factorized_logits_fn(pi), x0, sch, MASK, t=t1, generator=torch.Generator().manual_seed(4))
    b = masked_nelbo(factorized_logits_fn(pi), x0, sch, MASK, t=t1[:, None].expand(n, length),
                     generator=torch.Generator().manual_seed(4))
    assert torch.allclose(a, b, rtol=1e-6)
    with pytest.raises(ValueError, match="one time per position"):
        masked_nelbo(factorized_logits_fn(pi), x0, sch, MASK, t=t[:, :4])


def test_nelbo_loss_mask_and_fixed_positions():
    length, n = 16, 4096
    pi = make_pi(length, seed=3)
    sch = CosineMasking()
    x0 = sample_factorized(pi, n, torch.Generator().manual_seed(0))
    loss_mask = torch.zeros(n, length, dtype=torch.bool)
    loss_mask[:, :12] = True
    x0[:, 14:] = MASK  # padding may even hold the mask id
    fixed = torch.zeros(n, length, dtype=torch.bool)
    fixed[:, :4] = True
    vals = masked_nelbo(factorized_logits_fn(pi), x0, sch, MASK, generator=torch.Generator().manual_seed(1),
                        loss_mask=loss_mask, fixed=fixed, reduce=False).double()
    h = factorized_entropy(pi)[4:12].mean()  # counted positions: in the loss mask and not fixed
    # cosine: E_t[w (1 - alpha)] = (alpha(t_min) - alpha(1)) / (1 - t_min) = 1 - eps up to O(t_min)
    assert abs(float(vals.mean()) - float(h) * (1 - 1e-3)) < 4 * float(vals.std()) / math.sqrt(n)
    with pytest.raises(ValueError, match="mask_id"):
        masked_nelbo(factorized_logits_fn(pi), x0, sch, MASK)  # mask ids at (unmasked-out) loss positions


def test_stratified_time_sampling_lowers_the_variance():
    # Cosine: E[loss | t] = (pi/2) cos(pi t / 2) (1 - eps) H varies with t, a variance stratification
    # removes. Per batch (B = 16, L = 128) the expected variance ratio is ~0.45; with R = 400
    # repetitions the log of the sample variance ratio has SE ~0.1 (more with heavy tails), so
    # 0.75 leaves a margin of several SE.
    length, b, reps = 128, 16, 400
    pi = make_pi(length, seed=1)
    den = factorized_logits_fn(pi)
    variances = {}
    for method in ("uniform", "stratified"):
        g = torch.Generator().manual_seed(7)
        vals = torch.stack([masked_nelbo(den, sample_factorized(pi, b, g), CosineMasking(), MASK,
                                         time_sampling=method, generator=g) for _ in range(reps)])
        variances[method] = float(vals.double().var())
    assert variances["stratified"] < 0.75 * variances["uniform"]


def test_nelbo_trains_a_context_free_model_to_pi():
    # The NELBO's minimiser over context-free logits theta (L, V) is log pi.
    torch.manual_seed(0)
    length = 4
    pi = make_pi(length, seed=2)
    theta = torch.zeros(length, 5, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        x0 = sample_factorized(pi, 128, g)
        loss = masked_nelbo(lambda z, t: theta.expand(z.shape[0], -1, -1), x0, LogLinearMasking(), MASK,
                            generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    q = torch.softmax(theta.detach()[:, :MASK].double(), -1)
    kl = (pi[:, :MASK] * (pi[:, :MASK] / q).log()).sum(-1)
    assert float(kl.max()) < 0.02  # vs ~0.3 at the uniform initialisation


# --------------------------------------------------------------------------------------------------
# Samplers


@pytest.mark.parametrize("steps", [1, 3, 8])
@pytest.mark.parametrize("sch", [LogLinearMasking(), CosineMasking()], ids=repr)
def test_ancestral_sampler_is_exact_for_a_factorised_distribution(steps, sch):
    # N = 4000 sequences of L = 6: expected counts per cell >= 4000 * 0.03 = 120, so the chi-square
    # approximation holds; a bias of 0.02 in one probability moves the statistic by ~+13 on 18 df.
    length, n = 6, 4000
    pi = make_pi(length)
    z = sample_masked(factorized_logits_fn(pi), all_masked(n, length), steps, sch, MASK,
                      generator=torch.Generator().manual_seed(steps))
    assert not torch.any(z == MASK)
    assert chi2_pvalue(z, pi) > 1e-3


def test_ancestral_sampler_on_an_explicit_grid_with_known_positions():
    length, n = 6, 4000
    pi = make_pi(length, seed=4)
    z_T = all_masked(n, length)
    z_T[:, 1] = 3
    z_T[: n // 2, 4] = torch.arange(n // 2) % 4  # known in half of the rows only
    grid = torch.tensor([1.0, 0.7, 0.2, 0.05, 0.0], dtype=torch.float64)
    z = sample_masked(factorized_logits_fn(pi), z_T, grid, CosineMasking(), MASK,
                      generator=torch.Generator().manual_seed(0))
    known = z_T != MASK
    assert torch.equal(z[known], z_T[known])
    assert chi2_pvalue(z, pi, positions=[0, 2, 3, 5]) > 1e-3
    assert chi2_pvalue(z[n // 2:], pi, positions=[4]) > 1e-3


def test_confidence_sampler():
    length, n = 6, 4000
    pi = make_pi(length)
    sch = LogLinearMasking()
    # One step reveals everything at once: exact, like ancestral.
    z1 = sample_masked(factorized_logits_fn(pi), all_masked(n, length), 1, sch, MASK, method="confidence",
                       generator=torch.Generator().manual_seed(0))
    assert chi2_pvalue(z1, pi) > 1e-3
    # L steps on the linear schedule: exactly one token per row and step, most confident first.
    revealed = []
    z = sample_masked(factorized_logits_fn(pi), all_masked(n, length), length, sch, MASK, method="confidence",
                      generator=torch.Generator().manual_seed(1),
                      callback=lambda info: revealed.append(info["n_masked"]))
    assert revealed == [n * (length - 1 - i) for i in range(length)]
    assert not torch.any(z == MASK)
    # The ordering favours confident tokens: each position's mode is over-represented (LLaDA's
    # remasking is mode-seeking, not an exact sampler). SE of a frequency <= 0.008 at N = 4000.
    mode = pi.argmax(-1)
    freq = (z == mode).double().mean(0)
    assert torch.all(freq > pi.max(-1).values + 0.02)  # observed excess ~0.05-0.07 over 20 seeds
    # Known positions are never changed, and never count as revealed.
    z_T = all_masked(64, length)
    z_T[:, 2] = 0
    z = sample_masked(factorized_logits_fn(pi), z_T, 3, sch, MASK, method="confidence",
                      generator=torch.Generator().manual_seed(2))
    assert torch.all(z[:, 2] == 0) and not torch.any(z == MASK)


@pytest.mark.parametrize("method", ["ancestral", "confidence"])
def test_greedy_and_filters(method):
    length, n = 6, 64
    pi = make_pi(length)
    den = factorized_logits_fn(pi)
    for kwargs in ({"temperature": 0.0}, {"top_k": 1}, {"top_p": 1e-3}):
        z = sample_masked(den, all_masked(n, length), 4, LogLinearMasking(), MASK, method=method,
                          generator=torch.Generator().manual_seed(0), **kwargs)
        assert torch.all(z == pi.argmax(-1)), kwargs


def test_temperature_and_top_k_distributions():
    length, n = 6, 4000
    pi = make_pi(length, seed=5)
    den = factorized_logits_fn(pi)
    z = sample_masked(den, all_masked(n, length), 4, LogLinearMasking(), MASK, temperature=0.5,
                      generator=torch.Generator().manual_seed(0))
    sharp = pi**2 / (pi**2).sum(-1, keepdim=True)  # softmax(log pi / 0.5)
    assert chi2_pvalue(z, sharp) > 1e-3
    z = sample_masked(den, all_masked(n, length), 4, LogLinearMasking(), MASK, top_k=2,
                      generator=torch.Generator().manual_seed(1))
    top2 = torch.zeros_like(pi).scatter(-1, pi.topk(2, -1).indices, pi.topk(2, -1).values)
    assert chi2_pvalue(z, top2 / top2.sum(-1, keepdim=True)) > 1e-3


def test_filter_logits_top_p():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    out = filter_logits(logits, top_p=0.6)  # 0.5 < 0.6 so 0.3 is needed as well; 0.15 is not
    assert torch.isfinite(out[:2]).all() and torch.isinf(out[2:]).all()
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).sum() == 1
    assert torch.equal(filter_logits(logits, top_p=1.0), logits)
    with pytest.raises(ValueError):
        filter_logits(logits, temperature=0.0)


@pytest.mark.parametrize("method", ["ancestral", "confidence"])
def test_caching_is_exact_and_saves_calls(method):
    length, n, steps = 6, 4, 64
    pi = make_pi(length)
    runs = {}
    for cache, tc in ((True, False), (False, False), (True, True)):
        den = factorized_logits_fn(pi)
        n_masked: list[int] = []
        record = lambda info, acc=n_masked: acc.append(info["n_masked"])  # noqa: E731
        z, st = sample_masked(den, all_masked(n, length), steps, LogLinearMasking(), MASK, method=method,
                              cache=cache, time_conditioned=tc, generator=torch.Generator().manual_seed(3),
                              return_stats=True, callback=record)
        assert st.nfe == den.calls and st.steps == steps
        # Steps that begin with masks left; once all are filled the network is never called again.
        busy = 1 + sum(m > 0 for m in n_masked[:-1])
        runs[cache, tc] = (z, st.nfe, busy)
    assert torch.equal(runs[True, False][0], runs[False, False][0])
    assert torch.equal(runs[True, False][0], runs[True, True][0])
    busy = runs[False, False][2]
    assert runs[False, False][1] == busy == runs[True, True][1] > n * length
    assert runs[True, False][1] <= n * length  # at most one call per step that revealed something


def test_seeds_callback_and_edge_cases():
    length = 6
    pi = make_pi(length)
    den = factorized_logits_fn(pi)
    run = lambda seed, **kw: sample_masked(den, all_masked(32, length), 8, LogLinearMasking(), MASK,  # noqa: E731
                                           generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))
    infos = []
    run(0, callback=infos.append)
    assert [i["i"] for i in infos] == list(range(8)) and infos[-1]["s"] == 0.0 and infos[0]["t"] == 1.0
    assert [i["nfe"] for i in infos] == sorted(i["nfe"] for i in infos) and infos[-1]["n_masked"] == 0
    assert infos[-1]["z"].shape == (32, length)

    full = sample_factorized(pi, 5)
    z, st = sample_masked(den, full, 8, LogLinearMasking(), MASK, return_stats=True)
    assert torch.equal(z, full) and st.nfe == 0  # nothing to fill: unchanged, no network call
    with pytest.raises(ValueError):
        sample_masked(den, all_masked(2, length), 0, LogLinearMasking(), MASK)
    with pytest.raises(ValueError):
        sample_masked(den, all_masked(2, length), timesteps.uniform(4).flip(0), LogLinearMasking(), MASK)
    with pytest.raises(ValueError):
        sample_masked(den, torch.full((2, length), 5), 4, LogLinearMasking(), 5)  # mask id >= V
    with pytest.raises(ValueError):
        sample_masked(den, all_masked(2, length), 4, LogLinearMasking(), -1)
    with pytest.raises(ValueError):
        sample_masked(den, all_masked(2, length), 4, LogLinearMasking(), MASK, method="greedy")
    with pytest.raises(ValueError):
        mask_tokens(full, 0.5, -1)


# --------------------------------------------------------------------------------------------------
# Filling part of the sequence: regions, semi-autoregressive blocks, per-row network calls


def test_region_fills_only_its_masks_and_exactly():
    length, n = 6, 4000
    pi = make_pi(length, seed=6)
    region = torch.tensor([True, False, True, True, False, False])
    z = sample_masked(factorized_logits_fn(pi), all_masked(n, length), 5, LogLinearMasking(), MASK, region=region,
                      generator=torch.Generator().manual_seed(0))
    assert torch.all(z[:, ~region] == MASK) and not torch.any(z[:, region] == MASK)
    assert chi2_pvalue(z, pi, positions=[0, 2, 3]) > 1e-3


@pytest.mark.parametrize("method", ["ancestral", "confidence"])
def test_blocks_are_decoded_left_to_right(method):
    from diffcore.discrete.samplers import sample_masked_blocks

    length, n, block = 7, 64, 3  # blocks [0, 3), [3, 6), [6, 7)
    pi = make_pi(length)
    z_T = all_masked(n, length)
    z_T[:, :3] = 1  # a prompt filling the first block: it is skipped and gets no steps
    seen = []

    def record(info):
        z, j = info["z"], info["block"]
        a = 3 + 3 * j
        seen.append((j, info["nfe"]))
        assert not torch.any(z[:, :a] == MASK)  # earlier blocks (and the prompt) are done
        assert torch.all(z[:, a + 3:] == MASK)  # later blocks are still masks

    z, st = sample_masked_blocks(factorized_logits_fn(pi), z_T, 5, LogLinearMasking(), MASK, block_size=block,
                                 method=method, callback=record, return_stats=True,
                                 generator=torch.Generator().manual_seed(0))
    assert [j for j, _ in seen] == [0, 0, 0, 1, 1]  # 5 steps over 2 blocks: 3 + 2
    assert torch.all(z[:, :3] == 1) and not torch.any(z == MASK) and st.steps == 5
    with pytest.raises(ValueError, match="one per block"):
        sample_masked_blocks(factorized_logits_fn(pi), z_T, 1, LogLinearMasking(), MASK, block_size=block)


def test_blocks_sample_a_factorised_distribution_exactly():
    from diffcore.discrete.samplers import sample_masked_blocks

    length, n = 6, 4000
    pi = make_pi(length, seed=8)
    z = sample_masked_blocks(factorized_logits_fn(pi), all_masked(n, length), 6, CosineMasking(), MASK, block_size=4,
                             generator=torch.Generator().manual_seed(0))
    assert chi2_pvalue(z, pi) > 1e-3


def test_network_sees_only_the_rows_that_need_it():
    length = 6
    pi = make_pi(length)
    den = factorized_logits_fn(pi)
    batches = []

    def fn(z, t):
        batches.append(z.shape[0])
        return den(z, t)

    z_T = all_masked(3, length)
    z_T[1] = sample_factorized(pi, 1)[0]  # row 1 is complete: it is never passed to the network
    z, st = sample_masked(fn, z_T, 40, LogLinearMasking(), MASK, return_stats=True,
                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(z[1], z_T[1]) and not torch.any(z == MASK)
    assert batches[0] == 2 and max(batches) == 2 and st.row_evals == sum(batches) and st.nfe == len(batches)
    assert st.row_evals <= 2 * length  # a row is re-evaluated only after one of its tokens was revealed
