"""A1111's timestep-space samplers (DDIM, DDIM CFG++, PLMS, UniPC): A1111's timesteps and starts,
first steps against the papers' update rules written out here in VP form (float64, independent of the
module's helpers), convergence on an analytic Gaussian denoiser, what the network is called with, and
the pipeline running them (and LCM) on the right timesteps."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules import pipeline
from modules.checkpoints import build_bundle
from modules.config import Settings
from modules.devices import DevicePlan
from modules.engine import CancelToken
from modules.sampling import samplers as SM
from modules.sampling.denoiser import CFGDenoiser, DiscreteSchedule, EpsDenoiser, LCMSchedule
from modules.sampling.noise import ImageRNG, default_noise_sampler
from modules.sampling.samplers_timesteps import a1111_timesteps, timestep_sigmas
from modules.types import GenerationRequest
from tests.tiny_models import tiny_state_dict

SD = DiscreteSchedule.sd_default()
AC = SD.alphas_cumprod.double().numpy()
MU, STD = 0.3, 0.5


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def toy(x, sigma, **_):
    """A nonlinear k-diffusion denoiser D(x, sigma)."""
    s = sigma.reshape(-1, 1, 1, 1)
    return torch.tanh(x) / (1 + s ** 2) + 0.1 * s / (1 + s)


def gaussian(x, sigma, **_):
    """The exact denoiser E[x0 | x] for data ~ N(MU, STD^2)."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return (STD ** 2 * x + s ** 2 * MU) / (STD ** 2 + s ** 2)


def eps_at(x_vp, a, sigma=None, model=toy):
    """The network's ε at ᾱ = a from a denoiser: x_ve = x_vp / sqrt(a), ε = (x_ve - D(x_ve, σ)) / σ."""
    sigma = math.sqrt((1 - a) / a) if sigma is None else sigma
    x_ve = x_vp / math.sqrt(1 / (1 + sigma ** 2))
    return (x_ve - model(x_ve, torch.tensor([sigma], dtype=torch.float64))) / sigma


def table_sigmas(*ts):
    return torch.cat([SD.sigmas[list(ts)], torch.zeros(1)]).double()


NOISE = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
INIT = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 0.8


# ---- A1111's timesteps ------------------------------------------------------------------------------------

def test_a1111_timesteps_and_plans_ignore_the_schedule():
    assert a1111_timesteps(20) == list(range(1, 1000, 50))
    assert len(a1111_timesteps(30)) == 31 and a1111_timesteps(30)[-1] == 991
    assert len(a1111_timesteps(36)) == 38 and a1111_timesteps(36)[-2:] == [973, 999]  # 1000 clipped to 999
    sig = timestep_sigmas(SD, 20)
    torch.testing.assert_close(sig, torch.cat([SD.sigmas[list(range(951, 0, -50))], torch.zeros(1)]))
    for label in ("DDIM", "DDIM CFG++", "PLMS", "UniPC"):  # A1111 ignores the schedule for these
        torch.testing.assert_close(SM.sigmas_for(SM.SAMPLERS[label], "Karras", SD, 20), sig)


def test_img2img_tail_starts_at_a1111s_noising_timestep():
    info = SM.SAMPLERS["DDIM"]
    sig = SM.sigmas_for(info, None, SD, 20)
    assert float(SM.img2img_sigmas(info, sig, 20, 15)[0]) == float(SD.sigmas[751])  # T[15]
    sig = SM.sigmas_for(info, None, SD, 30)  # 31 timesteps: the k-diffusion tail would start at T[16]
    assert float(SM.img2img_sigmas(info, sig, 30, 15)[0]) == float(SD.sigmas[496])
    assert float(SM.img2img_sigmas(SM.SAMPLERS["Euler"], SM.sigmas_for(SM.SAMPLERS["Euler"], None, SD, 30), 30, 15)[0]) \
        != float(SD.sigmas[496])


# ---- first steps, written out -----------------------------------------------------------------------------

