"""Tiny random-weight checkpoints with the real key layouts, written as real files.

They go through exactly the code path of a downloaded checkpoint (file reading, detection from
shapes, meta-device building, text-encoder conversion), only with small widths so tests run in
seconds on a CPU. Each family's file has its text encoders where real files have them: SD1's CLIP-L
in transformers layout, SD2's ViT-H and SDXL's bigG in open_clip layout (fused in_proj).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from modules.nn.unet import UNetModel
from modules.nn.vae import AutoencoderKL
from tests.fixtures_nn import randomize_, tiny_unet_config, tiny_vae_config

TEXT_WIDTH = 64  # CLIP heads are 64 wide, so this is one head
TEXT_LAYERS = 2
VOCAB = 49408
POSITIONS = 77


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(gen: torch.Generator, *shape: int, std: float = 0.02, around: float = 0.0) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * std + around


def hf_text_encoder(prefix: str, gen: torch.Generator, projection: int | None = None) -> dict[str, torch.Tensor]:
    """CLIP text model in transformers' names (`<prefix>text_model.*`)."""
    w, inner = TEXT_WIDTH, TEXT_WIDTH * 4
    base = prefix + "text_model."
    sd = {
        base + "embeddings.token_embedding.weight": _rand(gen, VOCAB, w),
        base + "embeddings.position_embedding.weight": _rand(gen, POSITIONS, w, std=0.01),
        base + "embeddings.position_ids": torch.arange(POSITIONS).unsqueeze(0),
        base + "final_layer_norm.weight": _rand(gen, w, around=1.0),
        base + "final_layer_norm.bias": _rand(gen, w),
    }
    for i in range(TEXT_LAYERS):
        b = f"{base}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{b}self_attn.{name}.weight"] = _rand(gen, w, w, std=0.1)
            sd[f"{b}self_attn.{name}.bias"] = _rand(gen, w)
        for name in ("layer_norm1", "layer_norm2"):
            sd[f"{b}{name}.weight"] = _rand(gen, w, around=1.0)
            sd[f"{b}{name}.bias"] = _rand(gen, w)
        sd[b + "mlp.fc1.weight"] = _rand(gen, inner, w, std=0.1)
        sd[b + "mlp.fc1.bias"] = _rand(gen, inner)
        sd[b + "mlp.fc2.weight"] = _rand(gen, w, inner, std=0.1)
        sd[b + "mlp.fc2.bias"] = _rand(gen, w)
    if projection:
        sd[prefix + "text_projection.weight"] = _rand(gen, projection, w, std=0.1)
    return sd


def open_clip_text_encoder(prefix: str, gen: torch.Generator, projection: int | None) -> dict[str, torch.Tensor]:
    """OpenCLIP text tower as SD2 / SGM files store it."""
    w, inner = TEXT_WIDTH, TEXT_WIDTH * 4
    sd = {
        prefix + "token_embedding.weight": _rand(gen, VOCAB, w),
        prefix + "positional_embedding": _rand(gen, POSITIONS, w, std=0.01),
        prefix + "ln_final.weight": _rand(gen, w, around=1.0),
        prefix + "ln_final.bias": _rand(gen, w),
        prefix + "logit_scale": torch.tensor(4.6),
    }
    for i in range(TEXT_LAYERS):
        b = f"{prefix}transformer.resblocks.{i}."
        sd[b + "attn.in_proj_weight"] = _rand(gen, 3 * w, w, std=0.1)
        sd[b + "attn.in_proj_bias"] = _rand(gen, 3 * w)
        sd[b + "attn.out_proj.weight"] = _rand(gen, w, w, std=0.1)
        sd[b + "attn.out_proj.bias"] = _rand(gen, w)
        for name in ("ln_1", "ln_2"):
            sd[f"{b}{name}.weight"] = _rand(gen, w, around=1.0)
            sd[f"{b}{name}.bias"] = _rand(gen, w)
        sd[b + "mlp.c_fc.weight"] = _rand(gen, inner, w, std=0.1)
        sd[b + "mlp.c_fc.bias"] = _rand(gen, inner)
        sd[b + "mlp.c_proj.weight"] = _rand(gen, w, inner, std=0.1)
        sd[b + "mlp.c_proj.bias"] = _rand(gen, w)
    if projection:
        sd[prefix + "text_projection"] = _rand(gen, w, projection, std=0.1)
    return sd


def _module_state(module: torch.nn.Module, prefix: str, seed: int) -> dict[str, torch.Tensor]:
    randomize_(module, seed=seed)
    return {prefix + k: v.detach().clone() for k, v in module.state_dict().items()}


def tiny_state_dict(family: str = "sd1", *, in_channels: int = 4, seed: int = 0, v_pred: bool = False) -> dict[str, torch.Tensor]:
    """A complete tiny checkpoint state dict for "sd1", "sd2", "sdxl" or "sdxl_refiner"."""
    gen = _gen(seed)
    if family == "sd1":
        unet_cfg = replace(tiny_unet_config("sd1"), context_dim=TEXT_WIDTH)
        text = hf_text_encoder("cond_stage_model.transformer.", gen)
    elif family == "sd2":
        unet_cfg = replace(tiny_unet_config("sd2"), context_dim=TEXT_WIDTH)
        text = open_clip_text_encoder("cond_stage_model.model.", gen, projection=TEXT_WIDTH)
    elif family == "sdxl":
        unet_cfg = replace(tiny_unet_config("sdxl"), context_dim=2 * TEXT_WIDTH, adm_in_channels=TEXT_WIDTH + 6 * 256)
        text = hf_text_encoder("conditioner.embedders.0.transformer.", gen)
        text |= open_clip_text_encoder("conditioner.embedders.1.model.", gen, projection=TEXT_WIDTH)
    elif family == "sdxl_refiner":
        unet_cfg = replace(tiny_unet_config("sdxl"), context_dim=TEXT_WIDTH, adm_in_channels=TEXT_WIDTH + 5 * 256)
        text = open_clip_text_encoder("conditioner.embedders.0.model.", gen, projection=TEXT_WIDTH)
    else:
        raise ValueError(f"unknown tiny family {family!r}")
    unet_cfg = replace(unet_cfg, in_channels=in_channels)
    sd = _module_state(UNetModel(unet_cfg), "model.diffusion_model.", seed)
    sd |= _module_state(AutoencoderKL(tiny_vae_config()), "first_stage_model.", seed + 1)
    sd |= text
    sd["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000)
    if v_pred:
        sd["v_pred"] = torch.tensor([])
    return sd


def write_tiny_checkpoint(path: Path, family: str = "sd1", *, dtype: torch.dtype = torch.float16,
                          metadata: dict[str, str] | None = None, **kw) -> Path:
    """Write a tiny checkpoint (.safetensors with optional metadata, or a .ckpt pickle of plain tensors)."""
    sd = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in tiny_state_dict(family, **kw).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(sd, str(path), metadata=metadata)
    else:
        torch.save({"state_dict": sd}, path)
    return path
