"""DiscreteSchedule, eps/v adapters and CFG, against formulas written out here."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modules.sampling.denoiser import (
    CFGDenoiser, CondBatch, CondMismatch, DenoiserHooks, DiscreteSchedule, EpsDenoiser, LCMSchedule, VDenoiser,
    cfg_combine, make_denoiser, to_d,
)

SCHEDULE = DiscreteSchedule.sd_default()


# ---- the noise table -------------------------------------------------------------------------------

def test_sd_table_matches_ldm_formula():
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    ac = np.cumprod(1.0 - betas)
    sigmas = np.sqrt((1 - ac) / ac)
    assert len(SCHEDULE) == 1000
    np.testing.assert_allclose(SCHEDULE.alphas_cumprod.numpy(), ac, rtol=1e-6)
    # float32 like LDM + k-diffusion: 1 - alphas_cumprod loses digits at t = 0
    np.testing.assert_allclose(SCHEDULE.sigmas.numpy(), sigmas, rtol=5e-5)
    # the familiar A1111 / k-diffusion endpoints for SD
    assert SCHEDULE.sigma_min == pytest.approx(0.0291675, abs=1e-6)
    assert SCHEDULE.sigma_max == pytest.approx(14.614642, abs=1e-5)
    assert DiscreteSchedule().sigma_max == SCHEDULE.sigma_max


def test_sigma_to_t_hits_table_entries_and_round_trips():
    t = torch.arange(1000, dtype=torch.float32)
    np.testing.assert_allclose(SCHEDULE.sigma_to_t(SCHEDULE.sigmas).numpy(), t.numpy(), atol=2e-3)
    frac = torch.tensor([0.0, 0.25, 17.5, 353.9, 998.75, 999.0])
    np.testing.assert_allclose(SCHEDULE.sigma_to_t(SCHEDULE.t_to_sigma(frac)).numpy(), frac.numpy(), atol=2e-3)
    sig = torch.tensor([0.03, 0.5, 1.0, 3.3, 14.0])
    np.testing.assert_allclose(SCHEDULE.t_to_sigma(SCHEDULE.sigma_to_t(sig)).numpy(), sig.numpy(), rtol=1e-5)


def test_sigma_to_t_is_linear_in_log_sigma():
    log_sigmas = SCHEDULE.log_sigmas.double().numpy()
    sig = np.exp(np.linspace(np.log(0.03), np.log(14.6), 37))
    expected = np.interp(np.log(sig), log_sigmas, np.arange(1000))  # independent linear interpolation
    np.testing.assert_allclose(SCHEDULE.sigma_to_t(torch.tensor(sig, dtype=torch.float32)).numpy(), expected, atol=2e-3)
    # halfway in log sigma between entries 10 and 11 is t = 10.5 (not halfway in sigma)
    mid = math.exp((log_sigmas[10] + log_sigmas[11]) / 2)
    assert float(SCHEDULE.sigma_to_t(torch.tensor(mid))) == pytest.approx(10.5, abs=1e-3)
    lin_mid = (math.exp(log_sigmas[10]) + math.exp(log_sigmas[11])) / 2
    assert float(SCHEDULE.sigma_to_t(torch.tensor(lin_mid))) != pytest.approx(10.5, abs=1e-4)


def test_sigma_to_t_clamps_outside_the_table_and_keeps_shape():
    t = SCHEDULE.sigma_to_t(torch.tensor([[0.0, 1e-4], [50.0, 1.0]]))
    assert t.shape == (2, 2)
    assert t[0, 0] == 0 and t[0, 1] == 0 and t[1, 0] == 999


def test_zero_terminal_snr_rescale():
    zs = DiscreteSchedule.sd_default(zero_terminal_snr=True)
    a, a_ref = zs.alphas_cumprod.double().sqrt(), SCHEDULE.alphas_cumprod.double().sqrt()
    assert float(a[0]) == pytest.approx(float(a_ref[0]), rel=1e-6)
    assert float(zs.alphas_cumprod[-1]) == pytest.approx(4.8973451890853435e-08, rel=1e-3)
    # an affine map of sqrt(alphas_cumprod): the ratio of differences is constant
    ratio = (a[:-2] - a[1:-1]) / (a_ref[:-2] - a_ref[1:-1])  # the last value is pinned
    assert float(ratio.std()) < 1e-3 * float(ratio.mean())
    assert zs.sigma_max > 4000


def test_lcm_schedule_snaps_to_50_timesteps():
    lcm = LCMSchedule(SCHEDULE)
    assert len(lcm) == 50
    assert float(lcm.sigmas[-1]) == pytest.approx(float(SCHEDULE.sigmas[999]))
    assert float(lcm.sigmas[0]) == pytest.approx(float(SCHEDULE.sigmas[19]))
    t = lcm.sigma_to_t(torch.tensor([float(SCHEDULE.sigmas[999]), float(SCHEDULE.sigmas[675]), 0.001]))
    assert t.tolist() == [999.0, 679.0, 19.0]
    sig = lcm.get_sigmas(4)
    positions = np.linspace(49, 0, 4)
    expected = np.exp(np.interp(positions, np.arange(50), lcm.log_sigmas.double().numpy()))
    np.testing.assert_allclose(sig[:-1].numpy(), expected, rtol=1e-5)
    assert sig[-1] == 0


# ---- eps / v adapters ----------------------------------------------------------------------------------

class Recorder:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x_in, t, cond, **kw):
        self.calls.append((x_in.clone(), t.clone(), cond, kw))
        return self.fn(x_in, t, cond)


def test_eps_denoiser_scalings_and_timesteps():
    net = Recorder(lambda x_in, t, cond: torch.sin(x_in) + 0.01 * t.view(-1, 1, 1, 1))
    den = EpsDenoiser(net, SCHEDULE)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([2.0, 0.5])
    out = den(x, sigma, cond="c", extra=1)
    x_in, t, cond, kw = net.calls[0]
    s = sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close(x_in, x / torch.sqrt(s ** 2 + 1))
    torch.testing.assert_close(t, SCHEDULE.sigma_to_t(sigma))
    assert cond == "c" and kw == {"extra": 1}
    eps = torch.sin(x_in) + 0.01 * t.view(-1, 1, 1, 1)
    torch.testing.assert_close(out, x - s * eps)
    # a scalar sigma is broadcast to the batch
    den(x, 1.5)
    assert net.calls[-1][1].shape == (2,)


def test_eps_and_v_denoisers_recover_x0_from_the_true_network_output():
    gen = torch.Generator().manual_seed(2)
    x0, n = torch.randn(3, 2, 5, 5, generator=gen), torch.randn(3, 2, 5, 5, generator=gen)
    sigma = torch.tensor([0.1, 1.0, 9.0])
    s = sigma.view(-1, 1, 1, 1)
    x = x0 + s * n
    alpha, sig_vp = 1 / torch.sqrt(1 + s ** 2), s / torch.sqrt(1 + s ** 2)

    eps_net = lambda x_in, t, cond: n  # noqa: E731
    v_net = lambda x_in, t, cond: alpha * n - sig_vp * x0  # v = alpha*eps - sigma_vp*x0 (Salimans & Ho)  # noqa: E731
    torch.testing.assert_close(EpsDenoiser(eps_net, SCHEDULE)(x, sigma), x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(VDenoiser(v_net, SCHEDULE)(x, sigma), x0, atol=1e-5, rtol=1e-5)
    assert isinstance(make_denoiser(v_net, SCHEDULE, "v"), VDenoiser)
    with pytest.raises(ValueError, match="prediction"):
        make_denoiser(v_net, SCHEDULE, "flow")


def test_to_d():
    x, d = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    torch.testing.assert_close(to_d(x, torch.tensor([2.0, 4.0]), d)[:, 0, 0, 0], torch.tensor([0.5, 0.25]))


# ---- CFG ---------------------------------------------------------------------------------------------------

class FakeInner:
    """denoised = x * 0.5 + value, where the conditioning tensor [B, 1] carries the value per row."""

    def __init__(self):
        self.batches: list[int] = []
        self.kwargs: list[dict] = []

    def __call__(self, x, sigma, cond=None, **kw):
        self.batches.append(x.shape[0])
        self.kwargs.append(kw)
        value = cond["c"] if isinstance(cond, CondBatch) else cond
        return x * 0.5 + value.reshape(-1, 1, 1, 1) + 0.1 * sigma.view(-1, 1, 1, 1)


def _x(batch=2):
    return torch.randn(batch, 1, 2, 2, generator=torch.Generator().manual_seed(3))


def test_cfg_formula_in_one_batch():
    inner = FakeInner()
    x, sigma = _x(), torch.tensor([1.0, 2.0])
    cfg = CFGDenoiser(inner, torch.tensor([[1.0]]), torch.tensor([[-2.0]]), 7.5)
    out = cfg(x, sigma)
    base = x * 0.5 + 0.1 * sigma.view(-1, 1, 1, 1)
    cond, uncond = base + 1.0, base - 2.0
    torch.testing.assert_close(out, uncond + 7.5 * (cond - uncond))
    torch.testing.assert_close(cfg.last_uncond, uncond)
    assert inner.batches == [4] and cfg.calls == 1


def test_cfg_scale_one_skips_uncond():
    inner = FakeInner()
    x = _x()
    cfg = CFGDenoiser(inner, torch.tensor([[1.0]]), torch.tensor([[-2.0]]), 1.0)
    out = cfg(x, 1.0)
    torch.testing.assert_close(out, x * 0.5 + 1.1)
    assert inner.batches == [2] and cfg.last_uncond is None
    forced = CFGDenoiser(FakeInner(), torch.tensor([[1.0]]), torch.tensor([[-2.0]]), 1.0, always_uncond=True)
    torch.testing.assert_close(forced(x, 1.0), x * 0.5 + 1.1)
    assert forced.last_uncond is not None


def test_cfg_and_composition_weights():
    inner = FakeInner()
    x = _x(3)
    terms = [(torch.tensor([[1.0]]), 0.7), (torch.tensor([[3.0], [4.0], [5.0]]), 0.4)]
    cfg = CFGDenoiser(inner, terms, torch.tensor([[0.5]]), 6.0)
    out = cfg(x, torch.tensor(2.0))
    base = x * 0.5 + 0.2
    u = base + 0.5
    c1 = base + 1.0
    c2 = base + torch.tensor([3.0, 4.0, 5.0]).view(-1, 1, 1, 1)
    torch.testing.assert_close(out, u + 0.7 * 6.0 * (c1 - u) + 0.4 * 6.0 * (c2 - u))
    assert inner.batches == [9]
    # a weight other than 1 means the negative is needed even at cfg 1
    assert not CFGDenoiser(inner, [(torch.tensor([[1.0]]), 0.5)], torch.tensor([[0.0]]), 1.0).skips_uncond


def test_cfg_separate_calls_when_not_batched_or_shapes_differ():
    inner = FakeInner()
    cfg = CFGDenoiser(inner, torch.tensor([[1.0]]), torch.tensor([[-2.0]]), 5.0, batch_cond_uncond=False)
    batched = CFGDenoiser(FakeInner(), torch.tensor([[1.0]]), torch.tensor([[-2.0]]), 5.0)
    x = _x()
    torch.testing.assert_close(cfg(x, 1.0), batched(x, 1.0))
    assert inner.batches == [2, 2]

    class TokenInner(FakeInner):
        def __call__(self, x, sigma, cond=None, **kw):
            self.batches.append(x.shape[0])
            return x * 0.5 + cond.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)

    inner = TokenInner()
    long_cond, short_uncond = torch.ones(1, 154, 8), torch.zeros(1, 77, 8)
    out = CFGDenoiser(inner, long_cond, short_uncond, 3.0)(x, 1.0)
    torch.testing.assert_close(out, x * 0.5 + 3.0)
    assert inner.batches == [2, 2]


def test_hooks_pre_model_kwargs_and_post_cfg():
    inner = FakeInner()
    seen = []

    def pre(x_in, sigma_in, cond_in):
        seen.append((x_in.shape[0], sigma_in.shape[0]))
        return {"control": "residuals"}

    def post(x, sigma, denoised):
        return denoised * 0 + sigma.view(-1, 1, 1, 1)

    cfg = CFGDenoiser(inner, torch.tensor([[1.0]]), torch.tensor([[0.0]]), 4.0,
                      hooks=DenoiserHooks(pre_model=(pre,), post_cfg=(post,)))
    out = cfg(_x(), torch.tensor([3.0, 4.0]))
    assert seen == [(4, 4)] and inner.kwargs == [{"control": "residuals"}]
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([3.0, 4.0]))


def test_cfg_around_eps_denoiser_passes_cond_batches():
    calls = []

    def apply_model(x_in, t, cond):
        calls.append((x_in.shape[0], tuple(cond["c_crossattn"].shape), tuple(cond["y"].shape)))
        return cond["c_crossattn"].mean(dim=(1, 2)).view(-1, 1, 1, 1) * torch.ones_like(x_in)

    cond = {"c_crossattn": torch.ones(1, 77, 4), "y": torch.zeros(1, 6)}
    uncond = {"c_crossattn": torch.zeros(1, 77, 4), "y": torch.zeros(1, 6)}
    model = CFGDenoiser(EpsDenoiser(apply_model, SCHEDULE), cond, uncond, 2.0)
    x = _x()
    out = model(x, 1.0)
    # eps_cond = 1, eps_uncond = 0 → D = x - sigma * (0 + 2 * (1 - 0))
    torch.testing.assert_close(out, x - 2.0)
    assert calls == [(4, (4, 77, 4), (4, 6))]


def test_cond_batch_helpers():
    a = CondBatch({"c": torch.zeros(1, 3), "y": None})
    b = CondBatch({"c": torch.ones(2, 3), "y": None})
    joined = CondBatch.cat([a.repeat_to(2), b])
    assert joined.batch_size == 4 and joined["y"] is None and set(joined) == {"c", "y"}
    assert joined.select(slice(2, 4))["c"].sum() == 6
    with pytest.raises(CondMismatch):
        CondBatch.cat([a, CondBatch({"c": torch.zeros(1, 4), "y": None})])
    with pytest.raises(CondMismatch):
        CondBatch.cat([a, CondBatch({"d": torch.zeros(1, 3)})])
    with pytest.raises(ValueError, match="batch size"):
        CondBatch({"c": torch.zeros(1, 3), "y": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="expected 1 or 3"):
        b.repeat_to(3)


def test_cfg_combine_is_a1111s_combine_denoised():
    """Image i: uncond[i] + sum over its cond rows of w * cfg * (cond_row - uncond[i]); images may have
    different numbers of AND terms (rows 0, 1 → image 0; row 2 → image 1)."""
    uncond = torch.tensor([[1.0], [2.0]])
    conds = torch.tensor([[3.0], [5.0], [4.0]])
    out = cfg_combine(uncond, conds, [0, 0, 1], [0.5, 1.0, 1.0], 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0 + 0.5 * 2 * 2 + 1.0 * 2 * 4], [2.0 + 2 * 2]]))
    torch.testing.assert_close(uncond, torch.tensor([[1.0], [2.0]]))  # inputs untouched
    with pytest.raises(ValueError, match="cond rows"):
        cfg_combine(uncond, conds, [0, 1], [1.0, 1.0], 2.0)