def ddim_step(x, e, a_t, a_prev, eta=0.0, z=None, direction=None):
    """Song et al. 2020 eq. 12 with σ_t(η) = η sqrt((1-ā')/(1-ā)) sqrt(1-ā/ā')."""
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
    pred_x0 = (x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
    out = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev - sigma ** 2) * (e if direction is None else direction)
    return out + sigma * z if z is not None else out


def test_ddim_first_steps_txt2img_start_from_pure_noise():
    sig = table_sigmas(951, 901, 851)
    x1 = ddim_step(NOISE, eps_at(NOISE, AC[951]), AC[951], AC[901])
    x2 = ddim_step(x1, eps_at(x1, AC[901]), AC[901], AC[851])
    close(SM.sample_ddim(toy, NOISE * sig[0], table_sigmas(951, 901)), x1)
    close(SM.sample_ddim(toy, NOISE * sig[0], sig), x2)
    # eta: fresh noise every step from the noise sampler
    zs = [torch.randn(NOISE.shape, generator=torch.Generator().manual_seed(9 + k), dtype=torch.float64) for k in range(2)]
    draws = iter(zs)
    out = SM.sample_ddim(toy, NOISE * sig[0], sig, eta=0.7, noise_sampler=lambda a, b: next(draws))
    y1 = ddim_step(NOISE, eps_at(NOISE, AC[951]), AC[951], AC[901], 0.7, zs[0])
    close(out, ddim_step(y1, eps_at(y1, AC[901]), AC[901], AC[851], 0.7, zs[1]))


def test_ddim_img2img_noises_to_the_first_timestep_and_starts_at_the_next():
    sig = table_sigmas(751, 701, 651)
    x = INIT + NOISE * sig[0]  # the pipeline's img2img start
    x_vp = INIT * math.sqrt(AC[751]) + NOISE * math.sqrt(1 - AC[751])
    expected = ddim_step(x_vp, eps_at(x_vp, AC[701]), AC[701], AC[651])
    close(SM.sample_ddim(toy, x, sig, is_img2img=True), expected)


def test_plms_first_steps():
    sig = table_sigmas(951, 901, 851)
    e0 = eps_at(NOISE, AC[951])
    e_next = eps_at(ddim_step(NOISE, e0, AC[951], AC[901]), AC[901])  # pseudo improved Euler
    x1 = ddim_step(NOISE, (e0 + e_next) / 2, AC[951], AC[901])
    e1 = eps_at(x1, AC[901])
    x2 = ddim_step(x1, (3 * e1 - e0) / 2, AC[901], AC[851])  # Adams–Bashforth 2
    model = Counter(toy)
    close(SM.sample_plms(model, NOISE * sig[0], sig), x2)
    assert model.calls == 3


def test_ddim_cfgpp_steps_with_the_negative_prompts_eps():
    def inner(x, sigma, cond=None):
        return gaussian(x, sigma) + cond.reshape(-1, 1, 1, 1) * 0.1 + 0.05 * torch.tanh(x)

    cond, uncond = torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[-1.0]], dtype=torch.float64)
    info = SM.SAMPLERS["DDIM CFG++"]
    assert info.needs_uncond and info.cfg_scale_multiplier == pytest.approx(1 / 12.5)
    model = CFGDenoiser(inner, cond, uncond, 7.0 * info.cfg_scale_multiplier, always_uncond=True)
    sig = table_sigmas(951, 901)
    e_u = eps_at(NOISE, AC[951], model=lambda x, s: inner(x, s, uncond))
    e_c = eps_at(NOISE, AC[951], model=lambda x, s: inner(x, s, cond))
    e_cfg = e_u + 0.56 * (e_c - e_u)
    close(info.fn(model, NOISE * sig[0], sig), ddim_step(NOISE, e_cfg, AC[951], AC[901], direction=e_u))
    same = CFGDenoiser(inner, cond, cond, 0.56, always_uncond=True)  # identical prompts: plain DDIM
    sig = timestep_sigmas(SD, 5)
    close(info.fn(same, NOISE * sig[0], sig), SM.sample_ddim(same, NOISE * sig[0], sig))
    with pytest.raises(ValueError, match="last_uncond"):
        info.fn(toy, NOISE, sig)


