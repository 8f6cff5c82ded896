"""The denoiser the samplers call: network adapters (eps / v) plus classifier-free guidance.

`GuidedDenoiser(x, sigma) -> denoised` is k-diffusion's denoiser contract. Each call:
1. picks the conditioning active at this call (prompt editing; A1111 counts denoiser *calls*, so a
   second-order sampler advances the schedule twice per step — kept for reproducibility),
2. runs positive and negative conditioning through the UNet as one batch when their token counts
   agree (else as two calls, as A1111 does),
3. combines them: uncond + Σ_k w_k · cfg · (cond_k − uncond) (composable diffusion for `AND`,
   Liu et al. 2022, arXiv:2206.01714; plain CFG, Ho & Salimans 2022, when there is one prompt).
With cfg_scale 1 and a single positive prompt the unconditional pass is skipped.

Hooks from the UNet's ModelPatcher enter here: "post_cfg" callables `(denoised, x, sigma) -> denoised`.
ControlNet residuals will ride in `control_fn(x_in, t, cond_batch) -> dict` (the UNet's `control`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from modules.conditioning import EncodedPlan, stack_cross_attn
from modules.sampling.denoiser import cfg_combine
from modules.types import Conditioning


@dataclass
class NetworkAdapter:
    """Wraps the UNet as k-diffusion's discrete-time denoiser (Karras et al. 2022, arXiv:2206.00364, Table 1).

    eps: D(x, σ) = x − σ·F(x·c_in, t(σ)); v: D = c_skip·x + c_out·F with c_skip = 1/(σ²+1),
    c_out = −σ/√(σ²+1); c_in = 1/√(σ²+1) in both."""

    unet: torch.nn.Module
    sigma_to_t: Callable[[torch.Tensor], torch.Tensor]
    prediction: str = "eps"
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    extra_channels: torch.Tensor | None = None  # inpainting / pix2pix image conditioning, concatenated

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None,
                 control: dict | None = None) -> torch.Tensor:
        sigma = sigma.to(torch.float32)
        s = sigma.view(-1, 1, 1, 1)
        c_in = 1 / (s**2 + 1) ** 0.5
        x_in = (x * c_in)
        if self.extra_channels is not None:
            extra = self.extra_channels.repeat(x.shape[0] // self.extra_channels.shape[0], 1, 1, 1)
            x_in = torch.cat([x_in, extra.to(x_in)], dim=1)
        t = self.sigma_to_t(sigma)
        with torch.inference_mode():
            raw = self.unet(
                x_in.to(self.device, self.dtype),
                t.to(self.device),
                context.to(self.device, self.dtype),
                y=None if y is None else y.to(self.device, self.dtype),
                control=control,
            ).to(x.device, torch.float32)
        if self.prediction == "v":
            return x * (1 / (s**2 + 1)) + raw * (-s / (s**2 + 1) ** 0.5)
        return x - raw * s


def _batch(conds: list[Conditioning]) -> tuple[torch.Tensor, torch.Tensor | None]:
    context = stack_cross_attn([c.cross_attn for c in conds])
    ys = [c.adm for c in conds]
    y = torch.cat(ys, dim=0) if all(v is not None for v in ys) else None
    return context, y


class GuidedDenoiser:
    """k-diffusion denoiser with CFG over a batch of images, each with its own (scheduled) prompts."""

    def __init__(
        self,
        network: NetworkAdapter,
        positive: EncodedPlan,
        negative: EncodedPlan,
        cfg_scale: float,
        *,
        post_cfg: tuple[Callable[..., torch.Tensor], ...] = (),
        step_offset: int = 0,
        always_uncond: bool = False,
    ) -> None:
        self.network = network
        self.positive = positive
        self.negative = negative
        self.cfg_scale = float(cfg_scale)
        self.post_cfg = post_cfg
        self.step = step_offset
        self.always_uncond = always_uncond  # CFG++ samplers need the negative prediction every step
        self.last_uncond: torch.Tensor | None = None  # for CFG++ samplers

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        batch = x.shape[0]
        sigma = sigma.reshape(-1).expand(batch) if sigma.numel() in (1, batch) else sigma
        pos = self.positive.at_step(self.step)
        neg = self.negative.at_step(self.step)
        self.step += 1
        if len(pos) == 1 and batch > 1:  # one prompt for the whole batch
            pos, neg = pos * batch, neg * batch
        single = all(len(p) == 1 and p[0][1] == 1.0 for p in pos)
        skip_uncond = self.cfg_scale == 1.0 and single and not self.always_uncond

        cond_rows = [(i, c, w) for i, item in enumerate(pos) for c, w in item]
        index = torch.tensor([i for i, _, _ in cond_rows])
        cond_x, cond_sigma = x[index], sigma[index]
        conds = [c for _, c, _ in cond_rows]
        if skip_uncond:
            out = self.network(cond_x, cond_sigma, *_batch(conds))
            denoised = out
            uncond = None
        else:
            unconds = [item[0][0] for item in neg]
            ctx_c, y_c = _batch(conds)
            ctx_u, y_u = _batch(unconds)
            if ctx_c.shape[1] == ctx_u.shape[1]:
                y = torch.cat([y_c, y_u]) if y_c is not None else None
                out_all = self.network(torch.cat([cond_x, x]), torch.cat([cond_sigma, sigma]), torch.cat([ctx_c, ctx_u]), y)
                out, uncond = out_all[: len(cond_rows)], out_all[len(cond_rows):]
            else:
                out = self.network(cond_x, cond_sigma, ctx_c, y_c)
                uncond = self.network(x, sigma, ctx_u, y_u)
            denoised = cfg_combine(uncond, out, [i for i, _, _ in cond_rows], [w for _, _, w in cond_rows], self.cfg_scale)
        self.last_uncond = uncond
        for hook in self.post_cfg:
            denoised = hook(denoised, x, sigma)
        return denoised
