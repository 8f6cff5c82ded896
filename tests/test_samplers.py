"""Samplers on analytic denoisers: hand-derived first steps, convergence to the exact probability-flow
ODE solution for Gaussian data, the right distribution for the stochastic ones, and the registry."""
from __future__ import annotations

import inspect
import math

import pytest
import torch

from modules.sampling import samplers as SM
from modules.sampling import schedules as S
from modules.sampling.denoiser import DiscreteSchedule
from modules.sampling.noise import BrownianTreeNoiseSampler, ImageRNG, default_noise_sampler

MU, STD = 0.3, 0.5  # data ~ N(MU, STD^2) per element


def gaussian_denoiser(x, sigma, **_):
    """The exact denoiser E[x0 | x] for Gaussian data: (STD^2 x + sigma^2 MU) / (STD^2 + sigma^2)."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return (STD ** 2 * x + s ** 2 * MU) / (STD ** 2 + s ** 2)


def exact_ode_endpoint(x_t, sigma_t):
    """Probability-flow ODE solution at sigma = 0 for Gaussian data."""
    return MU + (x_t - MU) * STD / math.sqrt(STD ** 2 + float(sigma_t) ** 2)


def karras(n, lo=0.002, hi=14.6, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return torch.cat([(hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho, torch.zeros(1, dtype=torch.float64)])


def start(n, shape=(2, 1, 4, 4), seed=0):
    sigmas = karras(n)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * sigmas[0]
    return x, sigmas


def toy(x, sigma, **_):
    """A nonlinear denoiser for first-step checks."""
    s = sigma.reshape(-1, 1, 1, 1)
    return torch.tanh(x) / (1 + s ** 2) + 0.1 * s / (1 + s)


def d_of(x, sigma):
    return (x - toy(x, torch.tensor([float(sigma)]))) / sigma


class Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, sigma, **kw):
        self.calls += 1
        return self.fn(x, sigma, **kw)


def run(label, model, x, sigmas, **kw):
    return SM.SAMPLERS[label].fn(model, x, sigmas, **kw)


# ---- hand-derived first steps -----------------------------------------------------------------------------

SIG3 = torch.tensor([8.0, 2.0, 0.5, 0.0], dtype=torch.float64)
X0 = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 8


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_first_steps_euler_heun_dpm2():
    s0, s1 = 8.0, 2.0
    close(run("Euler", toy, X0, SIG3[:2]), X0 + d_of(X0, s0) * (s1 - s0))
    x_2 = X0 + d_of(X0, s0) * (s1 - s0)
    close(run("Heun", toy, X0, torch.tensor([s0, s1, 0.0], dtype=torch.float64)[:2].clone()),
          X0 + (d_of(X0, s0) + d_of(x_2, s1)) / 2 * (s1 - s0))
    mid = math.sqrt(s0 * s1)
    x_mid = X0 + d_of(X0, s0) * (mid - s0)
    close(run("DPM2", toy, X0, SIG3[:2]), X0 + d_of(x_mid, mid) * (s1 - s0))


def test_first_steps_lms():
    t0, t1, t2 = 8.0, 2.0, 0.5
    x1 = X0 + d_of(X0, t0) * (t1 - t0)
    close(run("LMS", toy, X0, SIG3[:2]), x1)
    # order 2: integrate the line through (t1, d1), (t0, d0) from t1 to t2
    c_new = ((t2 - t0) ** 2 - (t1 - t0) ** 2) / (2 * (t1 - t0))
    c_old = (t2 - t1) ** 2 / (2 * (t0 - t1))
    close(run("LMS", toy, X0, SIG3[:3]), x1 + c_new * d_of(x1, t1) + c_old * d_of(X0, t0))


def test_first_steps_dpmpp_2m():
    s0, s1, s2 = 8.0, 2.0, 0.5
    d0 = toy(X0, torch.tensor([s0]))
    x1 = (s1 / s0) * X0 + (1 - s1 / s0) * d0
    close(run("DPM++ 2M", toy, X0, SIG3[:2]), x1)
    d1 = toy(x1, torch.tensor([s1]))
    r = math.log(s0 / s1) / math.log(s1 / s2)
    d_ext = (1 + 1 / (2 * r)) * d1 - 1 / (2 * r) * d0
    close(run("DPM++ 2M", toy, X0, SIG3[:3]), (s2 / s1) * x1 + (1 - s2 / s1) * d_ext)
    # the SDE variants at eta = 0 are the same ODE solver
    close(run("DPM++ 2M SDE", toy, X0, SIG3, eta=0.0), run("DPM++ 2M", toy, X0, SIG3))
    close(run("DPM++ 3M SDE", toy, X0, SIG3[:2], eta=0.0), x1)


def test_first_step_dpmpp_2s():
    s0, s1 = 8.0, 2.0
    mid = math.sqrt(s0 * s1)
    d0 = toy(X0, torch.tensor([s0]))
    x_2 = (mid / s0) * X0 + (1 - mid / s0) * d0
    close(run("DPM++ 2S a", toy, X0, SIG3[:2], eta=0.0), (s1 / s0) * X0 + (1 - s1 / s0) * toy(x_2, torch.tensor([mid])))


# ---- convergence to the exact ODE solution -------------------------------------------------------------

DETERMINISTIC = {
    "Euler": {}, "Heun": {}, "LMS": {}, "DPM2": {}, "DPM++ 2M": {},
    "DPM fast": {"eta": 0.0}, "DPM++ 2S a": {"eta": 0.0}, "DPM++ SDE": {"eta": 0.0}, "DPM++ 2M SDE": {"eta": 0.0},
    "DPM++ 2M SDE Heun": {"eta": 0.0}, "DPM++ 3M SDE": {"eta": 0.0}, "Euler a": {"eta": 0.0},
    "DPM2 a": {"eta": 0.0},
}
# error at 80 Karras steps (sigma 14.6 → 0.002 → 0): first-order methods ~3e-2, the rest below 5e-3
TOLERANCE_80 = {"Euler": 0.04, "Euler a": 0.04}


@pytest.mark.parametrize("label", list(DETERMINISTIC))
def test_deterministic_samplers_converge_to_the_ode_solution(label):
    errors = []
    for n in (10, 80):
        x, sigmas = start(n)
        out = run(label, gaussian_denoiser, x, sigmas, **DETERMINISTIC[label])
        errors.append(float((out - exact_ode_endpoint(x, sigmas[0])).abs().max()))
    assert errors[1] < TOLERANCE_80.get(label, 0.005), errors
    assert errors[1] < errors[0] / 4, errors  # at least first order: 8x the steps, under 1/4 the error


def test_dpm_adaptive_reaches_its_tolerance():
    x, sigmas = start(10)
    out = SM.sample_dpm_adaptive(gaussian_denoiser, x, sigmas, eta=0.0)
    assert float((out - exact_ode_endpoint(x, sigmas[0])).abs().max()) < 0.05


def test_restart_below_20_steps_is_heun():
    x, sigmas = start(12)
    close(run("Restart", gaussian_denoiser, x, sigmas), run("Heun", gaussian_denoiser, x, sigmas))


# ---- stochastic samplers: the right distribution ---------------------------------------------------------

def consistency_function(x, sigma, **_):
    """The exact PF-ODE map to sigma = 0, what an ideal LCM network computes."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return MU + (x - MU) * STD / torch.sqrt(STD ** 2 + s ** 2)