# UniPC's continuous VP table, written independently: t_n = (n+1)/1000, log α linear in t.
T_GRID = (np.arange(1000) + 1) / 1000.0


def vp(t):
    log_alpha = np.interp(t, T_GRID, 0.5 * np.log(AC))
    alpha = math.exp(log_alpha)
    std = math.sqrt(1 - alpha ** 2)
    return alpha, std, math.log(alpha / std)


def data_pred(x, t):
    """UniPC's x0 model at continuous t: ε at model time 1000 t - 1 (σ log-interpolated in the table)."""
    alpha, std, _ = vp(t)
    tau = 1000 * t - 1
    sigma = math.exp(np.interp(tau, np.arange(1000), np.log(SD.sigmas.double().numpy())))
    return (x - std * eps_at(x, None, sigma)) / alpha


def test_unipc_first_steps_bh1_order_3():
    """3 steps (order 3, lower order final): UniP-1 + UniC-1, UniP-2 + UniC-2, then UniP-1 without corrector
    (Zhao et al. 2023, Algorithms 2-3 with B(h) = h, data prediction)."""
    sig = table_sigmas(667, 334, 1)
    t = np.float32(np.linspace(1.0, 0.001, 4)).astype(np.float64)  # A1111's float32 "time_uniform" grid
    (a0, s0, l0), (a1, s1, l1), (a2, s2, l2), (a3, s3, l3) = (vp(v) for v in t)
    m0 = data_pred(NOISE, t[0])
    # step 1: order 1; B(h) = -h (A1111's hh for data prediction), rho_c = 1/2
    h1 = l1 - l0
    x_p = (s1 / s0) * NOISE - a1 * math.expm1(-h1) * m0
    m1 = data_pred(x_p, t[1])
    x1 = x_p - a1 * (-h1) * 0.5 * (m1 - m0)
    # step 2: order 2; rho_p = 1/2, rho_c solves [[1, 1], [r1, 1]] rho = b
    h2 = l2 - l1
    r1 = (l0 - l1) / h2
    d1 = (m0 - m1) / r1
    hh = -h2
    phi1 = math.expm1(hh)
    g1 = phi1 / hh - 1
    g2 = g1 / hh - 1 / 2
    b = np.array([g1 / hh, g2 * 2 / hh])
    rho = np.linalg.solve(np.array([[1.0, 1.0], [r1, 1.0]]), b)
    base = (s2 / s1) * x1 - a2 * phi1 * m1
    x_p2 = base - a2 * hh * 0.5 * d1
    m2 = data_pred(x_p2, t[2])
    x2 = base - a2 * hh * (rho[0] * d1 + rho[1] * (m2 - m1))
    # step 3: order 1, no corrector
    h3 = l3 - l2
    x3 = (s3 / s2) * x2 - a3 * math.expm1(-h3) * m2

    seen, model = {}, Counter(toy)
    out = SM.sample_unipc(model, NOISE * sig[0], sig, callback=lambda d: seen.setdefault(d["i"], d["x"]))
    close(seen[0], x1)
    close(seen[1], x2)
    close(out, x3)
    assert model.calls == 3


# ---- convergence on the Gaussian denoiser -----------------------------------------------------------------

def exact_vp(noise, a_start, a_end):
    """The probability-flow ODE from x_vp = noise at ᾱ = a_start to ᾱ = a_end, in VP form."""
    s_start, s_end = math.sqrt((1 - a_start) / a_start), math.sqrt((1 - a_end) / a_end)
    x_end = MU + (noise / math.sqrt(a_start) - MU) * math.sqrt(STD ** 2 + s_end ** 2) / math.sqrt(STD ** 2 + s_start ** 2)
    return x_end * math.sqrt(a_end)


