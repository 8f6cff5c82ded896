"""Separate VAE files (A1111's "SD VAE" setting): `Automatic`, `None`, or a file from models/VAE.

`Automatic` uses `<checkpoint stem>.vae.safetensors` (or .vae.pt / .vae.ckpt) beside the checkpoint
when there is one, else the baked-in VAE; `None` always uses the baked-in VAE. VAE files come with
keys either bare (`encoder.*`, `decoder.*`) or with the checkpoint prefix (`first_stage_model.*`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from modules.devices import DevicePlan
from modules.nn.assign import assign_weights
from modules.nn.vae import AutoencoderKL, vae_config_from_state_dict
from modules.vae import VAE
from modules.weights_io import WeightFileError, open_weights

SIDECAR_SUFFIXES = (".vae.safetensors", ".vae.pt", ".vae.ckpt")


def sidecar_vae(checkpoint: Path) -> Path | None:
    """`model.vae.safetensors` beside `model.safetensors`, as A1111's Automatic mode finds it."""
    stem = checkpoint.name[: -len(checkpoint.suffix)] if checkpoint.suffix else checkpoint.name
    for suffix in SIDECAR_SUFFIXES:
        candidate = checkpoint.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def _vae_prefix(sd: Mapping[str, Any], path: Path) -> str:
    for prefix in ("", "first_stage_model.", "vae."):
        if prefix + "decoder.conv_out.weight" in sd:
            return prefix
    raise WeightFileError(f"{path.name}: not a VAE (no decoder.conv_out.weight, with or without a prefix)")


def load_vae_file(path: Path, plan: DevicePlan, *, scaling: float, shift: float = 0.0) -> VAE:
    """Read a VAE file; every decoder/encoder weight must be present."""
    path = Path(path)
    sd = open_weights(path)
    prefix = _vae_prefix(sd, path)
    config = vae_config_from_state_dict(sd, prefix)
    import torch

    with torch.device("meta"):
        model = AutoencoderKL(config)

    def source(key: str):
        full = prefix + key
        return (full, sd[full]) if full in sd else None

    missing, _used = assign_weights(model, source, plan.vae_dtype, plan.device)
    if missing:
        raise WeightFileError(f"{path.name}: incomplete VAE: {len(missing)} weights missing ({', '.join(missing[:3])} …)")
    return VAE(model, scaling=scaling, shift=shift, dtype=plan.vae_dtype, device=plan.device)


def choose_vae_path(setting: str, checkpoint: Path, vae_files: list[Path]) -> Path | None:
    """The VAE file the setting selects for this checkpoint, or None for the baked-in one."""
    if setting in ("None", "", None):
        return None
    if setting == "Automatic":
        return sidecar_vae(checkpoint)
    for path in vae_files:
        if setting in (path.name, path.stem, str(path)):
            return path
    names = ", ".join(p.name for p in vae_files) or "none"
    raise FileNotFoundError(f"SD VAE {setting!r} not found in models/VAE (have: {names})")
