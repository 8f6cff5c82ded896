"""The denoiser the samplers call: `D(x, sigma) -> denoised`, k-diffusion's contract.

Three layers, each usable alone:

1. `DiscreteSchedule` — the DDPM noise table of a discrete-time model (1000 betas → alphas_cumprod →
   sigmas) with k-diffusion's fractional `sigma_to_t` (interpolated in log sigma between table
   entries; A1111 behaviour, where ComfyUI rounds to the nearest entry).
2. `EpsDenoiser` / `VDenoiser` — wrap a network call `apply_model(x_in, t, cond, **kw) -> raw output`
   into a denoiser with the preconditioning of Karras et al. 2022 (arXiv:2206.00364, Table 1,
   "VP/DDPM" column): c_in = 1/sqrt(sigma^2+1); eps: D = x - sigma*F; v (Salimans & Ho 2022,
   arXiv:2202.00512): D = c_skip*x + c_out*F with c_skip = 1/(sigma^2+1), c_out = -sigma/sqrt(sigma^2+1).
3. `CFGDenoiser` — classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598) with several
   weighted positive prompts (composable diffusion, Liu et al. 2022, arXiv:2206.01714; A1111's `AND`):
   denoised = uncond + sum_k w_k * cfg * (cond_k - uncond). The maths is `cfg_combine`, which the
   pipeline's `modules.guidance.GuidedDenoiser` (per-image scheduled prompts) shares.

Hook points (`DenoiserHooks`), for ControlNet, extensions and the like:
- `pre_model`: `(x_in, sigma_in, cond_in) -> Mapping | None` runs before every network call on the
  exact batch that goes in (positive and negative rows together); a returned mapping is passed to
  `apply_model` as extra keyword arguments (ControlNet returns `{"control": residuals}`).
- `post_cfg`: `(x, sigma, denoised) -> denoised` runs after the guidance combination.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence, Union

import torch
from torch import Tensor

# The network call that adapters wrap: scaled input, fractional timestep, conditioning → raw output.
ApplyModel = Callable[..., Tensor]
PreModelHook = Callable[[Tensor, Tensor, Any], "Mapping[str, Any] | None"]
PostCFGHook = Callable[[Tensor, Tensor, Tensor], Tensor]


class Denoiser(Protocol):
    """What every sampler calls: `model(x, sigma_per_sample, **extra_args) -> denoised`."""

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor: ...


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so `v` ([B] or scalar) broadcasts against an `ndim` tensor."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / append_dims(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x.ndim)


def per_sample_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """A scalar or [B] sigma as a float tensor of shape [B] on x's device (float32 unless already float)."""
    sigma = torch.as_tensor(sigma, device=x.device)
    if not sigma.is_floating_point():
        sigma = sigma.float()
    if sigma.ndim == 0 or sigma.numel() == 1:
        return sigma.reshape(1).expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape [{x.shape[0]}], got {tuple(sigma.shape)}")
    return sigma


# ---- the noise table ----------------------------------------------------------------------------