@pytest.mark.parametrize("label,tol_100", [("DDIM", 0.04), ("PLMS", 0.005), ("UniPC", 0.015)])
def test_timestep_samplers_converge_to_the_ode_solution(label, tol_100):
    errors = []
    for n in (10, 100):
        sig = timestep_sigmas(SD, n)
        ts = a1111_timesteps(n)
        out = SM.SAMPLERS[label].fn(gaussian, NOISE * sig[0], sig)
        a_start, a_end = (AC[999], AC[0]) if label == "UniPC" else (AC[ts[-1]], AC[ts[0]])
        errors.append(float((out - exact_vp(NOISE, a_start, a_end)).abs().max()))
    assert errors[1] < tol_100 and errors[1] < errors[0] / 4, errors


def test_unipc_variants_and_skip_types():
    sig = timestep_sigmas(SD, 20)
    ref = exact_vp(NOISE, AC[999], AC[0])
    for kw, tol in (({"variant": "bh2"}, 0.06), ({"skip_type": "logSNR"}, 2e-3),
                    ({"skip_type": "time_quadratic"}, 0.06), ({"order": 2, "skip_type": "logSNR"}, 5e-3)):
        out = SM.sample_unipc(gaussian, NOISE * sig[0], sig, **kw)
        assert float((out - ref).abs().max()) < tol, kw
    with pytest.raises(ValueError, match="variant"):
        SM.sample_unipc(gaussian, NOISE, sig, variant="vary_coeff")


def test_ddim_eta_1_samples_the_data_distribution():
    """4096 samples: at t = 1 the data is N(sqrt(ā₁) MU, ā₁ STD² + 1 - ā₁)."""
    sig = timestep_sigmas(SD, 150)
    noise = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = SM.sample_ddim(gaussian, noise * sig[0], sig, eta=1.0,
                         noise_sampler=default_noise_sampler(noise, torch.Generator().manual_seed(2)))
    assert abs(float(out.mean()) - math.sqrt(AC[1]) * MU) < 0.02
    assert abs(float(out.std()) - math.sqrt(AC[1] * STD ** 2 + 1 - AC[1])) < 0.025


class Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, sigma, **kw):
        self.calls += 1
        return self.fn(x, sigma, **kw)


@pytest.mark.parametrize("steps,calls", [(20, {"DDIM": 19, "PLMS": 20, "UniPC": 20}),
                                         (30, {"DDIM": 30, "PLMS": 31, "UniPC": 31})])
def test_call_counts_and_callbacks_as_a1111(steps, calls):
    sig = timestep_sigmas(SD, steps)
    for label, n in calls.items():
        model, seen = Counter(gaussian), []
        SM.SAMPLERS[label].fn(model, NOISE * sig[0], sig, callback=seen.append)
        assert model.calls == n, label
        assert [s["i"] for s in seen] == list(range(len(seen))) and len(seen) in (n, n - 1), label
        assert set(seen[0]) >= {"x", "i", "sigma", "sigma_hat", "denoised"}


@pytest.mark.parametrize("steps", [1, 2, 7, 20, 30, 36])
@pytest.mark.parametrize("img2img", [False, True], ids=["txt2img", "img2img"])
@pytest.mark.parametrize("label", ["DDIM", "DDIM CFG++", "PLMS", "UniPC"])
def test_progress_total_is_the_number_of_callbacks_and_ends_at_100_percent(label, img2img, steps):
    """The progress bar's total (what the pipeline reports) equals the callbacks the sampler makes, and
    the last callback's step (i + 1) is that total. DDIM/PLMS make one fewer than their timesteps."""
    info = SM.SAMPLERS[label]
    sig = timestep_sigmas(SD, steps)
    if img2img:
        sig = SM.img2img_sigmas(info, sig, steps, int(0.5 * steps))
    model, seen = Counter(gaussian), []
    if info.needs_uncond:
        model = _WithUncond(model)
    start = (INIT + NOISE * sig[0]) if img2img else NOISE * sig[0]
    info.fn(model, start, sig, callback=seen.append, is_img2img=img2img)
    total = SM.progress_total(info, sig, img2img=img2img)
    assert len(seen) == total, (len(seen), total)
    if total:
        assert seen[-1]["i"] + 1 == total


