"""Multistep samplers (they reuse earlier denoiser outputs): LMS, DPM++ 2M / 2M SDE / 3M SDE, PLMS,
UniPC, and the DDIM family. Same signature and conventions as `samplers.py` (k-diffusion style):
`sample_x(model, x, sigmas, *, extra_args, callback, disable, noise_sampler, ...) -> x`.

DDIM, DDIM CFG++, PLMS and UniPC run in sigma space on the k-diffusion denoiser, not on A1111's
"CompVis" timestep path (x scaled by sqrt(alphas_cumprod), `steps - 1` network calls ending at t = 1):
- DDIM (eta) ≡ an ancestral step x0 + sigma_down*eps + sigma_up*z; with the "DDIM" schedule it visits
  A1111's timesteps 951..1 and then denoises fully to sigma 0.
- PLMS uses the same pseudo-linear-multistep eps combination as A1111's `plms`.
- UniPC is the B(h) predictor-corrector of the paper in lambda = -log(sigma); its default "SGM Uniform"
  schedule is A1111's "time_uniform" timestep grid, ending at 0 instead of sigma_min.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from modules.sampling.denoiser import to_d
from modules.sampling.noise import NoiseSampler, ancestral_step, missing_noise_sampler

Callback = Callable[[dict], Any]


def _report(callback: Callback | None, x: Tensor, i: int, sigma: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


# ---- LMS ----------------------------------------------------------------------------------------------

def lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial through t_i, ..., t_{i-order+1}
    that is 1 at t_{i-j} (exact polynomial integration; k-diffusion uses numerical quadrature)."""
    if order - 1 > i:
        raise ValueError(f"order {order} is too high for step {i}")
    poly = np.poly1d([1.0])
    for k in range(order):
        if k != j:
            poly = poly * np.poly1d([1.0, -t[i - k]]) / (t[i - j] - t[i - k])
    antiderivative = poly.integ()
    return float(antiderivative(t[i + 1]) - antiderivative(t[i]))


