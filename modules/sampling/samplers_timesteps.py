"""A1111's timestep-space samplers: DDIM, DDIM CFG++, PLMS and UniPC (A1111's `sd_samplers_timesteps`).

A1111 runs these four on the "CompVis" path rather than through k-diffusion, and an A1111 seed only
reproduces on the same path:
- the latent is in VP form x_t = sqrt(ā_t)·x0 + sqrt(1-ā_t)·ε (ā = the table's alphas_cumprod);
- the network is called at the integer timesteps 1, 1+s, 1+2s, … (s = 1000 // steps, A1111's
  "uniform" DDIM discretisation, whatever schedule is picked) and returns ε; UniPC instead steps
  uniformly in continuous time t ∈ [1/1000, 1] and calls the network at model time 1000·t - 1;
- txt2img starts from the pure noise (not noise·sqrt(1-ā)); img2img and hires noise the image to the
  timestep T[t_enc] but, as A1111, start evaluating at the next lower one, T[t_enc - 1];
- the result is the VP latent at the last timestep (t = 1, UniPC: model time 0), decoded as is.

Same signature and registry conventions as the sigma-space samplers, so the pipeline calls them the
same way: `model(x, sigma, **extra_args) -> denoised` is the k-diffusion denoiser (`_EpsModel` turns it
into ε(x_t, t): it calls the denoiser at σ(t) on x_t·sqrt(1+σ²), so the network sees exactly x_t at
timestep t — σ(t) is the table entry, and the table's `sigma_to_t` maps it back to t exactly);
`sigmas` is the plan's schedule, the table's sigmas at A1111's timesteps, descending, ending in 0
(each positive sigma is snapped to its timestep); `x` is the pipeline's start latent in k-diffusion's
form (noise·sigmas[0], or image + noise·sigmas[0] with `is_img2img`), converted here to A1111's VP
start. `schedule` is the noise table (default: Stable Diffusion's).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from modules.sampling.denoiser import DiscreteSchedule
from modules.sampling.noise import NoiseSampler, missing_noise_sampler

Callback = Callable[[dict], Any]


def a1111_timesteps(steps: int, total: int = 1000) -> list[int]:
    """A1111's timesteps for `steps` steps (ascending): range(0, total, total // steps) + 1, clipped to
    total - 1 (k-diffusion's "DDIM" schedule stops below `total` instead, so 36 or 37 steps differ)."""
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return [min(t + 1, total - 1) for t in range(0, total, max(total // steps, 1))]


def timestep_sigmas(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """`a1111_timesteps` as the table's sigmas, descending, then 0: the plan a timestep sampler gets."""
    ts = a1111_timesteps(steps, schedule.num_timesteps)[::-1]
    return torch.cat([schedule.sigmas[ts].to(torch.float32), torch.zeros(1)])


def timesteps_of(schedule: DiscreteSchedule, sigmas: Tensor) -> list[int]:
    """The table timesteps of the positive `sigmas` (rounded), in the given (descending) order."""
    positive = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1)
    positive = positive[positive > 0]
    return [int(round(float(t))) for t in schedule.sigma_to_t(positive)]


def visited_timesteps(sigmas: Tensor, is_img2img: bool) -> int:
    """How many timesteps a timestep sampler visits on this plan: one per positive sigma, less the
    noising one for img2img (as `_plan` drops it)."""
    n = int((torch.as_tensor(sigmas).reshape(-1) > 0).sum())
    return max(n - 1, 0) if is_img2img else n


def ddim_progress_steps(sigmas: Tensor, is_img2img: bool) -> int:
    """Progress callbacks of DDIM, DDIM CFG++ and PLMS: one per step between visited timesteps,
    i.e. one fewer than the timesteps (20 steps: 19), so a progress total of `steps` never ends."""
    return max(visited_timesteps(sigmas, is_img2img) - 1, 0)


def unipc_progress_steps(sigmas: Tensor, is_img2img: bool) -> int:
    """Progress callbacks of UniPC: one per visited timestep."""
    return visited_timesteps(sigmas, is_img2img)


def vp_start(x: Tensor, sigmas: Tensor, is_img2img: bool) -> Tensor:
    """A1111's VP start latent from k-diffusion's: txt2img x = noise·σ0 → the noise itself; img2img
    x = image + noise·σ0 → x·sqrt(ā) = image·sqrt(ā) + noise·sqrt(1-ā), with ā = 1/(1+σ0²)."""
    sigma0 = float(sigmas[0])
    return x / math.sqrt(1 + sigma0 * sigma0) if is_img2img else x / sigma0


def _plan(schedule: DiscreteSchedule | None, x: Tensor, sigmas: Tensor, is_img2img: bool
          ) -> tuple[DiscreteSchedule, list[int], Tensor]:
    """(table, timesteps to visit, VP start): img2img drops the noising timestep, as A1111 does."""
    schedule = schedule if schedule is not None else DiscreteSchedule.sd_default()
    ts = timesteps_of(schedule, sigmas)
    if not ts:
        return schedule, [], x
    return schedule, ts[1:] if is_img2img else ts, vp_start(x, sigmas, is_img2img)


class _EpsModel:
    """ε(x_t, t) of a k-diffusion denoiser: A1111's CompVis timestep call on Palette's denoisers.

    With σ = σ(t) (the table entry for an integer t, log-sigma interpolation otherwise), the denoiser
    gets x_t·sqrt(1+σ²) at σ; its c_in = 1/sqrt(1+σ²) hands the network x_t and `sigma_to_t(σ)` = t.
    ε = (x - D)/σ is then the network's own ε (eps models; v models: sqrt(ā)·v + sqrt(1-ā)·x_t, where
    A1111 takes ā at the truncated timestep, which differs only at UniPC's fractional model times)."""

    def __init__(self, model, schedule: DiscreteSchedule, extra_args: dict | None) -> None:
        self.model = model
        self.schedule = schedule
        self.extra_args = extra_args or {}

    def sigma(self, t: float | Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        if float(t) == int(t):
            return self.schedule.sigmas[int(t)]
        return self.schedule.t_to_sigma(t)

    def _scaled(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        sigma = self.sigma(t).to(x.device)
        return x * (sigma ** 2 + 1) ** 0.5, sigma

    def __call__(self, x: Tensor, t: float | Tensor) -> Tensor:
        x_in, sigma = self._scaled(x, t)
        denoised = self.model(x_in, sigma * x.new_ones([x.shape[0]]), **self.extra_args)
        return (x_in - denoised) / sigma

    def last_uncond_eps(self, x: Tensor, t: float | Tensor) -> Tensor:
        """ε of the negative prompt at the latest call (CFG++); the guided ε if there was none."""
        uncond = getattr(self.model, "last_uncond", None)
        x_in, sigma = self._scaled(x, t)
        if uncond is None:
            raise ValueError("DDIM CFG++ needs the negative prompt's prediction: build the guidance "
                             "denoiser with always_uncond=True")
        return (x_in - uncond) / sigma


def _report(callback: Callback | None, x: Tensor, i: int, sigma: Any, denoised: Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


# ---- DDIM -------------------------------------------------------------------------------------------------

@torch.no_grad()
def sample_ddim(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                callback: Callback | None = None, disable: bool | None = None,
                noise_sampler: NoiseSampler | None = None, eta: float = 0.0,
                schedule: DiscreteSchedule | None = None, is_img2img: bool = False) -> Tensor:
    """DDIM (Song et al. 2020, arXiv:2010.02502, eq. 12) over A1111's timesteps: from t to t' < t,
    x0 = (x_t - sqrt(1-ā_t) ε)/sqrt(ā_t), x_t' = sqrt(ā_t') x0 + sqrt(1-ā_t'-σ_t²) ε + σ_t z with
    σ_t = eta·sqrt((1-ā_t')/(1-ā_t))·sqrt(1-ā_t/ā_t'). `len(timesteps) - 1` network calls."""
    return _ddim(model, x, sigmas, extra_args, callback, noise_sampler, eta, schedule, is_img2img, cfgpp=False)


@torch.no_grad()
def sample_ddim_cfgpp(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                      callback: Callback | None = None, disable: bool | None = None,
                      noise_sampler: NoiseSampler | None = None, eta: float = 0.0,
                      schedule: DiscreteSchedule | None = None, is_img2img: bool = False) -> Tensor:
    """DDIM with CFG++ (Chung et al. 2024, arXiv:2406.08070): x0 from the guided ε as in DDIM, but the
    step back up to t' uses the negative prompt's ε. `model` must expose `last_uncond` (the guidance
    denoisers do, with always_uncond=True) and be built with cfg_scale / 12.5, A1111's mapping of
    CFG 0..12.5 onto CFG++'s 0..1 (see SamplerInfo.cfg_scale_multiplier)."""
    if not hasattr(model, "last_uncond"):
        raise ValueError("DDIM CFG++ needs a guidance denoiser exposing `last_uncond` (GuidedDenoiser, CFGDenoiser)")
    return _ddim(model, x, sigmas, extra_args, callback, noise_sampler, eta, schedule, is_img2img, cfgpp=True)


def _ddim(model, x, sigmas, extra_args, callback, noise_sampler, eta, schedule, is_img2img, cfgpp: bool) -> Tensor:
    noise_sampler = noise_sampler or missing_noise_sampler("DDIM CFG++" if cfgpp else "DDIM")
    schedule, ts, x = _plan(schedule, x, sigmas, is_img2img)
    eps_model = _EpsModel(model, schedule, extra_args)
    ac = schedule.alphas_cumprod
    for i in range(len(ts) - 1):
        a_t, a_prev = float(ac[ts[i]]), float(ac[ts[i + 1]])
        eps = eps_model(x, ts[i])
        pred_x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        _report(callback, x, i, schedule.sigmas[ts[i]], pred_x0)
        direction = eps_model.last_uncond_eps(x, ts[i]) if cfgpp else eps
        sigma_t = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev - sigma_t ** 2) * direction
        if sigma_t > 0:
            x = x + sigma_t * noise_sampler(schedule.sigmas[ts[i]], schedule.sigmas[ts[i + 1]])
    return x


# ---- PLMS -------------------------------------------------------------------------------------------------

@torch.no_grad()
def sample_plms(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                callback: Callback | None = None, disable: bool | None = None,
                noise_sampler: NoiseSampler | None = None, schedule: DiscreteSchedule | None = None,
                is_img2img: bool = False) -> Tensor:
    """Pseudo linear multistep (PNDM, Liu et al. 2022, arXiv:2202.09778; LDM's PLMS) over A1111's
    timesteps: each step is a deterministic DDIM step (eta 0) with ε' the Adams–Bashforth combination
    of the last ε: (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24; the first step is a pseudo improved
    Euler step, ε' = (ε(x_t, t) + ε(x_t', t'))/2, so `len(timesteps)` network calls in all."""
    schedule, ts, x = _plan(schedule, x, sigmas, is_img2img)
    eps_model = _EpsModel(model, schedule, extra_args)
    ac = schedule.alphas_cumprod
    old_eps: list[Tensor] = []
    for i in range(len(ts) - 1):
        a_t, a_next = float(ac[ts[i]]), float(ac[ts[i + 1]])
        eps = eps_model(x, ts[i])
        if not old_eps:
            eps_next = eps_model(_ddim_step(x, eps, a_t, a_next), ts[i + 1])
            eps_prime = (eps + eps_next) / 2
        elif len(old_eps) == 1:
            eps_prime = (3 * eps - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        _report(callback, x, i, schedule.sigmas[ts[i]], (x - math.sqrt(1 - a_t) * eps_prime) / math.sqrt(a_t))
        x = _ddim_step(x, eps_prime, a_t, a_next)
        old_eps = (old_eps + [eps])[-3:]
    return x


def _ddim_step(x: Tensor, eps: Tensor, a_t: float, a_next: float) -> Tensor:
    pred_x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    return math.sqrt(a_next) * pred_x0 + math.sqrt(1 - a_next) * eps


# ---- UniPC ------------------------------------------------------------------------------------------------

class VPTable:
    """The continuous-time view of a discrete table that UniPC / DPM-Solver use (Lu et al. 2022,
    arXiv:2206.00927, "discrete-time DPMs"): t_n = (n+1)/N, log α(t) = ½·log ā_n interpolated linearly
    in t; σ_t = sqrt(1-α_t²), λ_t = log α_t - log σ_t. Float32, as A1111 computes it."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        self.total = alphas_cumprod.shape[0]
        self.t_grid = torch.linspace(0.0, 1.0, self.total + 1)[1:]
        self.log_alpha_grid = 0.5 * alphas_cumprod.to(torch.float32).log()

    def log_alpha(self, t: Tensor) -> Tensor:
        return _interp(t, self.t_grid, self.log_alpha_grid)

    def alpha(self, t: Tensor) -> Tensor:
        return self.log_alpha(t).exp()

    def std(self, t: Tensor) -> Tensor:
        return (1.0 - (2.0 * self.log_alpha(t)).exp()).sqrt()

    def lam(self, t: Tensor) -> Tensor:
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * (1.0 - (2.0 * log_alpha).exp()).log()

    def inverse_lam(self, lam: Tensor) -> Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        return _interp(log_alpha, self.log_alpha_grid.flip(0), self.t_grid.flip(0))

    def model_time(self, t: Tensor) -> Tensor:
        """The network's timestep for continuous t: N·(t - 1/N), so t = 1 is 999 and t = 1/N is 0."""
        return (t - 1.0 / self.total) * self.total


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear f(x) through (xp, fp), xp ascending; straight-line extension past the ends."""
    x = torch.as_tensor(x, dtype=xp.dtype)
    i = (torch.searchsorted(xp, x.reshape(-1).contiguous()) - 1).clamp(0, xp.shape[0] - 2).reshape(x.shape)
    x0, x1, y0, y1 = xp[i], xp[i + 1], fp[i], fp[i + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def unipc_time_grid(vp: VPTable, skip_type: str, t_start: float | Tensor, t_end: float, steps: int) -> Tensor:
    """UniPC's `steps + 1` continuous times from t_start down to t_end (A1111's "UniPC skip type")."""
    t_start = torch.as_tensor(t_start, dtype=torch.float32)
    if skip_type == "time_uniform":
        return torch.linspace(float(t_start), t_end, steps + 1)
    if skip_type == "time_quadratic":
        return torch.linspace(float(t_start) ** 0.5, t_end ** 0.5, steps + 1) ** 2
    if skip_type == "logSNR":
        lam_start, lam_end = vp.lam(t_start), vp.lam(torch.tensor(t_end))
        return vp.inverse_lam(torch.linspace(float(lam_start), float(lam_end), steps + 1))
    raise ValueError(f"UniPC skip type must be 'time_uniform', 'time_quadratic' or 'logSNR', got {skip_type!r}")


@torch.no_grad()
def sample_unipc(model, x: Tensor, sigmas: Tensor, *, extra_args: dict | None = None,
                 callback: Callback | None = None, disable: bool | None = None,
                 noise_sampler: NoiseSampler | None = None, schedule: DiscreteSchedule | None = None,
                 is_img2img: bool = False, order: int = 3, variant: str = "bh1",
                 skip_type: str = "time_uniform", lower_order_final: bool = True) -> Tensor:
    """UniPC, multistep data prediction with the B(h) predictor-corrector (Zhao et al. 2023,
    arXiv:2302.04867, Algorithms 2-3), as A1111 runs it: `len(timesteps)` steps from t = 1
    (img2img: from the first timestep it evaluates) down to t = 1/1000 on the continuous VP table,
    the corrector reusing the next step's network call, so one call per step. A1111's defaults:
    variant "bh1" (B(h) = h; "bh2": e^h - 1), order 3 (clamped to the step count, where A1111 refuses),
    lower order at the end, "time_uniform" steps. Returns x at model time 0, as A1111 does."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    schedule, ts, x = _plan(schedule, x, sigmas, is_img2img)
    steps = len(ts)
    if steps == 0:
        return x
    vp = VPTable(schedule.alphas_cumprod)
    t_start = (torch.tensor(ts[0], dtype=torch.float32) / vp.total + 1.0 / vp.total) if is_img2img else 1.0
    grid = unipc_time_grid(vp, skip_type, t_start, 1.0 / vp.total, steps).to(torch.float32)
    eps_model = _EpsModel(model, schedule, extra_args)

    def data_prediction(x_t: Tensor, t: Tensor) -> Tensor:
        eps = eps_model(x_t, vp.model_time(t))
        return (x_t - vp.std(t) * eps) / vp.alpha(t)

    order = max(1, min(order, steps))
    models, times = [data_prediction(x, grid[0])], [grid[0]]
    for step in range(1, steps + 1):
        step_order = step if step < order else (min(order, steps + 1 - step) if lower_order_final else order)
        x, model_t = _unipc_bh_update(vp, data_prediction, x, models, times, grid[step], step_order,
                                      use_corrector=step < steps, variant=variant)
        _report(callback, x, step - 1, vp.std(grid[step]) / vp.alpha(grid[step]), model_t if model_t is not None else x)
        if step < steps:
            models.append(model_t if model_t is not None else data_prediction(x, grid[step]))
            times.append(grid[step])
            models, times = models[-order:], times[-order:]
    return x


def _unipc_bh_update(vp: VPTable, data_prediction, x: Tensor, models: list[Tensor], times: list[Tensor],
                     t: Tensor, order: int, *, use_corrector: bool, variant: str) -> tuple[Tensor, Tensor | None]:
    """One UniP-p step from times[-1] to t, then (optionally) UniC-p with the model at the new point."""
    t_s = times[-1]
    lam_s, lam_t = vp.lam(t_s), vp.lam(t)
    h = lam_t - lam_s
    m_s = models[-1]
    rks, d1s = [], []
    for i in range(1, order):
        rk = (vp.lam(times[-(i + 1)]) - lam_s) / h
        rks.append(rk)
        d1s.append((models[-(i + 1)] - m_s) / rk)
    rks.append(torch.tensor(1.0))
    hh = -h  # data prediction
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rk_vec = torch.stack(rks).to(torch.float32)
    rows, b = [], []
    factorial = 1
    for i in range(1, order + 1):
        rows.append(rk_vec ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r_mat, b_vec = torch.stack(rows), torch.stack(b)

    alpha_t = vp.alpha(t)
    x_base = (vp.std(t) / vp.std(t_s)) * x - alpha_t * h_phi_1 * m_s
    x_t = x_base
    if d1s:
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b_vec[:-1])
        x_t = x_base - alpha_t * b_h * sum(r * d for r, d in zip(rhos_p, d1s))
    if not use_corrector:
        return x_t, None
    model_t = data_prediction(x_t, t)
    rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r_mat, b_vec)
    corr = sum(r * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0
    return x_base - alpha_t * b_h * (corr + rhos_c[-1] * (model_t - m_s)), model_t
