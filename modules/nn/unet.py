"""The Stable Diffusion UNet (LDM / SGM `openaimodel.UNetModel`), written for inference with the
original checkpoint key names, so `model.diffusion_model.*` tensors load one to one.

Architecture after Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"
(CompVis/latent-diffusion, Stability-AI/stablediffusion), which builds on the ADM UNet of Dhariwal &
Nichol 2021 (openai/guided-diffusion); SDXL's variant (per-level transformer depth, `label_emb` ADM
vector, linear projections) follows Podell et al. 2023 and Stability-AI/generative-models. The config is
read back from tensor shapes the way ComfyUI's `model_detection` does.

Module tree (what the state-dict keys spell):
  time_embed.{0,2}                  Linear → SiLU → Linear on the sinusoidal timestep embedding
  label_emb.0.{0,2}                 the same for the ADM vector `y` (SDXL only)
  input_blocks.0.0                  conv_in
  input_blocks.N.{0: ResBlock | Downsample(.op), 1: SpatialTransformer}
  middle_block.{0: ResBlock, 1: SpatialTransformer, 2: ResBlock}
  output_blocks.N.{0: ResBlock, 1: SpatialTransformer | Upsample(.conv), 2: Upsample(.conv)}
  out.{0,2}                         GroupNorm → SiLU → conv_out
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modules.nn.attention import attention

# ---- configuration ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UNetConfig:
    """Everything that shapes a UNet. Lists become tuples; an int `num_res_blocks` means every level.

    `transformer_depth` is per input level (0 = no attention there); a tuple with one entry per input
    ResBlock is accepted too, for pruned models whose blocks differ within a level. `transformer_depth_middle`:
    ≥0 = ResBlock, transformer, ResBlock; -1 = a single ResBlock; -2 = no middle block.
    Head layout is not visible in shapes: exactly one of num_heads / num_head_channels is set (≠ -1)."""

    in_channels: int
    out_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: tuple[int, ...]
    transformer_depth: tuple[int, ...]
    transformer_depth_middle: int
    transformer_depth_output: tuple[int, ...]
    context_dim: int | None
    num_heads: int = -1
    num_head_channels: int = -1
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None

    def __post_init__(self) -> None:
        levels = len(self.channel_mult)
        nrb = self.num_res_blocks
        nrb = (nrb,) * levels if isinstance(nrb, int) else tuple(nrb)
        for name, value in (("channel_mult", self.channel_mult), ("num_res_blocks", nrb),
                            ("transformer_depth", self.transformer_depth),
                            ("transformer_depth_output", self.transformer_depth_output)):
            object.__setattr__(self, name, tuple(int(v) for v in value))
        if len(self.num_res_blocks) != levels:
            raise ValueError(f"num_res_blocks {self.num_res_blocks} needs one entry per level ({levels})")
        if len(self.transformer_depth) not in (levels, sum(self.num_res_blocks)):
            raise ValueError(f"transformer_depth {self.transformer_depth} needs one entry per level ({levels}) "
                             f"or per input ResBlock ({sum(self.num_res_blocks)})")
        n_out = sum(n + 1 for n in self.num_res_blocks)
        if len(self.transformer_depth_output) != n_out:
            raise ValueError(f"transformer_depth_output {self.transformer_depth_output} needs one entry per "
                             f"output block ({n_out})")

    def input_depths(self) -> list[list[int]]:
        """Transformer depth of every input ResBlock, grouped by level."""
        if len(self.transformer_depth) == len(self.channel_mult):
            return [[d] * n for d, n in zip(self.transformer_depth, self.num_res_blocks)]
        flat, out = list(self.transformer_depth), []
        for n in self.num_res_blocks:
            out.append(flat[:n])
            flat = flat[n:]
        return out

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(heads, head width) of a transformer on `channels` features; SD1 fixes the head count,
        SD2/SDXL fix the head width (LDM's rule: num_head_channels wins when set)."""
        if self.num_head_channels != -1:
            if channels % self.num_head_channels:
                raise ValueError(f"{channels} channels do not split into heads of {self.num_head_channels}")
            return channels // self.num_head_channels, self.num_head_channels
        if self.num_heads == -1:
            raise ValueError("UNetConfig has no head layout: set num_heads (SD1: 8) or num_head_channels "
                             "(SD2/SDXL: 64); the model family decides, shapes cannot tell")
        if channels % self.num_heads:
            raise ValueError(f"{channels} channels do not split into {self.num_heads} heads")
        return self.num_heads, channels // self.num_heads