STOCHASTIC = {  # label: (steps, kwargs, model)
    "Euler a": (150, {}, gaussian_denoiser),
    "Euler": (150, {"s_churn": 1.0}, gaussian_denoiser), "Heun": (30, {"s_churn": 1.0}, gaussian_denoiser),
    "DPM2": (30, {"s_churn": 1.0}, gaussian_denoiser), "DPM2 a": (30, {}, gaussian_denoiser),
    "DPM++ 2S a": (30, {}, gaussian_denoiser), "DPM++ SDE": (30, {}, gaussian_denoiser),
    "DPM++ 2M SDE": (30, {}, gaussian_denoiser), "DPM++ 2M SDE Heun": (60, {}, gaussian_denoiser),
    "DPM++ 3M SDE": (30, {}, gaussian_denoiser), "DPM fast": (30, {}, gaussian_denoiser),
    "DPM adaptive": (30, {}, gaussian_denoiser), "Restart": (30, {}, gaussian_denoiser),
    "LCM": (8, {}, consistency_function),
}


@pytest.mark.parametrize("label", list(STOCHASTIC))
def test_stochastic_samplers_sample_the_data_distribution(label):
    """4096 samples of N(0.3, 0.5^2): mean within 0.02 (2.5 standard errors), std within 0.025."""
    steps, kwargs, model = STOCHASTIC[label]
    x, sigmas = start(steps, shape=(1, 1, 64, 64), seed=1)
    info = SM.SAMPLERS[label]
    if info.brownian_noise:
        noise = BrownianTreeNoiseSampler(x, sigmas[-2], sigmas[0], [123])
    else:
        noise = default_noise_sampler(x, torch.Generator().manual_seed(2))
    out = info.fn(model, x, sigmas, noise_sampler=noise, **kwargs)
    assert abs(float(out.mean()) - MU) < 0.02
    assert abs(float(out.std()) - STD) < 0.025


def test_seeded_noise_is_independent_of_batch_position():
    schedule = DiscreteSchedule.sd_default()
    for label in ("Euler a", "DPM++ 2M SDE"):
        info = SM.SAMPLERS[label]
        sigmas = SM.sigmas_for(info, None, schedule, 6)
        outs = []
        for seeds in ([10, 11], [11]):
            rng = ImageRNG((1, 4, 4), seeds)
            x = rng.first() * sigmas[0]
            outs.append(info.fn(toy, x, sigmas, noise_sampler=rng.noise_sampler(info, x, sigmas), **info.defaults))
        torch.testing.assert_close(outs[0][1], outs[1][0], rtol=0, atol=0)


