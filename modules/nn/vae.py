"""The latent-diffusion KL autoencoder (LDM `AutoencoderKL`) with the original key names, so
`first_stage_model.*` tensors (and standalone VAE files, which have no prefix) load one to one.

After Rombach et al. 2022 (CompVis/latent-diffusion, `ldm/modules/diffusionmodules/model.py`): a conv
encoder that halves the resolution at every level but the last, a mid block with one single-head
self-attention, and a mirrored decoder. Key layout:
  encoder.conv_in, encoder.down.N.block.M, encoder.down.N.downsample.conv, encoder.mid.{block_1,attn_1,block_2},
  encoder.norm_out, encoder.conv_out, quant_conv, post_quant_conv,
  decoder.conv_in, decoder.mid.*, decoder.up.N.block.M, decoder.up.N.upsample.conv, decoder.norm_out, decoder.conv_out
The decoder's `up` list is indexed by *resolution level*, not by execution order: `up.0` is the last
block run (full resolution, no upsample) and `up.{L-1}` the first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from modules.nn.attention import spatial_attention
from modules.nn.unet import GroupNorm32, tensor_shape


@dataclass(frozen=True)
class VAEConfig:
    """Autoencoder shape. Defaults are the SD1/SD2/SDXL VAE (ch 128, ×(1,2,4,4), 2 blocks, 4 latents)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    in_channels: int = 3
    out_ch: int = 3
    use_quant_conv: bool = True  # SD3/Flux-style VAEs have no quant convs

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))

    @property
    def downscale(self) -> int:
        """Pixels per latent along each side (8 for every SD VAE)."""
        return 2 ** (len(self.ch_mult) - 1)


SD_VAE = VAEConfig()


def vae_config_from_state_dict(sd: Mapping[str, Any], prefix: str = "first_stage_model.") -> VAEConfig:
    """Read the autoencoder's widths from tensor shapes (meta tensors and lazy slices are fine)."""
    keys = {k[len(prefix):]: k for k in sd.keys() if k.startswith(prefix)}

    def shape(key: str) -> tuple[int, ...]:
        if key not in keys:
            raise KeyError(f"{prefix}{key} missing")
        return tensor_shape(sd[keys[key]])

    def count(pattern: str) -> int:
        n = 0
        while any(k.startswith(pattern.format(n)) for k in keys):
            n += 1
        return n

    ch, in_channels = shape("encoder.conv_in.weight")[:2]
    levels = count("encoder.down.{}.")
    ch_mult = tuple(shape(f"encoder.down.{i}.block.0.conv1.weight")[0] // ch for i in range(levels))
    num_res_blocks = count("encoder.down.0.block.{}.")
    z_channels = shape("decoder.conv_in.weight")[1]
    use_quant = "quant_conv.weight" in keys
    embed_dim = shape("quant_conv.weight")[0] // 2 if use_quant else z_channels
    if count("decoder.up.{}.") != levels or count("decoder.up.0.block.{}.") != num_res_blocks + 1:
        raise ValueError(f"{prefix}decoder.up does not mirror the encoder ({levels} levels, "
                         f"{num_res_blocks} blocks each expected)")
    return VAEConfig(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, z_channels=z_channels,
                     embed_dim=embed_dim, in_channels=in_channels, out_ch=shape("decoder.conv_out.weight")[0],
                     use_quant_conv=use_quant)


def _norm(channels: int, **fk: Any) -> nn.GroupNorm:
    return GroupNorm32(32, channels, eps=1e-6, **fk)


class ResnetBlock(nn.Module):
    """GN → SiLU → conv, GN → SiLU → conv, plus the input (1×1 `nin_shortcut` when widths differ)."""

    def __init__(self, cin: int, cout: int, **fk: Any) -> None:
        super().__init__()
        self.norm1 = _norm(cin, **fk)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, **fk)
        self.norm2 = _norm(cout, **fk)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, **fk)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1, **fk) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


