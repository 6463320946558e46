"""Schedules, time grids, parameterizations, losses and guidance: identities and closed forms."""

import math

import pytest
import torch

from diffcore import guidance as G
from diffcore import losses as L
from diffcore import parameterization as PZ
from diffcore import samplers as P
from diffcore import schedules as S
from diffcore import timesteps as T
from diffcore.testing import GaussianMixture
from diffcore.toy import ks_distance

VP = {
    "linear": S.LinearBetaSchedule(),
    "cosine": S.CosineSchedule(),
    "sigmoid": S.SigmoidSchedule(),
    "cosine_shift3": S.CosineSchedule(shift=3.0),
    "table": S.BetaTableSchedule([1e-4, 1e-3, 1e-2, 0.1, 0.5, 0.99]),
}
ALL = {**VP, "ve": S.GeometricVESchedule(0.01, 50.0)}
TS = torch.linspace(0, 1, 1001, dtype=torch.float64)


@pytest.mark.parametrize("name", list(VP))
def test_vp_identity_and_endpoints(name):
    alpha, sigma = VP[name].alpha_sigma(TS)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha), rtol=0, atol=1e-12)
    assert float(alpha[0]) == 1.0 and float(sigma[0]) == 0.0
    assert float(alpha[-1]) < 0.1


@pytest.mark.parametrize("name", list(ALL))
def test_logsnr_strictly_decreasing_and_invertible(name):
    s = ALL[name]
    lam = s.logsnr(TS)
    assert torch.all(lam[1:] < lam[:-1])
    inner = TS[1:-1]
    torch.testing.assert_close(s.t_of_logsnr(s.logsnr(inner)), inner, rtol=0, atol=1e-9)


def test_beta_table_reproduces_cumulative_products_exactly():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    s = S.BetaTableSchedule(betas)
    k = torch.arange(1, 1001, dtype=torch.float64)
    torch.testing.assert_close(s.alpha_bar(k / 1000), torch.cumprod(1 - betas, 0), rtol=1e-12, atol=0)
    torch.testing.assert_close(s.betas(), betas)
    torch.testing.assert_close(S.LinearBetaSchedule().betas(), betas)


@pytest.mark.parametrize("name", ["cosine", "sigmoid", "linear"])
def test_resample_agrees_at_its_points_and_betas_round_trip(name):
    s = VP[name]
    r = s.resample(25)
    k = torch.arange(0, 26, dtype=torch.float64) / 25
    torch.testing.assert_close(r.alpha_bar(k), s.alpha_bar(k), rtol=1e-10, atol=1e-14)
    k50 = torch.arange(1, 51, dtype=torch.float64) / 50
    torch.testing.assert_close(torch.cumprod(1 - s.betas(50), 0), s.alpha_bar(k50),
                               rtol=1e-10, atol=1e-14)


def test_cosine_matches_improved_ddpm_formula():
    s = S.CosineSchedule(s=0.008)
    t = torch.linspace(0, 0.95, 50, dtype=torch.float64)
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    # equal up to the floor alpha_bar(1) = sigmoid(logsnr_min) ~ 3e-7 that keeps alpha(1) > 0
    torch.testing.assert_close(s.alpha_bar(t), f(t) / f(torch.zeros(1, dtype=torch.float64)), rtol=0, atol=4e-7)


@pytest.mark.parametrize("base", [S.CosineSchedule, S.SigmoidSchedule])
def test_shifted_schedule_divides_the_snr_by_the_shift_squared(base):
    """A shift s keeps the shape and divides alpha^2 / sigma^2 by s^2 at every t (Hoogeboom et al. 2023):
    a clip held at SNR r by the plain schedule sits at r / s^2 at the same t of the shifted one."""
    plain, shifted = base(), base(shift=3.0)
    t = TS[1:-1]
    a, sg = shifted.alpha_sigma(t)
    a0, s0 = plain.alpha_sigma(t)
    torch.testing.assert_close((a / sg) ** 2, (a0 / s0) ** 2 / 9.0, rtol=1e-9, atol=0)
    assert float(shifted.alpha(1.0)) < float(plain.alpha(1.0))
    assert "shift" not in plain.config()  # a config saved before the shift existed reads back the same
    assert S.schedule_from_config(shifted.config()).shift == 3.0
    with pytest.raises(ValueError, match="shift must be positive"):
        base(shift=0.0)


