"""Noise schedules: `fn(schedule, steps) -> sigmas` (float32, descending, steps + 1 values ending in 0).

Each function reproduces A1111's `sd_schedulers.py` (which calls k-diffusion for Karras / Exponential /
Polyexponential), including its quirks, because A1111 infotexts are what users reproduce:
- Karras, Exponential, Polyexponential, KL Optimal and Beta run between the model's sigma_min and
  sigma_max; Uniform, Normal and SGM Uniform are spaced in (fractional) timestep space.
- KL Optimal has steps + 1 values ending at sigma_min, not 0 (A1111 appends no zero).
- DDIM takes every (1000 // steps)-th table entry from t = 1; when `steps` does not divide 1000 that is
  more than `steps` sigmas (A1111's "DDIM" schedule for k-diffusion samplers; its DDIM/PLMS/UniPC
  samplers use `samplers_timesteps.a1111_timesteps`, which differs at 36 or 37 steps).
"Automatic" is not a schedule: the sampler decides (see `samplers.sigmas_for`).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from modules.sampling.denoiser import DiscreteSchedule

ScheduleFn = Callable[[DiscreteSchedule, int], Tensor]


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas.to(torch.float32), sigmas.new_zeros(1, dtype=torch.float32)])


def _check(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


def uniform(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """Timesteps evenly spaced from the last table entry to 0 (k-diffusion `get_sigmas`; DDPM/DDIM's
    "linspace" spacing, Ho et al. 2020, arXiv:2006.11239). A1111's default for most samplers."""
    _check(steps)
    return schedule.get_sigmas(steps).to(torch.float32)