def test_noise_is_only_demanded_when_needed():
    x, sigmas = start(5)
    with pytest.raises(ValueError, match="noise_sampler"):
        run("Euler a", gaussian_denoiser, x, sigmas)
    run("Euler", gaussian_denoiser, x, sigmas)  # no churn: no noise needed
    run("Euler a", gaussian_denoiser, x, sigmas, eta=0.0)


def test_callbacks_and_call_counts():
    x, sigmas = start(6)
    for label, calls in (("Euler", 6), ("Heun", 11), ("DPM++ 2M", 6), ("LMS", 6)):
        model, seen = Counter(gaussian_denoiser), []
        run(label, model, x, sigmas, callback=seen.append)
        assert model.calls == calls, label
        assert [s["i"] for s in seen] == list(range(6)), label
        assert set(seen[0]) >= {"x", "i", "sigma", "sigma_hat", "denoised"}


# ---- registry --------------------------------------------------------------------------------------------

def test_labels_order_and_signatures():
    assert list(SM.SAMPLERS) == [
        "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a", "Euler",
        "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC",
        "LCM"]
    for info in SM.SAMPLERS.values():
        params = inspect.signature(info.fn).parameters
        assert {"extra_args", "callback", "disable", "noise_sampler"} <= set(params), info.label
        assert all(opt in params for opt in info.options if opt != "s_churn") and all(k in params for k in info.defaults)


def test_a1111_defaults():
    sm = SM.SAMPLERS
    assert sm["DPM++ 2M"].default_scheduler == "Karras"
    assert sm["DPM++ 2M SDE"].default_scheduler == "Exponential" and sm["DPM++ 2M SDE"].brownian_noise
    assert sm["DPM++ 3M SDE"].discard_next_to_last_sigma and sm["DPM2"].discard_next_to_last_sigma
    assert sm["Euler a"].default_scheduler is None and sm["Euler a"].uses_ensd and sm["Euler a"].stochastic
    assert sm["Euler a"].options == ("eta",) and sm["Euler"].options == ("s_churn", "s_noise")
    assert sm["DDIM"].defaults["eta"] == 0.0 and sm["Heun"].second_order and not sm["Euler"].stochastic
    timestep_samplers = [label for label, info in sm.items() if info.timesteps]
    assert timestep_samplers == ["DDIM", "DDIM CFG++", "PLMS", "UniPC"]
    assert sm["DDIM"].options == ("eta",) and not sm["DDIM"].stochastic and sm["LCM"].table is not None


@pytest.mark.parametrize("name,label,schedule", [
    ("Euler a", "Euler a", None), ("euler A", "Euler a", None), ("k_euler_a", "Euler a", None),
    ("K_DPMPP_2M", "DPM++ 2M", None), ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
    ("dpm++ 2m sde karras", "DPM++ 2M SDE", "Karras"), ("DPM++ 2M SDE Heun Exponential", "DPM++ 2M SDE Heun", "Exponential"),
    ("k_dpmpp_2m_ka", "DPM++ 2M", "Karras"), ("k_dpmpp_3m_sde_exp", "DPM++ 3M SDE", "Exponential"),
    ("DDIM", "DDIM", None), ("DPM2 a Karras", "DPM2 a", "Karras"), ("Euler SGM Uniform", "Euler", "SGM Uniform"),
    ("LCM", "LCM", None), ("UniPC Align Your Steps", "UniPC", "Align Your Steps"),
])
def test_resolve_sampler_name(name, label, schedule):
    info, fused = SM.resolve_sampler_name(name)
    assert (info.label, fused) == (label, schedule)


def test_unknown_sampler_names_teach():
    with pytest.raises(ValueError) as err:
        SM.resolve_sampler_name("Euler b")
    assert "'Euler b'" in str(err.value) and "Did you mean" in str(err.value) and "'Euler a'" in str(err.value)
    with pytest.raises(ValueError, match="DPM\\+\\+ 2M"):
        SM.resolve_sampler_name("DPM++ 2M Karas")
    with pytest.raises(ValueError, match="non-empty"):
        SM.resolve_sampler_name("")


def test_sigmas_for():
    schedule = DiscreteSchedule.sd_default()
    euler = SM.SAMPLERS["Euler"]
    torch.testing.assert_close(SM.sigmas_for(euler, "Automatic", schedule, 10), S.uniform(schedule, 10))
    torch.testing.assert_close(SM.sigmas_for(euler, "karras", schedule, 10), S.karras(schedule, 10))
    dpm2 = SM.SAMPLERS["DPM2"]
    sig = SM.sigmas_for(dpm2, None, schedule, 10)
    full = S.karras(schedule, 11)
    assert len(sig) == 11
    torch.testing.assert_close(sig, torch.cat([full[:-2], full[-1:]]))
    assert SM.resolve_scheduler(SM.SAMPLERS["DPM++ 2M"], "Automatic") == "Karras"
    assert SM.resolve_scheduler(euler, None) == "Automatic"
    torch.testing.assert_close(SM.sigmas_for(SM.SAMPLERS["LCM"], None, schedule, 4), S.lcm(schedule, 4))