class DiscreteSchedule:
    """A discrete-time DDPM noise table (Ho et al. 2020, arXiv:2006.11239) in k-diffusion's sigma form.

    `sigmas[t] = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])`, ascending in t. Numerics follow
    LDM + k-diffusion (what A1111 runs): betas and their cumulative product in float64, the product
    stored as float32, sigmas and log-sigmas computed from it in float32.
    `family` only picks family-specific published schedules (Align Your Steps: "sdxl" vs the rest).
    """

    def __init__(
        self,
        betas: Tensor | None = None,
        *,
        alphas_cumprod: Tensor | None = None,
        zero_terminal_snr: bool = False,
        family: str = "sd1",
    ) -> None:
        if alphas_cumprod is None:
            if betas is None:
                betas = scaled_linear_betas()
            betas = torch.as_tensor(betas, dtype=torch.float64)
            alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if zero_terminal_snr:
            alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
        self.betas = None if betas is None else torch.as_tensor(betas, dtype=torch.float64)
        self.alphas_cumprod = alphas_cumprod.to(torch.float32)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self.zero_terminal_snr = zero_terminal_snr
        self.family = family

    @classmethod
    def scaled_linear(cls, linear_start: float = 0.00085, linear_end: float = 0.012, timesteps: int = 1000,
                      **kwargs: Any) -> "DiscreteSchedule":
        """LDM's "linear" schedule (linear in sqrt(beta)), used by SD 1.x, 2.x and SDXL."""
        return cls(scaled_linear_betas(linear_start, linear_end, timesteps), **kwargs)

    @classmethod
    def sd_default(cls, **kwargs: Any) -> "DiscreteSchedule":
        """The Stable Diffusion table (SD1/SD2/SDXL all share it)."""
        return cls.scaled_linear(**kwargs)

    def __len__(self) -> int:
        return self.sigmas.shape[0]

    @property
    def num_timesteps(self) -> int:
        return self.sigmas.shape[0]

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor | float) -> Tensor:
        """Fractional timestep: linear interpolation in log sigma between neighbouring table entries.

        Sigmas outside the table clamp to t = 0 or t = len - 1 (sigma = 0 gives t = 0)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.log()
        low = torch.searchsorted(log_sigmas, log_sigma.reshape(-1).contiguous(), right=True) - 1
        low = low.clamp(0, log_sigmas.shape[0] - 2).reshape(sigma.shape)
        lo, hi = log_sigmas[low], log_sigmas[low + 1]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return (1 - w) * low + w * (low + 1)

    def t_to_sigma(self, t: Tensor | float) -> Tensor:
        """Inverse of `sigma_to_t`: interpolate log sigma between floor(t) and ceil(t)."""
        t = torch.as_tensor(t, dtype=torch.float32)
        log_sigmas = self.log_sigmas.to(t.device)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


    def get_sigmas(self, n: int) -> Tensor:
        """k-diffusion's own schedule: n timesteps evenly spaced from the last to 0, then a final 0."""
        t = torch.linspace(len(self) - 1, 0, n)
        return torch.cat([self.t_to_sigma(t), torch.zeros(1)])


class LCMSchedule(DiscreteSchedule):
    """The table A1111 samples LCM with (its LCMCompVisDenoiser; Luo et al. 2023, arXiv:2310.04378):
    the `original_steps` (50) timesteps 19, 39, ..., 999 of the base table. `sigma_to_t` snaps to the
    nearest of them and returns the base model's timestep; `t_to_sigma` maps back. Schedules built on
    it (Automatic/Uniform/Normal...) step through those 50 noise levels, as in A1111.
    (A1111 also applies LCM's boundary scaling c_skip = 0.25/((10t)^2+0.25), below 1e-5 for t >= 19;
    that is not reproduced.)"""

    def __init__(self, base: DiscreteSchedule | None = None, original_steps: int = 50) -> None:
        base = base if base is not None else DiscreteSchedule.sd_default()
        total = base.num_timesteps
        self.skip_steps = total // original_steps
        index = [total - 1 - k * self.skip_steps for k in range(original_steps)][::-1]
        super().__init__(alphas_cumprod=base.alphas_cumprod[index], family=base.family)

    def sigma_to_t(self, sigma: Tensor | float) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        dists = (sigma.log().reshape(-1, 1) - self.log_sigmas.to(sigma.device)).abs()
        nearest = dists.argmin(dim=1).reshape(sigma.shape)
        return (nearest * self.skip_steps + (self.skip_steps - 1)).to(torch.float32)

    def t_to_sigma(self, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float32)
        local = ((t - (self.skip_steps - 1)) / self.skip_steps).clamp(0, len(self) - 1)
        return super().t_to_sigma(local)

    def get_sigmas(self, n: int) -> Tensor:
        start, end = self.sigma_to_t(torch.tensor(self.sigma_max)), self.sigma_to_t(torch.tensor(self.sigma_min))
        return torch.cat([self.t_to_sigma(torch.linspace(float(start), float(end), n)), torch.zeros(1)])