SD15_UNET = UNetConfig(
    in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=(2, 2, 2, 2),
    transformer_depth=(1, 1, 1, 0), transformer_depth_middle=1,
    transformer_depth_output=(0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1), context_dim=768, num_heads=8,
)
SD2_UNET = replace(SD15_UNET, context_dim=1024, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True)
SDXL_UNET = UNetConfig(
    in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=(2, 2, 2),
    transformer_depth=(0, 2, 10), transformer_depth_middle=10,
    transformer_depth_output=(10, 10, 10, 2, 2, 2, 0, 0, 0), context_dim=2048, num_head_channels=64,
    use_linear_in_transformer=True, adm_in_channels=2816,
)
SDXL_REFINER_UNET = UNetConfig(
    in_channels=4, out_channels=4, model_channels=384, channel_mult=(1, 2, 4, 4), num_res_blocks=(2, 2, 2, 2),
    transformer_depth=(0, 4, 4, 0), transformer_depth_middle=4,
    transformer_depth_output=(0, 0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0), context_dim=1280, num_head_channels=64,
    use_linear_in_transformer=True, adm_in_channels=2560,
)


def published_configs() -> dict[str, UNetConfig]:
    """The released UNets' configs (LDM v1/v2 inference yamls, SGM sd_xl_base / sd_xl_refiner yamls)."""
    return {"sd15": SD15_UNET, "sd2": SD2_UNET, "sdxl": SDXL_UNET, "sdxl_refiner": SDXL_REFINER_UNET}


def tensor_shape(value: Any) -> tuple[int, ...]:
    """Shape of a tensor, a meta tensor, or a lazy slice (safetensors' `get_shape()`)."""
    if hasattr(value, "shape"):
        return tuple(value.shape)
    if hasattr(value, "get_shape"):
        return tuple(value.get_shape())
    raise TypeError(f"cannot read a shape from {type(value).__name__}")


_TRANSFORMER_KEY = re.compile(r"^(input_blocks\.\d+|output_blocks\.\d+|middle_block)\.1\.transformer_blocks\.(\d+)\.")


