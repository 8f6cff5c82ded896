"""Family detection from keys and tensor shapes — never from the file name.

The UNet configuration is derived from shapes (so a checkpoint with unusual widths, like Palette's demo
model, is read correctly); the family is the one whose shape signature matches; the variant comes from
the UNet's input channels. An unknown file raises an error naming the file and what was checked.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import torch

from modules.families import FAMILIES, FAMILIES_BY_NAME, UNET_PREFIX, VAE_PREFIX, VARIANTS_BY_IN_CHANNELS, Family
from modules.nn.unet import UNetConfig, unet_config_from_state_dict
from modules.nn.vae import VAEConfig, vae_config_from_state_dict


class UnknownModelError(ValueError):
    """The file is not a checkpoint of any known family; the message says what was checked."""


@dataclass(frozen=True)
class Detection:
    family: Family
    variant: str  # "", "inpaint", "instruct-pix2pix"
    prediction: str  # "eps" or "v"
    prediction_source: str  # why: "family default", "v_pred key", "yaml", "setting", "heuristic"
    unet_config: UNetConfig
    vae_config: VAEConfig

    @property
    def label(self) -> str:
        parts = [self.family.name]
        if self.variant:
            parts.append(self.variant)
        if self.prediction == "v" and self.family.prediction != "v":
            parts.append("v-prediction")
        return " ".join(parts)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


def _describe_keys(keys: list[str]) -> str:
    prefixes = sorted({".".join(k.split(".")[:2]) for k in keys})
    shown = ", ".join(prefixes[:8])
    return f"{len(keys)} tensors; top-level prefixes: {shown}{' …' if len(prefixes) > 8 else ''}"


def sidecar_prediction(path: Path) -> str | None:
    """A1111 reads `<name>.yaml` beside the checkpoint; `parameterization: "v"` means v-prediction."""
    yaml_path = path.with_suffix(".yaml")
    if not yaml_path.is_file():
        return None
    text = yaml_path.read_text(encoding="utf-8", errors="replace")
    match = re.search(r"^\s*parameterization\s*:\s*[\"']?(\w+)", text, re.MULTILINE)
    if match:
        return "v" if match.group(1).lower() == "v" else "eps"
    return None


def guess_sd2_prediction(sd: Mapping[str, Any]) -> str:
    """Heuristic for SD2 files that do not say: v-prediction training leaves the last output block's
    first LayerNorm bias with a much larger spread than eps training does (the same observation
    ComfyUI relies on). Only 4-channel models: the SD2 inpainting model is eps."""
    key = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
    if key not in sd:
        return "eps"
    value = sd[key]
    tensor = value.load(torch.float32) if hasattr(value, "load") else value.float()
    if tensor.device.type == "meta":
        return "eps"
    return "v" if float(tensor.std(unbiased=False)) > 0.09 else "eps"


def detect(
    sd: Mapping[str, Any],
    path: Path,
    *,
    family_override: str | None = None,
    prediction_override: str | None = None,
) -> Detection:
    """Identify a checkpoint from its state dict (a mapping whose values have `.shape`)."""
    path = Path(path)
    keys = list(sd.keys())
    conv_in = UNET_PREFIX + "input_blocks.0.0.weight"
    if conv_in not in sd:
        hint = ""
        if any(k.startswith(("lora_", "lora_unet", "lora_te")) or ".lora_" in k for k in keys[:2000]):
            hint = " It looks like a LoRA: put it in models/Lora and use <lora:name:1> in the prompt."
        elif any(k.startswith(("encoder.", "decoder.")) for k in keys[:2000]):
            hint = " It looks like a VAE: put it in models/VAE."
        raise UnknownModelError(
            f"{path.name}: not a Stable Diffusion checkpoint: no UNet found (looked for '{conv_in}'); "
            f"the file has {_describe_keys(keys)}.{hint}"
        )
    try:
        unet_config = unet_config_from_state_dict(sd, UNET_PREFIX)
    except (KeyError, ValueError, IndexError) as exc:
        raise UnknownModelError(f"{path.name}: UNet tensors have an unknown layout ({exc})") from exc

    matches = [f for f in FAMILIES if f.matches(unet_config, sd)]
    if family_override:
        if family_override not in FAMILIES_BY_NAME:
            raise UnknownModelError(f"{path.name}: unknown family override {family_override!r}")
        forced = FAMILIES_BY_NAME[family_override]
        if not forced.matches(unet_config, sd):
            found = matches[0].name if matches else "unknown"
            raise UnknownModelError(
                f"{path.name}: family override {forced.name} does not fit this file: its UNet has "
                f"context_dim={unet_config.context_dim}, adm_in_channels={unet_config.adm_in_channels} "
                f"(looks like {found})"
            )
        matches = [forced]
    if not matches:
        raise UnknownModelError(
            f"{path.name}: unknown model family: UNet context_dim={unet_config.context_dim}, "
            f"adm_in_channels={unet_config.adm_in_channels}, model_channels={unet_config.model_channels}, "
            f"in_channels={unet_config.in_channels}; checked "
            + "; ".join(f"{f.name} (text encoder at {f.marker_key}, ADM input {'yes' if f.needs_adm else 'no'})" for f in FAMILIES)
        )
    family = matches[0]
    head_field, head_value = family.head_layout
    unet_config = replace(unet_config, **{head_field: head_value})
    variant = VARIANTS_BY_IN_CHANNELS.get(unet_config.in_channels)
    if variant is None:
        raise UnknownModelError(
            f"{path.name}: {family.name} UNet with {unet_config.in_channels} input channels is not a known "
            "variant (4 = normal, 9 = inpainting, 8 = instruct-pix2pix)"
        )
    if VAE_PREFIX + "decoder.conv_out.weight" not in sd:
        raise UnknownModelError(f"{path.name}: {family.name} checkpoint without a VAE ({VAE_PREFIX}* missing)")
    vae_config = vae_config_from_state_dict(sd, VAE_PREFIX)

    prediction, source = family.prediction, "family default"
    if prediction_override in ("eps", "v"):
        prediction, source = prediction_override, "setting"
    elif "v_pred" in sd:
        prediction, source = "v", "v_pred key"
    elif (from_yaml := sidecar_prediction(path)) is not None:
        prediction, source = from_yaml, "yaml"
    elif family.name == "SD2" and variant == "":
        guessed = guess_sd2_prediction(sd)
        prediction, source = guessed, "heuristic"
    return Detection(family, variant, prediction, source, unet_config, vae_config)