@torch.no_grad()
def sample_lms(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None, callback: Callback | None = None,
               disable: bool | None = None, noise_sampler: NoiseSampler | None = None, order: int = 4) -> Tensor:
    """Linear multistep (Adams–Bashforth on non-uniform sigma steps) for the probability-flow ODE
    (Karras et al. 2022, arXiv:2206.00364; k-diffusion `sample_lms`), order up to 4."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    t = sigmas.detach().cpu().double().numpy()
    ds: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        _report(callback, x, i, sigmas[i], denoised)
        cur = min(i + 1, order)
        coeffs = [lms_coefficient(cur, t, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


# ---- DPM-Solver++ multistep -----------------------------------------------------------------------------

@torch.no_grad()
def sample_dpmpp_2m(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                    callback: Callback | None = None, disable: bool | None = None,
                    noise_sampler: NoiseSampler | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Algorithm 2), in t = -log(sigma):
    x' = (sigma'/sigma) x - expm1(-h) D~ with D~ the second-order extrapolation of the last two D."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised  # = the first-order step with sigma' = 0
        else:
            t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
            h = t_next - t
            if old_denoised is None:
                d = denoised
            else:
                r = (t - (-sigmas[i - 1].log())) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                        callback: Callback | None = None, disable: bool | None = None,
                        noise_sampler: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0,
                        solver_type: str = "midpoint") -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, arXiv:2211.01095, the SDE variant as in k-diffusion):
    x' = (sigma'/sigma) e^{-eta h} x + (1 - e^{-(1+eta)h}) D + correction + sigma' sqrt(1 - e^{-2 eta h}) z.
    `solver_type` "midpoint" (A1111 "DPM++ 2M SDE") or "heun" ("DPM++ 2M SDE Heun")."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or missing_noise_sampler("DPM++ 2M SDE")
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            eta_h = eta * h
            phi = -torch.expm1(-h - eta_h)
            x = sigmas[i + 1] / sigmas[i] * torch.exp(-eta_h) * x + phi * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (phi / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * phi * (1 / r) * (denoised - old_denoised)
            if eta:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-torch.expm1(-2 * eta_h)).sqrt() * s_noise
            h_last = h
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                             callback: Callback | None = None, disable: bool | None = None,
                             noise_sampler: NoiseSampler | None = None, eta: float = 1.0,
                             s_noise: float = 1.0) -> Tensor:
    """DPM-Solver++(2M) SDE with the Heun-type correction (Lu et al. 2022, arXiv:2211.01095)."""
    return sample_dpmpp_2m_sde(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
                               noise_sampler=noise_sampler, eta=eta, s_noise=s_noise, solver_type="heun")


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                        callback: Callback | None = None, disable: bool | None = None,
                        noise_sampler: NoiseSampler | None = None, eta: float = 1.0,
                        s_noise: float = 1.0) -> Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep data-prediction solver with eta-scaled noise
    (Lu et al. 2022, arXiv:2211.01095; k-diffusion's `sample_dpmpp_3m_sde`)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or missing_noise_sampler("DPM++ 3M SDE")
    s_in = x.new_ones([x.shape[0]])
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = sigmas[i].log() - sigmas[i + 1].log()
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x - torch.expm1(-h_eta) * denoised
            phi_2 = torch.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-torch.expm1(-2 * h * eta)).sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# ---- DDIM family and PLMS ---------------------------------------------------------------------------------

@torch.no_grad()
def sample_ddim(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                callback: Callback | None = None, disable: bool | None = None,
                noise_sampler: NoiseSampler | None = None, eta: float = 0.0) -> Tensor:
    """DDIM (Song et al. 2020, arXiv:2010.02502, eq. 12) in sigma space: with x0 = D(x, sigma) and
    eps = (x - x0)/sigma, x' = x0 + sigma_down*eps + sigma_up*z, where DDIM's sigma_t(eta) becomes
    sigma_up = eta*sigma'*sqrt(1 - sigma'^2/sigma^2) and sigma_down = sqrt(sigma'^2 - sigma_up^2)."""
    return _ddim(model, x, sigmas, extra_args, callback, noise_sampler, eta, cfgpp=False)


@torch.no_grad()
def sample_ddim_cfgpp(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                      callback: Callback | None = None, disable: bool | None = None,
                      noise_sampler: NoiseSampler | None = None, eta: float = 0.0) -> Tensor:
    """DDIM CFG++ (Chung et al. 2024, arXiv:2406.08070): the guided x0 as in DDIM, but the step direction
    is the *unconditional* noise, x' = x0_cfg + sigma_down*eps_uncond + sigma_up*z. `model` must expose
    `last_uncond` (the negative prompt's denoised output of its latest call, as `CFGDenoiser` does) and
    should be built with cfg_scale / 12.5 (A1111 maps CFG 0..12.5 to CFG++'s 0..1; see SamplerInfo)."""
    if not hasattr(model, "last_uncond"):
        raise ValueError("DDIM CFG++ needs a guidance denoiser exposing `last_uncond` (e.g. CFGDenoiser)")
    return _ddim(model, x, sigmas, extra_args, callback, noise_sampler, eta, cfgpp=True)


def _ddim(model, x, sigmas, extra_args, callback, noise_sampler, eta, cfgpp: bool) -> Tensor:
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or missing_noise_sampler("DDIM CFG++" if cfgpp else "DDIM")
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        direction = denoised
        if cfgpp and getattr(model, "last_uncond", None) is not None:
            direction = model.last_uncond
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = denoised + to_d(x, sigmas[i], direction) * sigma_down
        if sigmas[i + 1] > 0 and sigma_up > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
    return x


@torch.no_grad()
def sample_plms(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                callback: Callback | None = None, disable: bool | None = None,
                noise_sampler: NoiseSampler | None = None) -> Tensor:
    """Pseudo linear multistep (PNDM, Liu et al. 2022, arXiv:2202.09778; LDM's PLMS): Adams–Bashforth
    combinations of up to 4 past eps (55, -59, 37, -9)/24, the first step a pseudo improved Euler
    (2 network calls); each step is a DDIM step with the combined eps (x' = x + (sigma' - sigma) eps)."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    old_eps: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        eps = to_d(x, sigma, denoised)
        _report(callback, x, i, sigma, denoised)
        dt = sigma_next - sigma
        if not old_eps:
            if sigma_next > 0:
                x_2 = x + eps * dt
                eps_2 = to_d(x_2, sigma_next, model(x_2, sigma_next * s_in, **extra_args))
                eps_prime = (eps + eps_2) / 2
            else:
                eps_prime = eps
        elif len(old_eps) == 1:
            eps_prime = (3 * eps - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x = x + eps_prime * dt
        old_eps.append(eps)
        if len(old_eps) > 3:
            old_eps.pop(0)
    return x


# ---- UniPC ------------------------------------------------------------------------------------------------

@torch.no_grad()
def sample_unipc(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                 callback: Callback | None = None, disable: bool | None = None,
                 noise_sampler: NoiseSampler | None = None, order: int = 3, variant: str = "bh1",
                 lower_order_final: bool = True) -> Tensor:
    """UniPC, multistep data prediction (Zhao et al. 2023, arXiv:2302.04867): UniP-p predictor plus the
    UniC corrector, which reuses the network call at the new point, so `steps` steps cost `steps` calls.
    A1111 defaults: variant "bh1" (B(h) = h; "bh2": B(h) = e^h - 1), order 3, lower order at the end.
    A final step to sigma 0 returns the data prediction (the order-1 step's limit)."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    steps = len(sigmas) - 1
    order = max(1, min(order, steps))
    denoised = model(x, sigmas[0] * s_in, **extra_args)
    models, lambdas = [denoised], [-math.log(float(sigmas[0]))]
    for step in range(1, steps + 1):
        _report(callback, x, step - 1, sigmas[step - 1], models[-1])
        if sigmas[step] == 0:
            x = models[-1]
            break
        if step < order:
            step_order = step
        else:
            step_order = min(order, steps + 1 - step) if lower_order_final else order
        use_corrector = step < steps
        x, model_t = _unipc_update(model, x, models, lambdas, sigmas[step - 1], sigmas[step], step_order,
                                   use_corrector, variant, s_in, extra_args)
        if step < steps:
            if model_t is None:
                model_t = model(x, sigmas[step] * s_in, **extra_args)
            models.append(model_t)
            lambdas.append(-math.log(float(sigmas[step])))
            models, lambdas = models[-order:], lambdas[-order:]
    return x


def _unipc_update(model, x, models, lambdas, sigma_s, sigma_t, order, use_corrector, variant, s_in, extra_args):
    """One UniPC B(h) step from the newest stored point to sigma_t (data prediction, VE coordinates)."""
    lam_s, lam_t = lambdas[-1], -math.log(float(sigma_t))
    h = lam_t - lam_s
    d_s = models[-1]
    rks, d1s = [], []
    for i in range(1, order):
        rk = (lambdas[-(i + 1)] - lam_s) / h
        rks.append(rk)
        d1s.append((models[-(i + 1)] - d_s) / rk)
    rks.append(1.0)
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rk_t = torch.tensor(rks, dtype=torch.float64)
    rows, b = [], []
    factorial = 1
    for i in range(1, order + 1):
        rows.append(rk_t ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r_mat, b_vec = torch.stack(rows), torch.tensor(b, dtype=torch.float64)

    x_base = (float(sigma_t) / float(sigma_s)) * x - h_phi_1 * d_s
    pred = 0
    if d1s:
        rhos_p = [0.5] if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b_vec[:-1]).tolist()
        pred = sum(float(r) * d for r, d in zip(rhos_p, d1s))
    x_t = x_base - b_h * pred
    if not use_corrector:
        return x_t, None
    model_t = model(x_t, sigma_t * s_in, **extra_args)
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(r_mat, b_vec).tolist()
    corr = sum(float(r) * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0
    return x_base - b_h * (corr + rhos_c[-1] * (model_t - d_s)), model_t