def unet_config_from_state_dict(sd: Mapping[str, Any], prefix: str = "model.diffusion_model.", *,
                                num_heads: int = -1, num_head_channels: int = -1) -> UNetConfig:
    """Derive a UNetConfig from tensor shapes alone (values may be meta tensors or lazy slices).

    Walks the input blocks: a `.0.op` conv starts a new level, a ResBlock's output width gives the
    level's channel multiplier, and `.1.transformer_blocks.K` counts give the depths. Raises ValueError
    naming the block when the layout is not an LDM UNet."""
    keys = {k[len(prefix):]: k for k in sd.keys() if k.startswith(prefix)}

    def shape(key: str) -> tuple[int, ...]:
        if key not in keys:
            raise KeyError(f"{prefix}{key} missing")
        return tensor_shape(sd[keys[key]])

    depth: dict[str, int] = {}
    for key in keys:
        m = _TRANSFORMER_KEY.match(key)
        if m:
            depth[m.group(1)] = max(depth.get(m.group(1), 0), int(m.group(2)) + 1)

    model_channels, in_channels = shape("input_blocks.0.0.weight")[:2]
    out_channels = shape("out.2.weight")[0]
    n_in = 1 + max(int(k.split(".")[1]) for k in keys if k.startswith("input_blocks."))
    n_out = 1 + max((int(k.split(".")[1]) for k in keys if k.startswith("output_blocks.")), default=-1)

    levels: list[list[tuple[int, int]]] = [[]]  # per level: (mult, depth) of each ResBlock
    for n in range(1, n_in):
        block = f"input_blocks.{n}"
        if f"{block}.0.op.weight" in keys:
            levels.append([])
        elif f"{block}.0.in_layers.0.weight" in keys:
            width = shape(f"{block}.0.out_layers.3.weight")[0]
            if width % model_channels:
                raise ValueError(f"{block}: width {width} is not a multiple of model_channels {model_channels}")
            d = depth.get(block, 0) if f"{block}.1.proj_in.weight" in keys else 0
            levels[-1].append((width // model_channels, d))
        else:
            raise ValueError(f"{block} is neither a ResBlock nor a downsampling conv")
    channel_mult, per_block = [], []
    for i, blocks in enumerate(levels):
        mults = {m for m, _ in blocks}
        if len(mults) != 1:
            raise ValueError(f"input level {i} has ResBlock widths {sorted(mults)}; one per level expected")
        channel_mult.append(mults.pop())
        per_block.append([d for _, d in blocks])
    uniform = all(len(set(ds)) == 1 for ds in per_block)
    transformer_depth = [ds[0] for ds in per_block] if uniform else [d for ds in per_block for d in ds]

    if "middle_block.1.proj_in.weight" in keys:
        depth_middle = depth.get("middle_block", 0)
    elif "middle_block.0.in_layers.0.weight" in keys:
        depth_middle = -1
    else:
        depth_middle = -2
    depth_output = [depth.get(f"output_blocks.{n}", 0) if f"output_blocks.{n}.1.proj_in.weight" in keys else 0
                    for n in range(n_out)]

    context_dim, use_linear = None, False
    attn = sorted(k for k in keys if k.endswith(".transformer_blocks.0.attn2.to_k.weight"))
    if attn:
        context_dim = shape(attn[0])[1]
        use_linear = len(shape(attn[0].split(".transformer_blocks.")[0] + ".proj_in.weight")) == 2
    adm = shape("label_emb.0.0.weight")[1] if "label_emb.0.0.weight" in keys else None
    return UNetConfig(
        in_channels=in_channels, out_channels=out_channels, model_channels=model_channels,
        channel_mult=tuple(channel_mult), num_res_blocks=tuple(len(b) for b in levels),
        transformer_depth=tuple(transformer_depth), transformer_depth_middle=depth_middle,
        transformer_depth_output=tuple(depth_output), context_dim=context_dim, num_heads=num_heads,
        num_head_channels=num_head_channels, use_linear_in_transformer=use_linear, adm_in_channels=adm,
    )


# ---- building blocks --------------------------------------------------------------------------------


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps [B] → [B, dim] float32, LDM's layout:
    cosines first, then sines, frequencies max_period^(-i/half) (Vaswani et al. 2017 / ADM)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device)
                      * (-math.log(max_period) / half))
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics are computed in float32 for half inputs (LDM's GroupNorm32): bf16/fp16
    variance over large groups loses too many bits. The result is cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            w = None if self.weight is None else self.weight.float()
            b = None if self.bias is None else self.bias.float()
            return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)
        return super().forward(x)


def _zero(module: nn.Module) -> nn.Module:
    """LDM zero-initialises the last layer of every residual branch, so a fresh (training) model starts
    as the identity; loaded weights overwrite this."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN → SiLU → conv3×3, + projected timestep embedding, GN → SiLU → conv3×3, plus the (1×1-projected
    when the width changes) input. Index 2 of `out_layers` is LDM's dropout slot (identity here)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, **fk: Any) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(32, channels, **fk), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1, **fk))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels, **fk))
        self.out_layers = nn.Sequential(GroupNorm32(32, out_channels, **fk), nn.SiLU(), nn.Identity(),
                                        _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1, **fk)))
        self.skip_connection = (nn.Identity() if channels == out_channels
                                else nn.Conv2d(channels, out_channels, 1, **fk))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    """Multi-head attention from `x` to `context` (itself when None); bias-free q/k/v as in LDM."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int, **fk: Any) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False, **fk)
        self.to_k = nn.Linear(context_dim, inner, bias=False, **fk)
        self.to_v = nn.Linear(context_dim, inner, bias=False, **fk)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim, **fk))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if context is None else context
        return self.to_out(attention(self.to_q(x), self.to_k(ctx), self.to_v(ctx), self.heads))