class _WithUncond:
    """A denoiser exposing `last_uncond` (what DDIM CFG++ needs): here the same prediction."""

    def __init__(self, model):
        self.model, self.last_uncond = model, None

    def __call__(self, x, sigma, **kw):
        self.last_uncond = self.model(x, sigma, **kw)
        return self.last_uncond


def test_pipeline_progress_ends_at_its_total_for_ddim(bundle):
    events = []
    for kw in ({}, {"init_images": (Image.new("RGB", (64, 64), (200, 30, 30)),), "denoising_strength": 0.5}):
        events.clear()
        request = GenerationRequest(prompt="a red circle", steps=20, width=64, height=64, seed=42, sampler_name="DDIM",
                                    do_not_save=True, **kw)
        pipeline.generate(None, bundle, request, settings=Settings(), checkpoint=None, progress=events.append,
                          cancel=CancelToken())
        steps = [e for e in events if e.total_steps]
        assert steps and steps[-1].step == steps[-1].total_steps == len(steps), [(e.step, e.total_steps) for e in steps]


# ---- the network's view -----------------------------------------------------------------------------------

class Recorder:
    """apply_model for EpsDenoiser: records (x_in, t) and returns a nonlinear ε."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_in, t, cond):
        self.calls.append((x_in.clone(), t.clone()))
        return torch.tanh(x_in) * 0.5 + t.reshape(-1, 1, 1, 1) / 2000


def test_network_gets_integer_timesteps_and_a1111s_start_latent():
    rec = Recorder()
    model = EpsDenoiser(rec, SD)
    noise = NOISE.float()
    sig = timestep_sigmas(SD, 20)
    SM.sample_ddim(model, noise * sig[0], sig)
    assert [float(t[0]) for _, t in rec.calls] == [float(t) for t in range(951, 1, -50)]  # 19 calls, ending at t = 1
    close(rec.calls[0][0], noise, 1e-6)  # txt2img: the pure noise at t = 951

    rec.calls.clear()
    init = INIT.float()
    tail = SM.img2img_sigmas(SM.SAMPLERS["PLMS"], sig, 20, 15)
    SM.sample_plms(model, init + noise * tail[0], tail, is_img2img=True)
    assert [float(t[0]) for _, t in rec.calls] == [701.0, 651.0] + [float(t) for t in range(651, 0, -50)][:-1]
    close(rec.calls[0][0], init * math.sqrt(AC[751]) + noise * math.sqrt(1 - AC[751]), 1e-6)

    rec.calls.clear()
    SM.sample_unipc(model, noise * sig[0], sig)
    grid = torch.linspace(1.0, 0.001, 21)[:-1]
    torch.testing.assert_close(torch.stack([t[0] for _, t in rec.calls]), (grid - 0.001) * 1000, atol=1e-3, rtol=0)
    close(rec.calls[0][0], noise, 1e-6)


# ---- the pipeline runs them on A1111's timesteps (and LCM on its own) ------------------------------------------

PLAN = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)


@pytest.fixture(scope="module")
def bundle():
    return build_bundle(tiny_state_dict("sd1"), Path("tiny-sd1.safetensors"), PLAN)


def _generate(bundle, **kw):
    request = GenerationRequest(**{**dict(prompt="a red circle", negative_prompt="blue", steps=20, width=64, height=64,
                                          seed=42, cfg_scale=5.0, do_not_save=True), **kw})
    seen = []

    def hook(module, args, kwargs):
        seen.append((args[0].detach().clone(), args[1].detach().clone()))

    handle = bundle.unet.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        result = pipeline.generate(None, bundle, request, settings=Settings(), checkpoint=None, progress=None,
                                   cancel=CancelToken())
    finally:
        handle.remove()
    return result, seen


def test_pipeline_ddim_txt2img_img2img_and_infotext(bundle):
    result, seen = _generate(bundle, sampler_name="DDIM", eta=0.3)
    assert [float(t[0]) for _, t in seen] == [float(t) for t in range(951, 1, -50)]  # 19 calls, ending at t = 1
    noise = ImageRNG((4, 8, 8), [42]).first()
    close(seen[0][0][:1], noise, 1e-5)
    text = result.infotexts[0]
    assert "Eta DDIM: 0.3" in text and ", Eta: " not in text and "Schedule type: Automatic" in text
    assert "Palette precision: unet fp32 / text fp32 / vae fp32 / cpu" in text and "RNG: CPU" in text

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    result, seen = _generate(bundle, sampler_name="UniPC", init_images=(image,), denoising_strength=0.75)
    init = bundle.vae.encode(pipeline.pil_to_tensor([pipeline.resize_image(0, image, 64, 64)]))
    assert len(seen) == 15  # t_enc = 15 steps from T[14] = 701
    assert float(seen[0][1][0]) == pytest.approx(701.0, abs=1e-3)
    close(seen[0][0][:1], init * math.sqrt(AC[751]) + noise * math.sqrt(1 - AC[751]), 1e-5)


def test_pipeline_lcm_uses_the_lcm_timesteps(bundle):
    plan = pipeline.plan_pass(SD, "LCM", None, 4, None)
    assert isinstance(plan.table, LCMSchedule)
    _, seen = _generate(bundle, sampler_name="LCM", steps=4, cfg_scale=1.0)
    # A1111's LCM: t = 999 → 19 spaced evenly on the 50-level table, the network snapped to its timesteps
    assert [float(t[0]) for _, t in seen] == [999.0, 679.0, 339.0, 19.0]
    _, seen = _generate(bundle, sampler_name="LCM", steps=4, cfg_scale=1.0, scheduler="Karras")
    assert all(int(t[0]) % 20 == 19 for _, t in seen) and float(seen[-1][1][0]) == 19.0


def test_pipeline_hires_with_a_timestep_sampler_runs_a1111s_tail(bundle):
    # hires: 4 steps at 0.5 → an 8-step plan T = 1, 126, ..., 876; t_enc = 3: noised to T[3] = 376,
    # evaluated from T[2] = 251 (PLMS: 251, its pseudo improved Euler call at 126, then 126)
    _, seen = _generate(bundle, sampler_name="PLMS", steps=4, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=4,
                        hr_denoising_strength=0.5, hr_upscaler="Latent (nearest-exact)")
    first, hires = seen[:4], seen[4:]
    assert [float(t[0]) for _, t in first] == [751.0, 501.0, 501.0, 251.0]
    assert [float(t[0]) for _, t in hires] == [251.0, 126.0, 126.0] and hires[0][0].shape[-1] == 12


def test_infotext_fields_record_the_options_in_effect():
    sm = SM.SAMPLERS
    assert SM.infotext_fields(sm["DDIM"], {"eta": 0.0}) == {}  # A1111's default for DDIM
    assert SM.infotext_fields(sm["DDIM CFG++"], {"eta": 0.25}) == {"Eta DDIM": 0.25}
    assert SM.infotext_fields(sm["Euler a"], {"eta": 1.0}) == {}
    assert SM.infotext_fields(sm["Euler a"], {"eta": 0.5}) == {"Eta": 0.5}
    assert SM.infotext_fields(sm["DPM++ 2M SDE"], {"eta": 1.0, "s_noise": 0.9}) == {"Sigma noise": 0.9}
    assert SM.infotext_fields(sm["PLMS"], {}) == {} and SM.infotext_fields(sm["Euler"], {"eta": 0.2}) == {}
