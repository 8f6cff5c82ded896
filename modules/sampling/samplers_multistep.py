"""Multistep samplers (they reuse earlier denoiser outputs): LMS and DPM++ 2M / 2M SDE / 3M SDE.
Same signature and conventions as `samplers.py` (k-diffusion style):
`sample_x(model, x, sigmas, *, extra_args, callback, disable, noise_sampler, ...) -> x`.
DDIM, PLMS and UniPC, which A1111 runs in timestep space, are in `samplers_timesteps.py`.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from modules.sampling.denoiser import to_d
from modules.sampling.noise import NoiseSampler, missing_noise_sampler

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