def test_ve_geometric_ladder():
    s = ALL["ve"]
    alpha, sigma = s.alpha_sigma(TS)
    assert torch.all(alpha == 1)
    assert math.isclose(float(sigma[0]), 0.01) and math.isclose(float(sigma[-1]), 50.0)
    ratios = sigma[1:] / sigma[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 5000 ** (1 / 1000)))


@pytest.mark.parametrize("name", list(ALL))
def test_schedule_config_round_trip(name):
    s = ALL[name]
    r = S.schedule_from_config(s.config())
    torch.testing.assert_close(r.logsnr(TS[1:]), s.logsnr(TS[1:]))


def test_schedule_bad_input():
    with pytest.raises(ValueError, match="betas"):
        S.BetaTableSchedule([0.1, 1.5])
    with pytest.raises(ValueError, match="sigma_min"):
        S.GeometricVESchedule(1.0, 0.5)
    with pytest.raises(ValueError, match="unknown schedule"):
        S.schedule_from_config({"name": "nope"})


def test_grids():
    s = S.CosineSchedule()
    g = T.karras(s, 10, rho=7.0)
    assert g[-1] == 0 and len(g) == 11 and torch.all(g[1:] < g[:-1])
    sig = torch.exp(-s.logsnr(g[:-1]) / 2)
    inv = sig ** (1 / 7)  # Karras spacing is uniform in sigma^(1/rho)
    step = torch.full((9,), float(inv[1] - inv[0]), dtype=torch.float64)
    torch.testing.assert_close(inv[1:] - inv[:-1], step, rtol=1e-6, atol=1e-8)
    g = T.logsnr_uniform(s, 8)
    d = torch.diff(s.logsnr(g[:-1]))
    torch.testing.assert_close(d, torch.full_like(d, float(d[0])), rtol=1e-6, atol=1e-8)
    ve = T.karras(ALL["ve"], 10)
    assert len(ve) == 11 and ve[-1] == 0 and torch.all(ve[1:] < ve[:-1])
    table = [1e-4, 1e-3, 1e-2, 0.1, 0.5, 0.99]
    g = T.from_betas(table, S.LinearBetaSchedule())
    torch.testing.assert_close(S.LinearBetaSchedule().logsnr(g[:-1]),
                               VP["table"].logsnr(torch.arange(6, 0, -1, dtype=torch.float64) / 6),
                               rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("kind", ["vp", "ve"])
def test_parameterization_definitions_and_round_trips(kind):
    s = VP["cosine"] if kind == "vp" else ALL["ve"]
    g = torch.Generator().manual_seed(0)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.98 + 0.01
    x0 = torch.randn(64, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(64, 5, generator=g, dtype=torch.float64)
    a, sg = s.alpha_sigma(t)
    x_t = s.add_noise(x0, t, eps)
    truth = {"x0": x0, "eps": eps, "v": a[:, None] * eps - sg[:, None] * x0, "score": -eps / sg[:, None]}
    for kind_ in PZ.PREDICTIONS:
        torch.testing.assert_close(PZ.from_x0(x0, kind_, x_t, a, sg), truth[kind_], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(PZ.to_x0(truth[kind_], kind_, x_t, a, sg), x0, rtol=1e-9, atol=1e-9)
        for other in PZ.PREDICTIONS:
            torch.testing.assert_close(PZ.convert(truth[kind_], kind_, other, x_t, a, sg), truth[other],
                                       rtol=1e-9, atol=1e-9)


def test_as_denoiser_recovers_x0_from_a_perfect_network():
    s = S.CosineSchedule()
    x0 = torch.randn(8, 3, dtype=torch.float64)
    eps = torch.randn(8, 3, dtype=torch.float64)
    t = torch.full((8,), 0.4, dtype=torch.float64)
    x_t = s.add_noise(x0, t, eps)
    a, sg = s.alpha_sigma(t)
    for kind in PZ.PREDICTIONS:
        target = PZ.from_x0(x0, kind, x_t, a, sg)
        D = PZ.as_denoiser(lambda x, c, target=target: target, s, kind, "alpha")
        torch.testing.assert_close(D(x_t, 0.4), x0)
    seen = {}
    D = PZ.as_denoiser(lambda x, c: x + 0 * seen.setdefault("c", c)[:, None], s, "x0", "alpha")
    D(x_t, t)
    torch.testing.assert_close(seen["c"], a)  # WaveGrad-style conditioning on sqrt(alpha_bar)


def test_edm_denoiser_is_exact_with_the_ideal_network():
    s = S.CosineSchedule()
    x0 = torch.randn(16, 2, dtype=torch.float64)
    t = torch.full((16,), 0.5, dtype=torch.float64)
    x_t = s.add_noise(x0, t, torch.randn(16, 2, dtype=torch.float64))
    a, sg = (float(v[0]) for v in s.alpha_sigma(t))
    sc, sd = sg / a, 0.5
    c_skip, c_out = sd**2 / (sc**2 + sd**2), sc * sd / math.sqrt(sc**2 + sd**2)
    ideal = lambda x, c: (x0 - c_skip * x_t / a) / c_out  # noqa: E731  (F's regression target)
    torch.testing.assert_close(PZ.edm_denoiser(ideal, s, sd)(x_t, t), x0)


def test_sample_t_methods():
    g = torch.Generator().manual_seed(0)
    t = L.sample_t(64, "stratified", generator=g, t_min=0.0)
    assert sorted(torch.floor(t * 64).long().tolist()) == list(range(64))  # one per stratum
    t = L.sample_t(64, "antithetic", generator=g, t_min=0.0)
    torch.testing.assert_close(t[:32] + t[32:], torch.ones(32))
    t = L.sample_t(10_000, "uniform", generator=g)
    assert float(t.min()) >= 1e-5 and float(t.max()) <= 1.0 and abs(float(t.mean()) - 0.5) < 0.02
    with pytest.raises(ValueError, match="time sampling"):
        L.sample_t(4, "sobol")


@pytest.mark.parametrize("weighting", ["snr", "min_snr", "v", "x0", "trunc_snr", "clip_snr"])
def test_weighted_loss_is_independent_of_parameterization(weighting):
    """The same x0 estimate, expressed as eps, x0, v or score, must give the same weighted L2 loss:
    the weighting is defined on the x0 error, whatever the network predicts."""
    s = S.CosineSchedule()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(32, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(32, 4, generator=g, dtype=torch.float64)
    t = torch.rand(32, generator=g, dtype=torch.float64) * 0.9 + 0.05
    estimator = lambda x_t: 0.7 * x_t + 0.1  # noqa: E731  (an arbitrary, imperfect x0 estimate)
    losses = {}
    for kind in PZ.PREDICTIONS:
        def net(x_t, c, kind=kind):
            a, sg = s.alpha_sigma(t)
            return PZ.from_x0(estimator(x_t), kind, x_t, a, sg)
        losses[kind] = L.dsm_loss(net, x0, s, prediction=kind, weighting=weighting, t=t, noise=noise,
                                  reduce=False)
    for kind in PZ.PREDICTIONS:
        torch.testing.assert_close(losses[kind], losses["x0"], rtol=1e-8, atol=1e-10)
    a, sg = s.alpha_sigma(t)
    x_t = s.add_noise(x0, t, noise)
    x0_mse = ((estimator(x_t) - x0) ** 2).mean(1)
    snr = (a / sg) ** 2
    w = {"snr": snr, "min_snr": snr.clamp(max=5.0), "v": snr + 1, "x0": torch.ones_like(snr),
         "trunc_snr": snr.clamp(min=1.0), "clip_snr": snr.clamp(min=1.0, max=5.0)}[weighting]
    torch.testing.assert_close(losses["x0"], w * x0_mse, rtol=1e-8, atol=1e-10)


def test_plain_eps_loss_and_l1_and_mask():
    s = S.LinearBetaSchedule()
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(8, 6, generator=g)
    noise = torch.randn(8, 6, generator=g)
    t = torch.rand(8, generator=g)
    net = lambda x_t, c: torch.zeros_like(x_t)  # noqa: E731
    assert torch.allclose(L.dsm_loss(net, x0, s, t=t, noise=noise), (noise**2).mean())
    assert torch.allclose(L.dsm_loss(net, x0, s, t=t, noise=noise, norm="l1"), noise.abs().mean())
    mask = torch.zeros(8, 6)
    mask[:, :3] = 1
    assert torch.allclose(L.dsm_loss(net, x0, s, t=t, noise=noise, mask=mask), (noise[:, :3] ** 2).mean())
    with pytest.raises(ValueError, match="weighting"):
        L.dsm_loss(net, x0, s, t=t, noise=noise, weighting="bogus")


def _cond_denoiser(schedule):
    """A conditional denoiser: class 0 / 1 selects a component of a two-Gaussian mixture."""
    comps = [GaussianMixture.gaussian([-2.0], 0.5), GaussianMixture.gaussian([2.0], 0.5)]
    Ds = [c.denoiser(schedule) for c in comps]

    def D(x_t, t, y):
        out = torch.stack([Ds[0](x_t, t), Ds[1](x_t, t)])  # (2, B, 1)
        return torch.where(y.bool()[:, None], out[1], out[0])

    return D


def test_cfg_scale_one_is_conditional_and_batched_equals_unbatched():
    s = S.CosineSchedule()
    D = _cond_denoiser(s)
    x = torch.randn(16, 1, dtype=torch.float64)
    t = torch.full((16,), 0.5, dtype=torch.float64)
    y1, y0 = torch.ones(16), torch.zeros(16)
    torch.testing.assert_close(G.cfg(D, 1.0, {"y": y0})(x, t, y=y1), D(x, t, y=y1))
    torch.testing.assert_close(G.cfg(D, 0.0, {"y": y0})(x, t, y=y1), D(x, t, y=y0))
    a = G.cfg(D, 3.0, {"y": y0})(x, t, y=y1)
    b = G.cfg(D, 3.0, {"y": y0}, batched=False)(x, t, y=y1)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, D(x, t, y=y0) + 3.0 * (D(x, t, y=y1) - D(x, t, y=y0)))


def test_cfg_rescale_matches_conditional_std():
    s = S.CosineSchedule()
    D = _cond_denoiser(s)
    x = torch.randn(1, 64, dtype=torch.float64)
    t = torch.full((1,), 0.3, dtype=torch.float64)
    y1, y0 = torch.ones(1), torch.zeros(1)
    full = G.cfg(D, 5.0, {"y": y0}, rescale=1.0)(x, t, y=y1)
    torch.testing.assert_close(full.std(), D(x, t, y=y1).std())
    half = G.cfg(D, 5.0, {"y": y0}, rescale=0.5)(x, t, y=y1)
    plain = G.cfg(D, 5.0, {"y": y0})(x, t, y=y1)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * plain)


def test_classifier_guidance_samples_the_class_conditional():
    """With the exact noisy classifier of a mixture and scale 1, guided sampling draws exactly from
    p(x | component): the answer is the component itself."""
    s = S.CosineSchedule()
    mix = GaussianMixture([0.8, 0.2], [[-2.0], [2.0]], [0.5, 0.5])
    D = G.classifier_grad(mix.denoiser(s), mix.class_log_prob(s, 1), s, scale=1.0)
    g = torch.Generator().manual_seed(3)
    n = 10_000
    x = P.sample_dpmpp_2m(D, mix.prior_sample(s, n, generator=g), 50, s)
    assert abs(float(x.mean()) - 2.0) < 5 * 0.5 / math.sqrt(n) + 0.01
    assert abs(float(x.std()) - 0.5) < 0.03
    assert float((x > 0).double().mean()) > 0.995
    assert ks_distance(mix.component(1), x) * math.sqrt(n) < 1.95
    unguided = P.sample_dpmpp_2m(mix.denoiser(s), mix.prior_sample(s, n, generator=g), 50, s)
    assert float((unguided > 0).double().mean()) < 0.3  # without guidance the class is the minority
