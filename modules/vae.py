"""Pixels ⇄ latents: scaling, tiling for large images, NaN recovery, and cheap previews.

Images are float tensors in [0, 1], shape [B, 3, H, W]; latents are the *scaled* latents the UNet sees
(`(z - shift) * scaling`). Decoding that produces NaN (fp16/bf16 overflow in some VAEs) is retried once
in fp32, which is what A1111's `--no-half-vae` advice would have made the user do by hand.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from modules.nn.vae import AutoencoderKL

log = logging.getLogger(__name__)

# A1111's "Approx cheap" latent → RGB factors (a fixed linear map per family's latent space).
CHEAP_PREVIEW_FACTORS = {
    "SD1": ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)),
    "SDXL": ((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250), (0.1074, 0.0886, -0.0163), (-0.3730, -0.2499, -0.2088)),
}
CHEAP_PREVIEW_FACTORS["SD2"] = CHEAP_PREVIEW_FACTORS["SD1"]
CHEAP_PREVIEW_FACTORS["SDXL Refiner"] = CHEAP_PREVIEW_FACTORS["SDXL"]


def cheap_preview(latents: torch.Tensor, family_name: str) -> torch.Tensor:
    """[B,4,h,w] latents → [B,3,h,w] RGB in [0,1] with one matrix multiply; for live previews."""
    factors = torch.tensor(CHEAP_PREVIEW_FACTORS.get(family_name, CHEAP_PREVIEW_FACTORS["SD1"]), dtype=torch.float32)
    rgb = torch.einsum("bchw,cr->brhw", latents.float().cpu(), factors)
    return ((rgb + 1) / 2).clamp(0, 1)


def _blend_mask(h: int, w: int, overlap_h: int, overlap_w: int, edges: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    """Linear ramps on the sides that touch another tile (top, bottom, left, right)."""
    wy = torch.ones(h)
    wx = torch.ones(w)
    top, bottom, left, right = edges
    if top and overlap_h:
        wy[:overlap_h] = torch.linspace(0, 1, overlap_h + 2)[1:-1]
    if bottom and overlap_h:
        wy[-overlap_h:] = torch.linspace(1, 0, overlap_h + 2)[1:-1]
    if left and overlap_w:
        wx[:overlap_w] = torch.linspace(0, 1, overlap_w + 2)[1:-1]
    if right and overlap_w:
        wx[-overlap_w:] = torch.linspace(1, 0, overlap_w + 2)[1:-1]
    return wy[:, None] * wx[None, :]


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def tiled_apply(fn, x: torch.Tensor, tile: int, overlap: int, scale: float, out_channels: int) -> torch.Tensor:
    """Run `fn` on overlapping tiles of x ([B,C,H,W]) and blend the outputs with linear ramps.

    `scale` is output size / input size (8 for decode, 1/8 for encode)."""
    b, _, h, w = x.shape
    out_h, out_w = round(h * scale), round(w * scale)
    out = torch.zeros(b, out_channels, out_h, out_w, dtype=torch.float32)
    weight = torch.zeros(1, 1, out_h, out_w, dtype=torch.float32)
    ys, xs = _tile_starts(h, tile, overlap), _tile_starts(w, tile, overlap)
    for y in ys:
        for x0 in xs:
            th, tw = min(tile, h), min(tile, w)
            piece = fn(x[:, :, y : y + th, x0 : x0 + tw]).float().cpu()
            oy, ox = round(y * scale), round(x0 * scale)
            ph, pw = piece.shape[-2:]
            edges = (y > 0, y + th < h, x0 > 0, x0 + tw < w)
            mask = _blend_mask(ph, pw, round(overlap * scale), round(overlap * scale), edges)
            out[:, :, oy : oy + ph, ox : ox + pw] += piece * mask
            weight[:, :, oy : oy + ph, ox : ox + pw] += mask
    return out / weight.clamp_min(1e-8)


class VAE:
    """The autoencoder plus its latent scaling; owns dtype/device decisions for encode and decode."""

    def __init__(
        self,
        model: AutoencoderKL,
        *,
        scaling: float,
        shift: float = 0.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.model = model
        self.scaling = scaling
        self.shift = shift
        self.dtype = dtype
        self.device = torch.device(device)

    def _as_model_dtype(self, dtype: torch.dtype) -> None:
        if next(self.model.parameters()).dtype != dtype:
            self.model.to(dtype)
            self.dtype = dtype

    def _decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z.to(self.device, self.dtype))

    def _encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.model.encode(x.to(self.device, self.dtype))
        mean, _logvar = torch.chunk(moments, 2, dim=1)
        return mean

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, *, tile_latent: int | None = None) -> torch.Tensor:
        """Scaled latents → images in [0,1]. Large latents are decoded in tiles when `tile_latent` is set."""
        z = latents / self.scaling + self.shift
        images = self._run(self._decode_raw, z, tile_latent, 8.0, 3)
        return ((images.float() + 1) / 2).clamp(0, 1).cpu()

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, *, tile_pixels: int | None = None) -> torch.Tensor:
        """Images in [0,1] → scaled latents (the distribution's mean, deterministic as A1111's img2img)."""
        x = images * 2 - 1
        tile = tile_pixels
        latent_channels = self.model.config.embed_dim
        z = self._run(self._encode_raw, x, tile, 1 / 8, latent_channels)
        return ((z.float() - self.shift) * self.scaling).cpu()

    def _run(self, fn, x: torch.Tensor, tile: int | None, scale: float, out_channels: int) -> torch.Tensor:
        def go() -> torch.Tensor:
            if tile and max(x.shape[-2:]) > tile:
                return tiled_apply(fn, x, tile, max(tile // 4, 1), scale, out_channels)
            return fn(x)

        out = go()
        if torch.isnan(out).any() and self.dtype != torch.float32:
            log.warning("VAE produced NaN in %s; retrying in fp32", self.dtype)
            self._as_model_dtype(torch.float32)
            out = go()
        return out