class GEGLU(nn.Module):
    """Gated GELU unit (Shazeer 2020, "GLU Variants Improve Transformer"): one projection to twice the
    width, split into a value half and a GELU-gated half."""

    def __init__(self, dim_in: int, dim_out: int, **fk: Any) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU → (dropout slot) → Linear, 4× inner width; keys `net.0.proj`, `net.2`."""

    def __init__(self, dim: int, **fk: Any) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * 4, **fk), nn.Identity(), nn.Linear(dim * 4, dim, **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the text, and GEGLU feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None, **fk: Any) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head, **fk)
        self.ff = FeedForward(dim, **fk)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, **fk)
        self.norm1 = nn.LayerNorm(dim, **fk)
        self.norm2 = nn.LayerNorm(dim, **fk)
        self.norm3 = nn.LayerNorm(dim, **fk)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        # The matmuls run in the projections' dtype, which may be narrower than the residual stream's
        # (bf16 inside an fp32 UNet on CPUs with native bf16, see transformer_matmul_parameters); the
        # norms and the residual additions stay in x's dtype. Same dtype: every .to() is a no-op.
        dtype = self.attn1.to_q.weight.dtype
        context = None if context is None else context.to(dtype)
        x = x + self.attn1(self.norm1(x).to(dtype)).to(x.dtype)
        x = x + self.attn2(self.norm2(x).to(dtype), context).to(x.dtype)
        return x + self.ff(self.norm3(x).to(dtype)).to(x.dtype)


class SpatialTransformer(nn.Module):
    """Feature map → tokens → transformer blocks → feature map, plus the input. SD1 projects with 1×1
    convs before flattening, SD2/SDXL with Linear layers after it (`use_linear`)."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int | None,
                 use_linear: bool, **fk: Any) -> None:
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = GroupNorm32(32, channels, eps=1e-6, **fk)
        self.proj_in = nn.Linear(channels, inner, **fk) if use_linear else nn.Conv2d(channels, inner, 1, **fk)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim, **fk) for _ in range(depth))
        self.proj_out = _zero(nn.Linear(inner, channels, **fk) if use_linear else nn.Conv2d(inner, channels, 1, **fk))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        b, _, h, w = x.shape
        t = self.norm(x)
        if not self.use_linear:
            t = self.proj_in(t)
        t = t.permute(0, 2, 3, 1).reshape(b, h * w, -1)  # one copy into token-major layout
        if self.use_linear:
            t = self.proj_in(t)
        for block in self.transformer_blocks:
            t = block(t, context)
        if self.use_linear:
            t = self.proj_out(t)
        t = t.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        if not self.use_linear:
            t = self.proj_out(t.contiguous())
        return x + t


class Downsample(nn.Module):
    """Stride-2 3×3 conv (key `op`)."""

    def __init__(self, channels: int, **fk: Any) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 (or to the matching skip's size, so odd latent sizes work, as ComfyUI
    does) followed by a 3×3 conv."""

    def __init__(self, channels: int, **fk: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, **fk)

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        size = tuple(size) if size is not None else (x.shape[-2] * 2, x.shape[-1] * 2)
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """LDM's TimestepEmbedSequential: hands each layer the inputs it understands."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None,
                size: Sequence[int] | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


def transformer_matmul_parameters(unet: nn.Module) -> set[str]:
    """Names (as in `unet.state_dict()`) of the Linear weights and biases inside the transformer blocks:
    attention projections and feed-forward, the part of the UNet that a mixed plan runs in bf16."""
    names: set[str] = set()
    for block_name, block in unet.named_modules():
        if isinstance(block, BasicTransformerBlock):
            for part in ("attn1", "attn2", "ff"):
                for layer_name, layer in getattr(block, part).named_modules():
                    if isinstance(layer, nn.Linear):
                        prefix = ".".join(filter(None, (block_name, part, layer_name)))
                        names.update(f"{prefix}.{p}" for p, _ in layer.named_parameters(recurse=False))
    return names


# ---- the network --------------------------------------------------------------------------------------


