"""What a model family is: a small declarative record, matched against a checkpoint's keys and shapes.

Detection never looks at file names. A family says which UNet configuration (derived from tensor
shapes) identifies it, where its text encoders live in the file and in which layout, and the
constants the pipeline needs (latent scaling, prediction type, default resolution).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder inside a checkpoint."""

    prefix: str  # e.g. "cond_stage_model.transformer." or "conditioner.embedders.1.model."
    layout: str  # "hf" (transformers names) or "open_clip" (fused in_proj, resblocks)
    role: str  # "clip_l", "clip_h", "clip_g"
    pad_with_eos: bool  # A1111 pads OpenAI CLIP-L chunks with EOS, OpenCLIP ones with 0


@dataclass(frozen=True)
class Family:
    """A model family: identity, where its parts are, and the constants sampling needs."""

    name: str  # shown to users: "SD1", "SD2", "SDXL", "SDXL Refiner"
    needs_adm: bool  # the UNet takes an ADM vector (`label_emb`): SDXL base and refiner
    marker_key: str  # a key only this family's files carry (where its text encoder sits)
    head_layout: tuple[str, int]  # ("num_heads", 8) or ("num_head_channels", 64)
    text_encoders: tuple[TextEncoderSlot, ...]
    vae_scaling: float = 0.18215
    vae_shift: float = 0.0
    latent_channels: int = 4
    latent_scale_factor: int = 8
    prediction: str = "eps"  # default prediction type; SD2 768 models are "v"
    default_resolution: int = 512
    # A1111: SDXL always uses the penultimate CLIP layer, without the final layer norm
    sdxl_text: bool = False
    adm: str | None = None  # "sdxl" (size/crop conditioning) or "refiner" (adds aesthetic score)
    notes: tuple[str, ...] = field(default=())

    def matches(self, unet_config: Any, keys: Any) -> bool:
        """Text-encoder placement and the UNet's ADM input both fit. `keys` supports `in`.

        Widths are deliberately not part of the signature (they are derived from shapes and checked
        against the text encoders when loading), so narrow or distilled models of a family load too."""
        return self.marker_key in keys and (unet_config.adm_in_channels is not None) == self.needs_adm


# Variants are not separate families: the UNet's input channels tell them apart.
VARIANTS_BY_IN_CHANNELS = {4: "", 9: "inpaint", 8: "instruct-pix2pix"}

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