_ATTN_WEIGHTS = ("q", "k", "v", "proj_out")


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with 1×1-conv projections. Some converted files store the
    projections as Linear [C, C]; a load hook reshapes those to the conv's [C, C, 1, 1]."""

    def __init__(self, channels: int, **fk: Any) -> None:
        super().__init__()
        self.norm = _norm(channels, **fk)
        self.q = nn.Conv2d(channels, channels, 1, **fk)
        self.k = nn.Conv2d(channels, channels, 1, **fk)
        self.v = nn.Conv2d(channels, channels, 1, **fk)
        self.proj_out = nn.Conv2d(channels, channels, 1, **fk)
        self.register_load_state_dict_pre_hook(_linear_to_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.proj_out(spatial_attention(self.q(h), self.k(h), self.v(h)))


def _linear_to_conv(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    for name in _ATTN_WEIGHTS:
        key = f"{prefix}{name}.weight"
        if key in state_dict and state_dict[key].ndim == 2:
            state_dict[key] = state_dict[key][:, :, None, None]


def normalize_attention_weights(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of `sd` (VAE keys) with Linear-shaped attention projections reshaped to 1×1 convs; for
    loaders that assign tensors without going through `load_state_dict`."""
    out = dict(sd)
    for key, value in sd.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[-3] == "attn_1" and parts[-2] in _ATTN_WEIGHTS and parts[-1] == "weight":
            if len(value.shape) == 2:
                out[key] = value[:, :, None, None]
    return out


class Downsample(nn.Module):
    """Stride-2 3×3 conv after padding one pixel on the right and bottom only (LDM's asymmetric pad)."""

    def __init__(self, channels: int, **fk: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest ×2, then a 3×3 conv."""

    def __init__(self, channels: int, **fk: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, channels: int, **fk: Any) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, **fk)
        self.attn_1 = AttnBlock(channels, **fk)
        self.block_2 = ResnetBlock(channels, channels, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig, **fk: Any) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1, **fk)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for i, cout in enumerate(widths):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(cin, cout, **fk))
                cin = cout
            if i != len(widths) - 1:
                level.downsample = Downsample(cout, **fk)
            self.down.append(level)
        self.mid = _Mid(cin, **fk)
        self.norm_out = _norm(cin, **fk)
        self.conv_out = nn.Conv2d(cin, 2 * cfg.z_channels, 3, padding=1, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig, **fk: Any) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        cin = widths[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1, **fk)
        self.mid = _Mid(cin, **fk)
        levels: list[nn.Module] = [nn.Module() for _ in widths]
        for i in reversed(range(len(widths))):  # built in execution order, stored by resolution level
            level, cout = levels[i], widths[i]
            level.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(cin, cout, **fk))
                cin = cout
            if i != 0:
                level.upsample = Upsample(cout, **fk)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(cin, **fk)
        self.conv_out = nn.Conv2d(cin, cfg.out_ch, 3, padding=1, **fk)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """`encode(x) -> moments`, `decode(z) -> x`.

    `encode` takes images in [-1, 1], [B, in_channels, H, W], and returns the Gaussian posterior's
    moments [B, 2·embed_dim, H/8, W/8]: mean and log-variance concatenated on dim 1 (split with
    `moments.chunk(2, 1)`; LDM clamps logvar to [-30, 20] before sampling). `decode` takes *unscaled*
    latents [B, embed_dim, h, w] and returns images in about [-1, 1]; latent scaling lives in modules/vae.py."""

    def __init__(self, config: VAEConfig | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.config = config = config or SD_VAE
        fk: dict[str, Any] = {"dtype": dtype, "device": device}
        self.encoder = Encoder(config, **fk)
        self.decoder = Decoder(config, **fk)
        if config.use_quant_conv:
            self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1, **fk)
            self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1, **fk)
        else:
            self.quant_conv = self.post_quant_conv = None

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        return moments if self.quant_conv is None else self.quant_conv(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean (deterministic)."""
        mean, _ = self.encode(x).chunk(2, dim=1)
        return self.decode(mean)