class UNetModel(nn.Module):
    """The denoising UNet. `forward(x, timesteps, context, y=None, control=None, transformer_options=None)`.

    `control` adds ControlNet-style residuals, each list indexed in forward order, entries may be None:
      "input"[i]  added to the output of input_blocks[i] (so to its skip as well; T2I-Adapter style),
      "middle"    every entry added after the middle block,
      "output"[i] added to the skip of input_blocks[i] where an output block consumes it (ControlNet's
                  zero-conv outputs, in input-block order).
    The lists are read, never consumed. `transformer_options` is accepted for later hooks and unused."""

    def __init__(self, config: UNetConfig, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.config = config
        fk: dict[str, Any] = {"dtype": dtype, "device": device}
        mc, ctx_dim = config.model_channels, config.context_dim
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim, **fk), nn.SiLU(), nn.Linear(emb_dim, emb_dim, **fk))
        self.label_emb = None
        if config.adm_in_channels is not None:
            self.label_emb = nn.Sequential(nn.Sequential(
                nn.Linear(config.adm_in_channels, emb_dim, **fk), nn.SiLU(), nn.Linear(emb_dim, emb_dim, **fk)))

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            heads, dim_head = config.heads_for(ch)
            return SpatialTransformer(ch, heads, dim_head, depth, ctx_dim, config.use_linear_in_transformer, **fk)

        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(config.in_channels, mc, 3, padding=1, **fk))])
        skip_channels, ch = [mc], mc
        levels = len(config.channel_mult)
        for level, (mult, depths) in enumerate(zip(config.channel_mult, config.input_depths())):
            for depth in depths:
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mc * mult, **fk)]
                ch = mc * mult
                if depth > 0:
                    layers.append(transformer(ch, depth))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != levels - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch, **fk)))
                skip_channels.append(ch)

        self.middle_block = None
        if config.transformer_depth_middle >= -1:
            middle: list[nn.Module] = [ResBlock(ch, emb_dim, ch, **fk)]
            if config.transformer_depth_middle >= 0:
                middle += [transformer(ch, config.transformer_depth_middle), ResBlock(ch, emb_dim, ch, **fk)]
            self.middle_block = EmbedSequential(*middle)

        self.output_blocks = nn.ModuleList()
        depth_output = iter(config.transformer_depth_output)
        for level in reversed(range(levels)):
            mult, n_blocks = config.channel_mult[level], config.num_res_blocks[level]
            for i in range(n_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mc * mult, **fk)]
                ch = mc * mult
                depth = next(depth_output)
                if depth > 0:
                    layers.append(transformer(ch, depth))
                if level and i == n_blocks:
                    layers.append(Upsample(ch, **fk))
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(32, ch, **fk), nn.SiLU(),
                                 _zero(nn.Conv2d(ch, config.out_channels, 3, padding=1, **fk)))

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None, control: Mapping[str, Sequence[Any]] | None = None,
                transformer_options: Mapping[str, Any] | None = None) -> torch.Tensor:
        """x [B, C, H, W] latents, timesteps [B] (or a scalar), context [B, T, context_dim], y [B, adm]
        → [B, out_channels, H, W] in x's dtype; the work runs in the parameters' dtype."""
        dtype = self.dtype
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        if self.label_emb is not None:
            if y is None:
                raise ValueError(f"this UNet needs the ADM vector y [B, {self.config.adm_in_channels}] (SDXL)")
            emb = emb + self.label_emb(y.to(dtype))
        context = None if context is None else context.to(dtype)
        control = control or {}
        c_input, c_middle, c_output = (control.get(k) or () for k in ("input", "middle", "output"))

        h, skips = x.to(dtype), []
        for i, block in enumerate(self.input_blocks):
            h = _add(block(h, emb, context), c_input, i)
            skips.append(h)
        if self.middle_block is not None:
            h = self.middle_block(h, emb, context)
        for r in c_middle:
            if r is not None:
                h = h + r.to(h.dtype)
        for block in self.output_blocks:
            skip = _add(skips.pop(), c_output, len(skips))
            h = torch.cat([h, skip], dim=1)
            h = block(h, emb, context, skips[-1].shape[-2:] if skips else None)
        return self.out(h).to(x.dtype)


def _add(h: torch.Tensor, residuals: Sequence[Any], index: int) -> torch.Tensor:
    if index < len(residuals) and residuals[index] is not None:
        return h + residuals[index].to(h.dtype)
    return h