def scaled_linear_betas(linear_start: float = 0.00085, linear_end: float = 0.012, timesteps: int = 1000) -> Tensor:
    """betas = linspace(sqrt(start), sqrt(end), T)^2 in float64 (LDM `make_beta_schedule("linear")`)."""
    return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Shift/scale sqrt(alphas_cumprod) so the last step has zero SNR (Lin et al. 2023, arXiv:2305.08891,
    Algorithm 1). The final value is then set to a tiny positive number (A1111's 4.8973e-08) so that
    sigma_max stays finite for k-diffusion samplers."""
    a = alphas_cumprod.to(torch.float64).sqrt()
    a0, a_last = a[0].clone(), a[-1].clone()
    a = (a - a_last) * a0 / (a0 - a_last)
    out = a ** 2
    out[-1] = 4.8973451890853435e-08
    return out


# ---- network adapters --------------------------------------------------------------------------

class _DiscreteDenoiser:
    """Shared part of the eps / v adapters: scalings, timestep conversion, the network call."""

    prediction = "eps"

    def __init__(self, apply_model: ApplyModel, schedule: DiscreteSchedule | None = None) -> None:
        self.apply_model = apply_model
        self.schedule = schedule if schedule is not None else DiscreteSchedule.sd_default()

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    def sigma_to_t(self, sigma: Tensor | float) -> Tensor:
        return self.schedule.sigma_to_t(sigma)

    def t_to_sigma(self, t: Tensor | float) -> Tensor:
        return self.schedule.t_to_sigma(t)

    def _raw(self, x: Tensor, sigma: Tensor, cond: Any, kwargs: Mapping[str, Any]) -> Tensor:
        c_in = append_dims(1 / (sigma ** 2 + 1) ** 0.5, x.ndim).to(x.dtype)
        t = self.schedule.sigma_to_t(sigma)
        return self.apply_model(x * c_in, t, cond, **kwargs)


class EpsDenoiser(_DiscreteDenoiser):
    """Epsilon-prediction network → denoiser: D(x, sigma) = x - sigma * eps(x / sqrt(sigma^2+1), t(sigma))
    (Karras et al. 2022, arXiv:2206.00364, Table 1; k-diffusion's DiscreteEpsDDPMDenoiser)."""

    prediction = "eps"

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None, **kwargs: Any) -> Tensor:
        sigma = per_sample_sigma(sigma, x)
        eps = self._raw(x, sigma, cond, kwargs)
        return x - eps.to(x.dtype) * append_dims(sigma, x.ndim).to(x.dtype)


class VDenoiser(_DiscreteDenoiser):
    """v-prediction network → denoiser (Salimans & Ho 2022, arXiv:2202.00512; k-diffusion's
    DiscreteVDDPMDenoiser with sigma_data = 1): D = x/(sigma^2+1) - v * sigma/sqrt(sigma^2+1)."""

    prediction = "v"

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None, **kwargs: Any) -> Tensor:
        sigma = per_sample_sigma(sigma, x)
        v = self._raw(x, sigma, cond, kwargs)
        s = append_dims(sigma, x.ndim).to(x.dtype)
        c_skip = 1 / (s ** 2 + 1)
        c_out = -s / (s ** 2 + 1) ** 0.5
        return x * c_skip + v.to(x.dtype) * c_out


def make_denoiser(apply_model: ApplyModel, schedule: DiscreteSchedule | None = None,
                  prediction: str = "eps") -> _DiscreteDenoiser:
    """`EpsDenoiser` or `VDenoiser` by prediction type ("eps" / "epsilon" or "v" / "v_prediction")."""
    kind = {"eps": EpsDenoiser, "epsilon": EpsDenoiser, "v": VDenoiser, "v_prediction": VDenoiser}.get(prediction)
    if kind is None:
        raise ValueError(f"unknown prediction type {prediction!r}; expected 'eps' or 'v'")
    return kind(apply_model, schedule)


# ---- conditioning batches ------------------------------------------------------------------------

