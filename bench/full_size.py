"""Full-size random-weight checkpoints with the published shapes and key names (same compute as real).

Used by the benchmarks and the slow tests. Values are small random numbers (norm weights near 1), so
networks run exactly the arithmetic of a real model; the pictures are noise.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from modules.nn.unet import SD15_UNET, SDXL_UNET, UNetModel
from modules.nn.vae import SD_VAE, AutoencoderKL
from modules.nn.clip import CLIP_L, OPEN_CLIP_BIGG

PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model."}


def _fill(shapes: dict[str, torch.Size], dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=gen, dtype=torch.float32).mul_(0.02)
        if name.endswith("weight") and len(shape) == 1:  # norm scales
            t.add_(1.0)
        out[name] = t.to(dtype)
    return out


def _meta_shapes(module_cls, config, prefix: str) -> dict[str, torch.Size]:
    with torch.device("meta"):
        module = module_cls(config)
    return {prefix + k: v.shape for k, v in module.state_dict().items()}


def _hf_text_shapes(prefix: str, cfg) -> dict[str, torch.Size]:
    from modules.nn.clip import build_text_encoder

    with torch.device("meta"):
        model = build_text_encoder(cfg)
    return {prefix + k: v.shape for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def _open_clip_shapes(prefix: str, cfg) -> dict[str, torch.Size]:
    w, inner = cfg.hidden_size, cfg.intermediate_size
    shapes = {
        prefix + "token_embedding.weight": torch.Size([cfg.vocab_size, w]),
        prefix + "positional_embedding": torch.Size([cfg.max_positions, w]),
        prefix + "ln_final.weight": torch.Size([w]),
        prefix + "ln_final.bias": torch.Size([w]),
        prefix + "text_projection": torch.Size([w, cfg.projection_dim]),
    }
    for i in range(cfg.num_layers):
        b = f"{prefix}transformer.resblocks.{i}."
        shapes |= {
            b + "attn.in_proj_weight": torch.Size([3 * w, w]), b + "attn.in_proj_bias": torch.Size([3 * w]),
            b + "attn.out_proj.weight": torch.Size([w, w]), b + "attn.out_proj.bias": torch.Size([w]),
            b + "ln_1.weight": torch.Size([w]), b + "ln_1.bias": torch.Size([w]),
            b + "ln_2.weight": torch.Size([w]), b + "ln_2.bias": torch.Size([w]),
            b + "mlp.c_fc.weight": torch.Size([inner, w]), b + "mlp.c_fc.bias": torch.Size([inner]),
            b + "mlp.c_proj.weight": torch.Size([w, inner]), b + "mlp.c_proj.bias": torch.Size([w]),
        }
    return shapes


def full_size_shapes(family: str) -> dict[str, torch.Size]:
    if family == "sd15":
        shapes = _meta_shapes(UNetModel, SD15_UNET, PREFIXES["unet"])
        shapes |= _hf_text_shapes("cond_stage_model.transformer.", CLIP_L)
    elif family == "sdxl":
        shapes = _meta_shapes(UNetModel, SDXL_UNET, PREFIXES["unet"])
        shapes |= _hf_text_shapes("conditioner.embedders.0.transformer.", CLIP_L)
        shapes |= _open_clip_shapes("conditioner.embedders.1.model.", OPEN_CLIP_BIGG)
    else:
        raise ValueError(f"unknown family {family!r} (sd15 or sdxl)")
    shapes |= _meta_shapes(AutoencoderKL, SD_VAE, PREFIXES["vae"])
    return shapes


def write_full_size(path: Path, family: str = "sd15", dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """Write (once) a full-size random checkpoint; an existing file is reused."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    save_file(_fill(full_size_shapes(family), dtype, seed), str(tmp))
    tmp.rename(path)
    return path


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("path", type=Path)
    p.add_argument("--family", default="sd15", choices=("sd15", "sdxl"))
    p.add_argument("--dtype", default="fp16", choices=("fp16", "fp32", "bf16"))
    a = p.parse_args()
    dt = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    print(write_full_size(a.path, a.family, dt))
