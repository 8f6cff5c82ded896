"""k-diffusion-style samplers and the sampler registry (A1111 labels).

Every sampler is a function `sample_x(model, x, sigmas, *, extra_args=None, callback=None, disable=None,
noise_sampler=None, ...) -> x`:
- `model(x, sigma[B], **extra_args) -> denoised` (see `denoiser.py`); `x` starts at noise * sigmas[0];
- `callback` gets a dict with "x", "i", "sigma", "sigma_hat", "denoised" once per step;
- fresh noise only ever comes from `noise_sampler(sigma, sigma_next)`; a sampler that needs noise and
  got none raises a clear error (the global RNG is never used);
- `disable` is accepted for k-diffusion compatibility (there is no progress bar).
Single-step samplers live here, multistep ones in `samplers_multistep.py`, and the four A1111 runs in
timestep space (DDIM, DDIM CFG++, PLMS, UniPC) in `samplers_timesteps.py`.
`SAMPLERS` maps A1111's labels to `SamplerInfo`; `resolve_sampler_name` accepts labels, aliases and
A1111's old fused names ("DPM++ 2M Karras"); `sigmas_for` builds a sampler's sigmas the way A1111 does.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from modules.sampling import schedules as sched
from modules.sampling.denoiser import DiscreteSchedule, LCMSchedule, to_d
from modules.sampling.noise import NoiseSampler, ancestral_step, missing_noise_sampler
from modules.sampling.samplers_multistep import (
    sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_2m_sde_heun, sample_dpmpp_3m_sde, sample_lms,
)
from modules.sampling.samplers_timesteps import (
    ddim_progress_steps, sample_ddim, sample_ddim_cfgpp, sample_plms, sample_unipc, timestep_sigmas,
    unipc_progress_steps,
)

Callback = Callable[[dict], Any]
SamplerFn = Callable[..., Tensor]
INF = float("inf")


def _report(callback: Callback | None, x: Tensor, i: int, sigma: Any, sigma_hat: Any, denoised: Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _churn(x: Tensor, sigmas: Tensor, i: int, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float,
           noise_sampler: NoiseSampler) -> tuple[Tensor, Tensor]:
    """Karras et al. 2022 Algorithm 2 lines 5-7: raise the noise level to sigma_hat = sigma (1 + gamma)."""
    if s_churn <= 0:
        return x, sigmas[i]
    gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    eps = noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise  # drawn every step, as k-diffusion
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


# ---- first-order and ancestral ---------------------------------------------------------------------------

@torch.no_grad()
def sample_euler(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                 callback: Callback | None = None, disable: bool | None = None,
                 noise_sampler: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = INF, s_noise: float = 1.0) -> Tensor:
    """Euler steps on the probability-flow ODE, with optional churn (Karras et al. 2022,
    arXiv:2206.00364, Algorithm 2 with Euler steps)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or missing_noise_sampler("Euler with s_churn")
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise_sampler)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                           callback: Callback | None = None, disable: bool | None = None,
                           noise_sampler: NoiseSampler | None = None, eta: float = 1.0,
                           s_noise: float = 1.0) -> Tensor:
    """Ancestral sampling with Euler steps: step to sigma_down, add noise of std sigma_up (Ho et al. 2020,
    arXiv:2006.11239, as formulated in k-diffusion; eta as in DDIM, Song et al. 2020)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or missing_noise_sampler("Euler a")
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0 and eta:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                callback: Callback | None = None, disable: bool | None = None,
                noise_sampler: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                s_tmax: float = INF, s_noise: float = 1.0) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, arXiv:2206.00364, Algorithm 2); the last step
    (to sigma 0) is an Euler step."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or missing_noise_sampler("Heun with s_churn")
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise_sampler)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                 callback: Callback | None = None, disable: bool | None = None,
                 noise_sampler: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = INF, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver-2 style midpoint steps, midpoint at the geometric mean of sigma and sigma' (Lu et al.
    2022, arXiv:2206.00927; with Karras et al. 2022 churn, as k-diffusion's `sample_dpm_2`)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or missing_noise_sampler("DPM2 with s_churn")
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise_sampler)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            x = _dpm2_midpoint(model, x, d, sigma_hat, sigmas[i + 1], s_in, extra_args)
    return x


def _dpm2_midpoint(model, x: Tensor, d: Tensor, sigma: Tensor, sigma_to: Tensor, s_in: Tensor, extra_args: dict) -> Tensor:
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
    return x + d_2 * (sigma_to - sigma)


@torch.no_grad()
def sample_dpm_2_ancestral(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                           callback: Callback | None = None, disable: bool | None = None,
                           noise_sampler: NoiseSampler | None = None, eta: float = 1.0,
                           s_noise: float = 1.0) -> Tensor:
    """Ancestral sampling with DPM-Solver-2 midpoint steps (Lu et al. 2022, arXiv:2206.00927; k-diffusion)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or missing_noise_sampler("DPM2 a")
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            x = _dpm2_midpoint(model, x, d, sigmas[i], sigma_down, s_in, extra_args)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                              callback: Callback | None = None, disable: bool | None = None,
                              noise_sampler: NoiseSampler | None = None, eta: float = 1.0,
                              s_noise: float = 1.0) -> Tensor:
    """Ancestral sampling with DPM-Solver++(2S) steps (Lu et al. 2022, arXiv:2211.01095, Algorithm 1,
    r = 1/2), in t = -log(sigma)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or missing_noise_sampler("DPM++ 2S a")
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = -sigmas[i].log(), -sigma_down.log()
            h = t_next - t
            s = t + h / 2
            x_2 = ((-s).exp() / sigmas[i]) * x - torch.expm1(-h / 2) * denoised
            denoised_2 = model(x_2, (-s).exp() * s_in, **extra_args)
            x = (sigma_down / sigmas[i]) * x - torch.expm1(-h) * denoised_2
        if sigmas[i + 1] > 0 and eta:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                     callback: Callback | None = None, disable: bool | None = None,
                     noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0,
                     r: float = 0.5) -> Tensor:
    """DPM-Solver++ stochastic, two stages per step (Lu et al. 2022, arXiv:2211.01095; k-diffusion's
    `sample_dpmpp_sde`). Meant for a Brownian-tree noise sampler (noise depends only on the sigmas)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or missing_noise_sampler("DPM++ SDE")
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sigma_s = (-s).exp()
        # stage 1: to the intermediate time s
        sd, su = ancestral_step(sigmas[i], sigma_s, eta)
        s_ = -sd.log()
        x_2 = (sd / sigmas[i]) * x - torch.expm1(t - s_) * denoised
        if su > 0:
            x_2 = x_2 + noise_sampler(sigmas[i], sigma_s) * s_noise * su
        denoised_2 = model(x_2, sigma_s * s_in, **extra_args)
        # stage 2: the full step with the blended prediction
        sd, su = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        t_next_ = -sd.log()
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (sd / sigmas[i]) * x - torch.expm1(t - t_next_) * denoised_d
        if su > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_lcm(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
               callback: Callback | None = None, disable: bool | None = None,
               noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Latent Consistency Model multistep sampling (Luo et al. 2023, arXiv:2310.04378, Algorithm 1):
    jump to the prediction, re-noise to the next sigma with fresh noise."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or missing_noise_sampler("LCM")
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x


# ---- Restart ----------------------------------------------------------------------------------------------

@torch.no_grad()
def sample_restart(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                   callback: Callback | None = None, disable: bool | None = None,
                   noise_sampler: NoiseSampler | None = None, s_noise: float = 1.0,
                   restart_list: Mapping[float, tuple[int, int, float]] | None = None) -> Tensor:
    """Restart sampling (Xu et al. 2023, arXiv:2306.14878): Heun steps, then jump back up from sigma
    ~0.1 to ~2 with fresh noise and integrate down again. With A1111's automatic restart list (>= 20
    steps) the main schedule is rebuilt as Karras between sigmas[-2] and sigmas[0], as A1111 does.
    `restart_list` maps a sigma to (restart steps, restart times, restart max sigma)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or missing_noise_sampler("Restart")
    s_in = x.new_ones([x.shape[0]])
    steps = sigmas.shape[0] - 1
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
            sigmas = _karras(steps - restart_steps * restart_times, float(sigmas[-2]), float(sigmas[0]))
            restart_list = {0.1: (restart_steps + 1, restart_times, 2.0)}
    by_index = {int(torch.argmin((sigmas - key).abs())): value for key, value in restart_list.items()}

    step_list: list[tuple[Tensor, Tensor]] = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in by_index:
            restart_steps, restart_times, restart_max = by_index[i + 1]
            min_idx, max_idx = i + 1, int(torch.argmin((sigmas - restart_max).abs()))
            if max_idx < min_idx:
                up = _karras(restart_steps, float(sigmas[min_idx]), float(sigmas[max_idx]))[:-1]
                step_list.extend(list(zip(up[:-1], up[1:])) * restart_times)

    last = None
    for step_id, (old, new) in enumerate(step_list):
        if last is not None and last < old:
            x = x + noise_sampler(last, old) * s_noise * (old ** 2 - last ** 2) ** 0.5
        denoised = model(x, old * s_in, **extra_args)
        d = to_d(x, old, denoised)
        _report(callback, x, step_id, new, old, denoised)
        if new == 0:
            x = x + d * (new - old)
        else:
            x_2 = x + d * (new - old)
            d_2 = to_d(x_2, new, model(x_2, new * s_in, **extra_args))
            x = x + (d + d_2) / 2 * (new - old)
        last = new
    return x


def _karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1)])


# ---- DPM-Solver (fast / adaptive) --------------------------------------------------------------------------

class _DPMSolver:
    """DPM-Solver-1/2/3 single steps in t = -log(sigma) on the eps the denoiser implies (Lu et al. 2022,
    arXiv:2206.00927, Algorithms 1 and 4-5)."""

    def __init__(self, model, extra_args: dict, x: Tensor) -> None:
        self.model, self.extra_args = model, extra_args
        self.s_in = x.new_ones([x.shape[0]])

    @staticmethod
    def sigma(t: Tensor) -> Tensor:
        return (-t).exp()

    def eps(self, cache: dict, key: str, x: Tensor, t: Tensor) -> Tensor:
        if key not in cache:
            sigma = self.sigma(t)
            cache[key] = (x - self.model(x, sigma * self.s_in, **self.extra_args)) / sigma
        return cache[key]

    def step_1(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict) -> Tensor:
        h = t_next - t
        return x - self.sigma(t_next) * torch.expm1(h) * self.eps(cache, "eps", x, t)

    def step_2(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict, r1: float = 1 / 2) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * torch.expm1(r1 * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - self.sigma(t_next) * torch.expm1(h) * eps - self.sigma(t_next) / (2 * r1) * torch.expm1(h) * (eps_r1 - eps)

    def step_3(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict, r1: float = 1 / 3, r2: float = 2 / 3) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * torch.expm1(r1 * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - self.sigma(s2) * torch.expm1(r2 * h) * eps
              - self.sigma(s2) * (r2 / r1) * (torch.expm1(r2 * h) / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - self.sigma(t_next) * torch.expm1(h) * eps - self.sigma(t_next) / r2 * (torch.expm1(h) / h - 1) * (eps_r2 - eps)

    def ancestral(self, t: Tensor, t_next: Tensor, t_end: Tensor, eta: float, forward: bool = True) -> tuple[Tensor, Any]:
        """Where the deterministic part of a step ends (t_next_) and the noise std to add."""
        if not eta:
            return t_next, 0.0
        sd, _ = ancestral_step(self.sigma(t), self.sigma(t_next), eta)
        t_next_ = torch.minimum(t_end, -sd.log())
        return t_next_, (self.sigma(t_next) ** 2 - self.sigma(t_next_) ** 2) ** 0.5


def _sigma_range(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    positive = sigmas[sigmas > 0]
    if positive.numel() == 0:
        raise ValueError("DPM fast/adaptive need at least one positive sigma")
    return positive[-1], sigmas[0]


@torch.no_grad()
def sample_dpm_fast(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                    callback: Callback | None = None, disable: bool | None = None,
                    noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver-Fast (Lu et al. 2022, arXiv:2206.00927, sec. 3.4): len(sigmas) - 1 network calls spread
    over order-3 steps uniform in log sigma, from sigmas[0] to the last positive sigma (then stops, as
    k-diffusion). eta = 1 (A1111's ancestral default) adds noise after each step."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or missing_noise_sampler("DPM fast")
    nfe = len(sigmas) - 1
    sigma_min, sigma_max = _sigma_range(sigmas)
    solver = _DPMSolver(model, extra_args, x)
    t_start, t_end = -sigma_max.log(), -sigma_min.log()
    m = math.floor(nfe / 3) + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache: dict = {}
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = solver.ancestral(t, t_next, t_end, eta)
        eps = solver.eps(cache, "eps", x, t)
        _report(callback, x, i, solver.sigma(t), solver.sigma(t), x - solver.sigma(t) * eps)
        x = [solver.step_1, solver.step_2, solver.step_3][order - 1](x, t, t_next_, cache)
        if eta and su > 0:
            x = x + su * s_noise * noise_sampler(solver.sigma(t), solver.sigma(t_next))
    return x


@torch.no_grad()
def sample_dpm_adaptive(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                        callback: Callback | None = None, disable: bool | None = None,
                        noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0,
                        order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                        pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0,
                        accept_safety: float = 0.81) -> Tensor:
    """DPM-Solver-12/23 with adaptive step size and a PID controller (Lu et al. 2022, arXiv:2206.00927,
    sec. 3.5 and Appendix; k-diffusion defaults). Only sigmas[0] and the last positive sigma are used;
    the number of network calls depends on the error control. eta = 1 as A1111 passes it."""
    if order not in (2, 3):
        raise ValueError("order should be 2 or 3")
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or missing_noise_sampler("DPM adaptive")
    sigma_min, sigma_max = _sigma_range(sigmas)
    solver = _DPMSolver(model, extra_args, x)
    s, t_end = -sigma_max.log(), -sigma_min.log()
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    pid = _PID(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    x_prev, step = x, 0
    while s < t_end - 1e-5:
        cache: dict = {}
        t = torch.minimum(t_end, s + pid.h)
        t_, su = solver.ancestral(s, t, t_end, eta)
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - solver.sigma(s) * eps
        if order == 2:
            x_low = solver.step_1(x, s, t_, cache)
            x_high = solver.step_2(x, s, t_, cache)
        else:
            x_low = solver.step_2(x, s, t_, cache, r1=1 / 3)
            x_high = solver.step_3(x, s, t_, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high
            if eta and su > 0:
                x = x + su * s_noise * noise_sampler(solver.sigma(s), solver.sigma(t))
            s = t
        _report(callback, x, step, solver.sigma(s), solver.sigma(s), denoised)
        step += 1
    return x


class _PID:
    """PID step-size controller for adaptive ODE solvers (Söderlind 2003, "Digital filters in adaptive
    time-stepping"), as used by DPM-Solver adaptive."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float,
                 accept_safety: float, eps: float = 1e-8) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety, self.eps = accept_safety, eps
        self.errs: list[float] = []

    def propose_step(self, error: Tensor) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


# ---- registry ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplerInfo:
    """One entry of the sampler dropdown, with A1111's options for it.

    default_scheduler: the schedule "Automatic" means for this sampler (None: the model's own
    `automatic` schedule, Uniform — A1111 then writes no "Schedule type"). options: which request
    parameters A1111 passes to it ("eta", "s_noise", "s_churn" + s_tmin/s_tmax); defaults: A1111's
    values for them. stochastic: draws noise with those defaults. brownian_noise: wants a Brownian-tree
    noise sampler. second_order: two network calls per step (prompt-editing step counting).
    uses_ensd: affected by A1111's "Eta noise seed delta". discard_next_to_last_sigma: A1111 builds
    steps + 1 sigmas and drops the penultimate. needs_uncond / cfg_scale_multiplier: CFG++ (build the
    CFG denoiser with cfg_scale * multiplier and keep the unconditional prediction).
    timesteps: A1111 runs it in timestep space (`samplers_timesteps.py`) on its DDIM timesteps whatever
    schedule is picked, as A1111 does; it also takes `schedule=` and `is_img2img=` (see `plan_kwargs`).
    table: the noise table it samples on, made from the model's (LCM: the 50-level `LCMSchedule`, which
    also snaps the network's timesteps as A1111's LCM denoiser does)."""

    label: str
    fn: SamplerFn
    aliases: tuple[str, ...] = ()
    default_scheduler: str | None = None
    options: tuple[str, ...] = ()
    defaults: Mapping[str, float] = field(default_factory=dict)
    stochastic: bool = False
    brownian_noise: bool = False
    second_order: bool = False
    uses_ensd: bool = False
    discard_next_to_last_sigma: bool = False
    needs_uncond: bool = False
    cfg_scale_multiplier: float = 1.0
    automatic: sched.ScheduleFn = sched.uniform
    timesteps: bool = False
    table: Callable[[DiscreteSchedule], DiscreteSchedule] | None = None
    progress_steps: Callable[[Tensor, bool], int] | None = None  # callbacks on (sigmas, img2img); None: len(sigmas) - 1


_ETA = MappingProxyType({"eta": 1.0})
_ETA_DDIM = MappingProxyType({"eta": 0.0})
_CHURN = ("s_churn", "s_noise")


def _info(label: str, fn: SamplerFn, aliases: tuple[str, ...], **kw: Any) -> SamplerInfo:
    return SamplerInfo(label, fn, aliases, **kw)


# A1111 1.10's list and order (sd_samplers_kdiffusion, _timesteps, _lcm).
SAMPLERS: dict[str, SamplerInfo] = {i.label: i for i in (
    _info("DPM++ 2M", sample_dpmpp_2m, ("k_dpmpp_2m",), default_scheduler="Karras"),
    _info("DPM++ SDE", sample_dpmpp_sde, ("k_dpmpp_sde",), default_scheduler="Karras", options=("eta", "s_noise"),
          defaults=_ETA, stochastic=True, brownian_noise=True, second_order=True),
    _info("DPM++ 2M SDE", sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde",), default_scheduler="Exponential",
          options=("eta", "s_noise"), defaults=_ETA, stochastic=True, brownian_noise=True),
    _info("DPM++ 2M SDE Heun", sample_dpmpp_2m_sde_heun, ("k_dpmpp_2m_sde_heun",), default_scheduler="Exponential",
          options=("eta", "s_noise"), defaults=_ETA, stochastic=True, brownian_noise=True),
    _info("DPM++ 2S a", sample_dpmpp_2s_ancestral, ("k_dpmpp_2s_a",), default_scheduler="Karras",
          options=("eta", "s_noise"), defaults=_ETA, stochastic=True, second_order=True, uses_ensd=True),
    _info("DPM++ 3M SDE", sample_dpmpp_3m_sde, ("k_dpmpp_3m_sde",), default_scheduler="Exponential",
          options=("eta", "s_noise"), defaults=_ETA, stochastic=True, brownian_noise=True,
          discard_next_to_last_sigma=True),
    _info("Euler a", sample_euler_ancestral, ("k_euler_a", "k_euler_ancestral"), options=("eta",), defaults=_ETA,
          stochastic=True, uses_ensd=True),
    _info("Euler", sample_euler, ("k_euler",), options=_CHURN),
    _info("LMS", sample_lms, ("k_lms",)),
    _info("Heun", sample_heun, ("k_heun",), options=_CHURN, second_order=True),
    _info("DPM2", sample_dpm_2, ("k_dpm_2",), default_scheduler="Karras", options=_CHURN, second_order=True,
          discard_next_to_last_sigma=True),
    _info("DPM2 a", sample_dpm_2_ancestral, ("k_dpm_2_a",), default_scheduler="Karras", options=("eta", "s_noise"),
          defaults=_ETA, stochastic=True, second_order=True, uses_ensd=True, discard_next_to_last_sigma=True),
    _info("DPM fast", sample_dpm_fast, ("k_dpm_fast",), options=("eta", "s_noise"), defaults=_ETA,
          stochastic=True, uses_ensd=True),
    _info("DPM adaptive", sample_dpm_adaptive, ("k_dpm_ad",), options=("eta",), defaults=_ETA, stochastic=True,
          uses_ensd=True),
    _info("Restart", sample_restart, ("restart",), default_scheduler="Karras", stochastic=True, second_order=True),
    _info("DDIM", sample_ddim, ("ddim",), options=("eta",), defaults=_ETA_DDIM, timesteps=True,
          progress_steps=ddim_progress_steps),
    _info("DDIM CFG++", sample_ddim_cfgpp, ("ddim_cfgpp",), options=("eta",), defaults=_ETA_DDIM,
          needs_uncond=True, cfg_scale_multiplier=1 / 12.5, timesteps=True, progress_steps=ddim_progress_steps),
    _info("PLMS", sample_plms, ("plms",), timesteps=True, progress_steps=ddim_progress_steps),
    _info("UniPC", sample_unipc, ("unipc",), timesteps=True, progress_steps=unipc_progress_steps),
    _info("LCM", sample_lcm, ("k_lcm",), stochastic=True, automatic=sched.lcm, table=LCMSchedule),
)}

# A1111's pre-1.9 fused aliases: "<alias>_ka" = Karras, "<alias>_exp" = Exponential.
_FUSED_SUFFIXES = {"_ka": "Karras", "_exp": "Exponential"}


def _norm(name: str) -> str:
    return " ".join(name.strip().lower().split())


def _lookup(name: str) -> SamplerInfo | None:
    key = _norm(name)
    for info in SAMPLERS.values():
        if key == _norm(info.label) or key in (a.lower() for a in info.aliases):
            return info
    return None


def resolve_sampler_name(name: str) -> tuple[SamplerInfo, str | None]:
    """A sampler label, alias or old fused name (any case) → (SamplerInfo, schedule label or None).

    "DPM++ 2M Karras" → (DPM++ 2M, "Karras"); "k_dpmpp_2m_ka" → (DPM++ 2M, "Karras"); "Euler a" → (Euler a,
    None). Unknown names raise ValueError naming the closest known ones."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"sampler name must be a non-empty string, got {name!r}")
    info = _lookup(name)
    if info is not None:
        return info, None
    key = _norm(name)
    for suffix, schedule in _FUSED_SUFFIXES.items():
        if key.endswith(suffix) and (info := _lookup(key[: -len(suffix)])) is not None:
            return info, schedule
    candidates = [(label, label) for label in sched.SCHEDULES] + list(sched.SCHEDULE_ALIASES.items())
    for spelled, label in sorted(candidates, key=lambda c: -len(c[0])):
        if key.endswith(" " + spelled.lower()) and (info := _lookup(key[: -len(spelled) - 1])) is not None:
            return info, label
    known = [i.label for i in SAMPLERS.values()] + [a for i in SAMPLERS.values() for a in i.aliases]
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.5) or difflib.get_close_matches(
        name.lower(), [k.lower() for k in known], n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    raise ValueError(f"unknown sampler {name!r}.{hint} Known samplers: {', '.join(SAMPLERS)}")


def resolve_scheduler(info: SamplerInfo, scheduler: str | None) -> str:
    """The schedule label a sampler will use: an explicit label, else the sampler's default, else
    "Automatic" (the sampler's own `automatic` schedule)."""
    label = sched.resolve_schedule_name(scheduler or "Automatic")
    if label == "Automatic":
        return info.default_scheduler or "Automatic"
    return label


def sampler_table(info: SamplerInfo, schedule: DiscreteSchedule) -> DiscreteSchedule:
    """The noise table `info` samples on, given the model's (the model's own unless `info.table`)."""
    if info.table is None or isinstance(schedule, LCMSchedule):
        return schedule
    return info.table(schedule)


def sigmas_for(info: SamplerInfo, scheduler: str | None, schedule: DiscreteSchedule, steps: int, *,
               discard_penultimate: bool | None = None) -> Tensor:
    """The sigmas A1111 would sample `steps` steps with: resolve "Automatic", and for samplers flagged
    `discard_next_to_last_sigma` (DPM2, DPM2 a, DPM++ 3M SDE) build steps + 1 and drop the penultimate.
    Timestep samplers get A1111's timesteps 1, 1 + 1000//steps, ... as the table's sigmas (plus the
    final 0) whatever `scheduler` says: A1111 ignores the schedule for them."""
    if info.timesteps:
        return timestep_sigmas(schedule, steps)
    discard = info.discard_next_to_last_sigma if discard_penultimate is None else discard_penultimate
    n = steps + 1 if discard else steps
    label = resolve_scheduler(info, scheduler)
    sigmas = info.automatic(schedule, n) if label == "Automatic" else sched.SCHEDULES[label](schedule, n)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def progress_total(info: SamplerInfo, sigmas: Tensor, *, img2img: bool) -> int:
    """How many progress callbacks `info` makes on `sigmas` (the progress bar's total, so that it ends
    at 100%): one per sigma step for k-diffusion samplers; timestep samplers say their own."""
    if info.progress_steps is not None:
        return info.progress_steps(sigmas, img2img)
    return len(sigmas) - 1


def img2img_sigmas(info: SamplerInfo, sigmas: Tensor, steps: int, t_enc: int) -> Tensor:
    """The tail of a `steps`-step schedule that img2img (and hires) runs when t_enc steps are left.

    k-diffusion samplers: A1111's `sigmas[steps - t_enc - 1:]`. Timestep samplers: A1111 noises to
    its timestep T[t_enc] (T ascending), i.e. starts at `sigmas[len(T) - 1 - t_enc]`, which differs when
    1000 // steps gives more than `steps` timesteps (e.g. 30 steps → 31)."""
    if info.timesteps:
        return sigmas[max(len(sigmas) - 2 - t_enc, 0):]
    return sigmas[steps - t_enc - 1:]


def plan_kwargs(info: SamplerInfo, schedule: DiscreteSchedule, *, img2img: bool) -> dict[str, Any]:
    """What a pass adds to a sampler's keyword arguments: timestep samplers need the noise table and
    whether the start latent was noised from an image (A1111 then starts one timestep lower)."""
    return {"schedule": schedule, "is_img2img": img2img} if info.timesteps else {}


def infotext_fields(info: SamplerInfo, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A1111's infotext entries for the options a sampler runs with (`kwargs`, request and settings
    resolved) where they differ from A1111's defaults, so the image reproduces there: "Eta" (k-diffusion
    samplers, default 1) or "Eta DDIM" (timestep samplers, default 0), and "Sigma noise" (default 1)."""
    out: dict[str, Any] = {}
    eta = kwargs.get("eta")
    if "eta" in info.options and eta is not None and eta != info.defaults.get("eta"):
        out["Eta DDIM" if info.timesteps else "Eta"] = eta
    s_noise = kwargs.get("s_noise")
    if "s_noise" in info.options and s_noise is not None and s_noise != 1.0:
        out["Sigma noise"] = s_noise
    return out