class CondBatch(Mapping):
    """Conditioning as named tensors that share a leading batch dimension (e.g. `{"c_crossattn": ...,
    "y": ...}`). It is a read-only mapping, plus batch helpers: `select`, `repeat_to`, `CondBatch.cat`.
    `None` values are allowed and stay `None`."""

    def __init__(self, tensors: Mapping[str, Tensor | None]) -> None:
        self._data = dict(tensors)
        sizes = {k: v.shape[0] for k, v in self._data.items() if v is not None}
        if not sizes:
            raise ValueError("a CondBatch needs at least one tensor")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"CondBatch tensors disagree on the batch size: {sizes}")
        self.batch_size = next(iter(sizes.values()))

    def __getitem__(self, key: str) -> Tensor | None:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        shapes = {k: None if v is None else tuple(v.shape) for k, v in self._data.items()}
        return f"CondBatch({shapes})"

    def select(self, index: Tensor | slice) -> "CondBatch":
        return CondBatch({k: None if v is None else v[index] for k, v in self._data.items()})

    def repeat_to(self, n: int) -> "CondBatch":
        return CondBatch({k: None if v is None else _repeat_rows(v, n) for k, v in self._data.items()})

    @staticmethod
    def cat(items: Sequence["CondBatch"]) -> "CondBatch":
        keys = list(items[0].keys())
        if any(list(c.keys()) != keys for c in items):
            raise CondMismatch(f"conditionings have different entries: {[list(c.keys()) for c in items]}")
        out: dict[str, Tensor | None] = {}
        for k in keys:
            values = [c[k] for c in items]
            if all(v is None for v in values):
                out[k] = None
            elif any(v is None for v in values):
                raise CondMismatch(f"entry {k!r} is missing in some conditionings")
            else:
                out[k] = _cat_tensors(values, k)
        return CondBatch(out)


Cond = Union[Tensor, CondBatch]


class CondMismatch(ValueError):
    """Conditionings that cannot be concatenated into one batch (e.g. different token counts)."""


def _repeat_rows(t: Tensor, n: int) -> Tensor:
    if t.shape[0] == n:
        return t
    if t.shape[0] == 1:
        return t.expand(n, *t.shape[1:])
    raise ValueError(f"conditioning has batch size {t.shape[0]}; expected 1 or {n}")


def _cat_tensors(values: Sequence[Tensor], name: str = "conditioning") -> Tensor:
    if len({tuple(v.shape[1:]) for v in values}) != 1:
        raise CondMismatch(f"{name} shapes differ beyond the batch dim: {[tuple(v.shape) for v in values]}")
    return torch.cat(list(values), dim=0)


def as_cond(cond: Any) -> Cond:
    """Tensor or CondBatch as is; a plain mapping of tensors becomes a CondBatch."""
    if isinstance(cond, (Tensor, CondBatch)):
        return cond
    if isinstance(cond, Mapping):
        return CondBatch(cond)
    raise TypeError(f"conditioning must be a Tensor, a CondBatch or a mapping of tensors, got {type(cond).__name__}")


def cond_repeat_to(cond: Cond, n: int) -> Cond:
    return cond.repeat_to(n) if isinstance(cond, CondBatch) else _repeat_rows(cond, n)


def cond_cat(conds: Sequence[Cond]) -> Cond:
    """Concatenate along the batch dim; raises `CondMismatch` when they cannot share one batch."""
    if all(isinstance(c, CondBatch) for c in conds):
        return CondBatch.cat(conds)  # type: ignore[arg-type]
    if all(isinstance(c, Tensor) for c in conds):
        return _cat_tensors(conds)  # type: ignore[arg-type]
    raise CondMismatch("cannot mix Tensor and CondBatch conditionings in one batch")


# ---- classifier-free guidance ----------------------------------------------------------------------

def cfg_combine(uncond: Tensor, conds: Tensor, rows: Sequence[int], weights: Sequence[float],
                cfg_scale: float) -> Tensor:
    """Guidance over a batch: image i gets uncond[i] + sum of w_r * cfg_scale * (conds[r] - uncond[i]) over
    the cond rows r with rows[r] == i (A1111's `combine_denoised`; the sum runs in row order, as there).
    `uncond` [B, ...]; `conds` [R, ...], one row per (image, positive prompt) with weight `weights[r]`."""
    if conds.shape[0] != len(rows) or len(rows) != len(weights):
        raise ValueError(f"cfg_combine: {conds.shape[0]} cond rows, {len(rows)} image indices, {len(weights)} weights")
    denoised = uncond.clone()
    for r, (i, weight) in enumerate(zip(rows, weights)):
        denoised[i] += (conds[r] - uncond[i]) * (weight * cfg_scale)
    return denoised


@dataclass(frozen=True)
class DenoiserHooks:
    """Extension points of `CFGDenoiser` (see the module docstring for the signatures)."""

    pre_model: tuple[PreModelHook, ...] = ()
    post_cfg: tuple[PostCFGHook, ...] = ()