def normal(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """Timesteps evenly spaced between t(sigma_max) and t(sigma_min), via fractional sigma_to_t."""
    _check(steps)
    start = schedule.sigma_to_t(torch.tensor(schedule.sigma_max))
    end = schedule.sigma_to_t(torch.tensor(schedule.sigma_min))
    t = torch.linspace(float(start), float(end), steps)
    return _append_zero(schedule.t_to_sigma(t))


def sgm_uniform(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """Like Normal but with steps + 1 points of which the last (sigma_min) is dropped before the final 0
    (Stability's SGM "uniform" discretisation; Podell et al. 2023, arXiv:2307.01952)."""
    _check(steps)
    start = schedule.sigma_to_t(torch.tensor(schedule.sigma_max))
    end = schedule.sigma_to_t(torch.tensor(schedule.sigma_min))
    t = torch.linspace(float(start), float(end), steps + 1)[:-1]
    return _append_zero(schedule.t_to_sigma(t))


def karras(schedule: DiscreteSchedule, steps: int, rho: float = 7.0) -> Tensor:
    """sigma_i = (max^(1/rho) + i/(n-1) * (min^(1/rho) - max^(1/rho)))^rho (Karras et al. 2022,
    arXiv:2206.00364, eq. 5)."""
    _check(steps)
    ramp = torch.linspace(0, 1, steps)
    lo, hi = schedule.sigma_min ** (1 / rho), schedule.sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def exponential(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """Evenly spaced in log sigma from sigma_max to sigma_min (k-diffusion `get_sigmas_exponential`)."""
    _check(steps)
    return _append_zero(torch.linspace(math.log(schedule.sigma_max), math.log(schedule.sigma_min), steps).exp())


def polyexponential(schedule: DiscreteSchedule, steps: int, rho: float = 1.0) -> Tensor:
    """log sigma polynomial in the ramp: exp(ramp^rho * (log max - log min) + log min), ramp 1 → 0
    (k-diffusion `get_sigmas_polyexponential`; rho = 1 is Exponential)."""
    _check(steps)
    ramp = torch.linspace(1, 0, steps) ** rho
    log_min, log_max = math.log(schedule.sigma_min), math.log(schedule.sigma_max)
    return _append_zero(torch.exp(ramp * (log_max - log_min) + log_min))


def kl_optimal(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """sigma_i = tan((i/n) * atan(sigma_min) + (1 - i/n) * atan(sigma_max)), i = 0..n (Sabour et al. 2024,
    "Align Your Steps", arXiv:2404.14507, KL-optimal schedule). As in A1111 it ends at sigma_min."""
    _check(steps)
    alpha_min = torch.arctan(torch.tensor(schedule.sigma_min, dtype=torch.float32))
    alpha_max = torch.arctan(torch.tensor(schedule.sigma_max, dtype=torch.float32))
    i = torch.arange(steps + 1)
    return torch.tan(i / steps * alpha_min + (1.0 - i / steps) * alpha_max).to(torch.float32)


# NVIDIA's published 10-step sigma schedules (research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html)
AYS_SIGMAS = {
    "sd1": (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029),
    "sdxl": (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029),
}


def loglinear_interp(values: "list[float] | tuple[float, ...] | np.ndarray", num: int) -> np.ndarray:
    """Resample a decreasing sequence to `num` points, linear in log value over a uniform grid."""
    ys = np.log(np.asarray(values, dtype=np.float64)[::-1])
    xs = np.linspace(0, 1, len(ys))
    return np.exp(np.interp(np.linspace(0, 1, num), xs, ys))[::-1].copy()


def align_your_steps(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """NVIDIA's optimised schedule (Sabour et al. 2024, arXiv:2404.14507): the published SD1.5 or SDXL
    table (by `schedule.family`), log-linearly interpolated to `steps` points, then 0 (A1111: the table
    is used as is only when steps == 11, its length)."""
    _check(steps)
    table = AYS_SIGMAS["sdxl" if "xl" in str(getattr(schedule, "family", "")).lower() else "sd1"]
    values = list(table) if steps == len(table) else list(loglinear_interp(table, steps))
    return torch.tensor(values + [0.0], dtype=torch.float32)


def simple(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """Every (len/steps)-th table entry counted down from the top (ComfyUI's "simple")."""
    _check(steps)
    stride = len(schedule.sigmas) / steps
    values = [float(schedule.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.tensor(values + [0.0], dtype=torch.float32)


def ddim(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """The table at t = 1, 1 + s, 1 + 2s, ... (s = len // steps), descending, then 0 — DDIM's uniform
    timestep skipping with LDM's +1 offset (Song et al. 2020, arXiv:2010.02502)."""
    _check(steps)
    stride = max(len(schedule.sigmas) // steps, 1)
    values = [float(schedule.sigmas[t]) for t in range(1, len(schedule.sigmas), stride)]
    return torch.tensor(values[::-1] + [0.0], dtype=torch.float32)


def beta(schedule: DiscreteSchedule, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> Tensor:
    """sigma = sigma_min + ppf_Beta(alpha, beta)(1 - i/(n-1)) * (sigma_max - sigma_min) (Lee et al. 2024,
    "Beta Sampling is All You Need", arXiv:2407.12173; A1111's sigma-space form, alpha = beta = 0.6)."""
    _check(steps)
    from scipy import stats  # torchsde depends on scipy, so it is installed

    quantiles = stats.beta.ppf(1 - np.linspace(0, 1, steps), alpha, beta_)
    lo, hi = schedule.sigma_min, schedule.sigma_max
    return torch.tensor([lo + float(q) * (hi - lo) for q in quantiles] + [0.0], dtype=torch.float32)


def lcm(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """A1111's automatic schedule for LCM: the 50-level LCM table (`LCMSchedule`) spaced evenly."""
    from modules.sampling.denoiser import LCMSchedule

    _check(steps)
    table = schedule if isinstance(schedule, LCMSchedule) else LCMSchedule(schedule)
    return table.get_sigmas(steps).to(torch.float32)


# A1111's labels, in A1111's dropdown order ("Automatic" is resolved by the sampler, not listed here).
SCHEDULES: dict[str, ScheduleFn] = {
    "Uniform": uniform,
    "Karras": karras,
    "Exponential": exponential,
    "Polyexponential": polyexponential,
    "SGM Uniform": sgm_uniform,
    "KL Optimal": kl_optimal,
    "Align Your Steps": align_your_steps,
    "Simple": simple,
    "Normal": normal,
    "DDIM": ddim,
    "Beta": beta,
}

# A1111's internal names and old spellings → labels.
SCHEDULE_ALIASES = {
    "uniform": "Uniform", "karras": "Karras", "exponential": "Exponential",
    "polyexponential": "Polyexponential", "sgm_uniform": "SGM Uniform", "sgmuniform": "SGM Uniform",
    "kl_optimal": "KL Optimal", "align_your_steps": "Align Your Steps", "ays": "Align Your Steps",
    "simple": "Simple", "normal": "Normal", "ddim": "DDIM", "beta": "Beta",
}


def resolve_schedule_name(name: str) -> str:
    """A schedule label or alias (any case) → its A1111 label; "Automatic" stays "Automatic"."""
    if name in SCHEDULES or name == "Automatic":
        return name
    key = name.strip().lower().replace(" ", "_")
    if key == "automatic":
        return "Automatic"
    for label in SCHEDULES:
        if label.lower().replace(" ", "_") == key:
            return label
    if key in SCHEDULE_ALIASES:
        return SCHEDULE_ALIASES[key]
    import difflib

    near = difflib.get_close_matches(name, ["Automatic", *SCHEDULES], n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    raise ValueError(f"unknown schedule type {name!r}.{hint} Known: Automatic, {', '.join(SCHEDULES)}")
