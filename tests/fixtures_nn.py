"""Tiny UNet / VAE configs with the real key layout, for fast CPU tests anywhere in the suite.

The head layout follows the family (SD1: 8 heads; SD2/SDXL: 64-channel heads), so a tiny model saved and
reloaded through family detection computes the same thing. The family *signatures* in
modules/families need real widths for SD2/SDXL (context 1024; context 2048 + ADM 2816): pass
`context_dim=` / `adm_in_channels=` when a test goes through detection.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modules.nn.unet import UNetConfig
from modules.nn.vae import VAEConfig


def tiny_unet_config(family: str = "sd1", **overrides: Any) -> UNetConfig:
    """Two levels, one ResBlock each. sd1: widths 32/64, attention on both levels, conv projections,
    context 32. sd2: widths 64/128, linear projections, context 1024. sdxl: widths 32/64, attention only
    on level 1 (one 64-wide head), linear projections, context 64, ADM vector of 48."""
    if family == "sd1":
        base = UNetConfig(
            in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
            transformer_depth=(1, 1), transformer_depth_middle=1, transformer_depth_output=(1, 1, 1, 1),
            context_dim=32, num_heads=8,
        )
    elif family == "sd2":
        base = UNetConfig(
            in_channels=4, out_channels=4, model_channels=64, channel_mult=(1, 2), num_res_blocks=(1, 1),
            transformer_depth=(1, 1), transformer_depth_middle=1, transformer_depth_output=(1, 1, 1, 1),
            context_dim=1024, num_head_channels=64, use_linear_in_transformer=True,
        )
    elif family == "sdxl":
        base = UNetConfig(
            in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
            transformer_depth=(0, 1), transformer_depth_middle=1, transformer_depth_output=(1, 1, 0, 0),
            context_dim=64, num_head_channels=64, use_linear_in_transformer=True, adm_in_channels=48,
        )
    else:
        raise ValueError(f"unknown tiny family {family!r} (sd1, sd2, sdxl)")
    return UNetConfig(**{**base.__dict__, **overrides})


def tiny_vae_config(**overrides: Any) -> VAEConfig:
    """Four levels (so the real 8× factor), widths 32/32/64/64, one ResBlock per level, 4 latents."""
    values = dict(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=4, embed_dim=4)
    return VAEConfig(**{**values, **overrides})


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Fill every parameter with seeded noise (norm weights around 1). LDM zero-initialises the last
    conv of each residual branch and the UNet's output conv, so a freshly built UNet outputs zeros;
    tests that need a non-trivial function randomise it first."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std
        is_norm_weight = name.endswith("weight") and p.ndim == 1
        p.copy_((noise + 1.0 if is_norm_weight else noise).to(p.dtype))
    return module