class CFGDenoiser:
    """Classifier-free guidance around an inner denoiser `inner(x, sigma, cond=..., **kw) -> denoised`.

    `cond` is one conditioning (weight 1) or a sequence of `(cond, weight)` terms (A1111's `AND`);
    each conditioning is a Tensor or `CondBatch` with batch size 1 (shared by every image) or B.
    With `batch_cond_uncond` all terms and the negative run as one network batch when their shapes
    allow it (else one call per term, as A1111 does for prompts of different lengths).
    With cfg_scale == 1 and a single weight-1 term the negative is not evaluated at all (unless
    `always_uncond`, which CFG++ samplers want). `last_uncond` keeps the negative branch's denoised
    prediction of the latest call (for CFG++).
    """

    def __init__(
        self,
        inner: Callable[..., Tensor],
        cond: Any,
        uncond: Any,
        cfg_scale: float,
        *,
        batch_cond_uncond: bool = True,
        hooks: DenoiserHooks | None = None,
        always_uncond: bool = False,
    ) -> None:
        self.inner = inner
        self.always_uncond = always_uncond
        if isinstance(cond, (list, tuple)):
            terms = [(as_cond(c), float(w)) for c, w in cond]
            if not terms:
                raise ValueError("CFGDenoiser needs at least one positive conditioning")
        else:
            terms = [(as_cond(cond), 1.0)]
        self.terms = terms
        self.uncond = as_cond(uncond) if uncond is not None else None
        self.cfg_scale = float(cfg_scale)
        self.batch_cond_uncond = batch_cond_uncond
        self.hooks = hooks or DenoiserHooks()
        self.last_uncond: Tensor | None = None
        self.calls = 0  # network calls made so far (one per batch sent to `inner`)

    @property
    def skips_uncond(self) -> bool:
        if self.uncond is None:
            return True
        single = len(self.terms) == 1 and self.terms[0][1] == 1.0
        return not self.always_uncond and self.cfg_scale == 1.0 and single

    def __call__(self, x: Tensor, sigma: Tensor | float, **kwargs: Any) -> Tensor:
        batch = x.shape[0]
        sigma = per_sample_sigma(sigma, x)
        skip = self.skips_uncond
        parts = [(x, sigma, cond_repeat_to(c, batch)) for c, _ in self.terms]
        if not skip:
            parts.append((x, sigma, cond_repeat_to(self.uncond, batch)))  # type: ignore[arg-type]
        outs = self._run(parts, kwargs)
        if skip:
            self.last_uncond = None
            denoised = outs[0]
        else:
            uncond = outs[-1]
            self.last_uncond = uncond
            rows = [i for _ in self.terms for i in range(batch)]
            weights = [w for _, w in self.terms for _ in range(batch)]
            denoised = cfg_combine(uncond, torch.cat(outs[:-1]), rows, weights, self.cfg_scale)
        for hook in self.hooks.post_cfg:
            denoised = hook(x, sigma, denoised)
        return denoised

    def _run(self, parts: list[tuple[Tensor, Tensor, Cond]], kwargs: Mapping[str, Any]) -> list[Tensor]:
        """Evaluate the inner denoiser on each (x, sigma, cond) part; one batch when possible."""
        if self.batch_cond_uncond and len(parts) > 1:
            try:
                cond_in = cond_cat([c for _, _, c in parts])
            except CondMismatch:
                cond_in = None
            if cond_in is not None:
                x_in = torch.cat([p[0] for p in parts])
                sigma_in = torch.cat([p[1] for p in parts])
                return list(self._call(x_in, sigma_in, cond_in, kwargs).split(parts[0][0].shape[0]))
        return [self._call(x, s, c, kwargs) for x, s, c in parts]

    def _call(self, x_in: Tensor, sigma_in: Tensor, cond_in: Cond, kwargs: Mapping[str, Any]) -> Tensor:
        extra = dict(kwargs)
        for hook in self.hooks.pre_model:
            more = hook(x_in, sigma_in, cond_in)
            if more:
                extra.update(more)
        self.calls += 1
        return self.inner(x_in, sigma_in, cond=cond_in, **extra)
