"""Frozen dataclasses that cross module boundaries.

Everything a job needs travels in a `GenerationRequest`; everything it produces comes back in a
`Result`. Fields are named (never positional) so the UI bindings, the REST API and the infotext parser
can all map to them by name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import torch

# A1111's hires-fix / img2img resize modes, by their index in A1111's UI.
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")


@dataclass(frozen=True)
class LoraRef:
    """One `<lora:name:te:unet:dyn>` tag, after parsing."""

    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0
    dyn: int | None = None


@dataclass(frozen=True)
class NetworkEntry:
    """A LoRA or textual-inversion file found on disk, as the extra-networks panel and the API list it.

    `name` is what a prompt uses (`<lora:name:1>`, or the embedding's trigger word): the file stem.
    `hash` is A1111's short hash (addnet sha256 for LoRAs, 12 hex), None until computed.
    `metadata` holds sanitised kohya `ss_*` training fields for a LoRA; for an embedding, A1111's listed
    fields `vectors`, `shape`, and `step`, `sd_checkpoint`, `sd_checkpoint_name` when the file has them
    (strings only)."""

    name: str
    kind: str  # "lora" | "embedding"
    path: Path
    family: str | None = None  # "sd1", "sd2", "sdxl", or None when the file does not tell
    hash: str | None = None
    preview: Path | None = None  # an image beside the file (name.png, name.preview.png, …)
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointHints:
    """Settings a checkpoint suggests for the UI's sliders: `palette.default_resolution` (the picture size
    it was trained at) and `palette.default_cfg_scale` (the CFG scale it follows the prompt best at; a
    tiny model like the demo overshoots at A1111's 7). None: the file does not say."""

    size: int | None = None
    cfg_scale: float | None = None

    @classmethod
    def from_file(cls, path: Path) -> "CheckpointHints":
        """The hints in a .safetensors file's header (read alone, no tensors); none for other formats."""
        from modules.weights_io import read_safetensors_header

        if Path(path).suffix.lower() != ".safetensors":
            return cls()
        return cls.from_metadata(read_safetensors_header(Path(path))[2])

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> "CheckpointHints":
        def number(key: str) -> float | None:
            try:
                value = float(metadata.get(key) or "nan")
            except ValueError:
                return None
            return value if math.isfinite(value) else None

        size, cfg = number("palette.default_resolution"), number("palette.default_cfg_scale")
        return cls(size=int(size) if size and size.is_integer() and 64 <= size <= 4096 and size % 8 == 0 else None,
                   cfg_scale=cfg if cfg is not None and 1.0 <= cfg <= 30.0 else None)


@dataclass(frozen=True)
class GenerationRequest:
    """One txt2img / img2img job. Defaults follow A1111's UI defaults."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    batch_size: int = 1
    n_iter: int = 1
    clip_skip: int = 1
    # A1111's restore_faces: None follows the "Restore faces" setting (face_restoration)
    restore_faces: bool | None = None
    eta: float | None = None
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    # Which model; None means "the currently selected one".
    checkpoint: str | None = None
    vae: str | None = None
    # img2img (mode is img2img when init_images is non-empty)
    init_images: tuple[Any, ...] = ()  # PIL images
    denoising_strength: float = 0.75
    resize_mode: int = 0
    # inpainting (modules/inpaint.py): mask white = redraw
    mask: Any | None = None
    mask_blur: int = 4
    inpainting_fill: int = 1
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float = 1.0
    # soft inpainting (A1111's built-in extension): the mask stays soft; per-pixel blend every step
    soft_inpainting: bool = False
    soft_inpainting_schedule_bias: float = 1.0
    soft_inpainting_preservation: float = 0.5
    soft_inpainting_contrast: float = 4.0
    # outpainting: pixels added around the init image (left, right, up, down), filled and masked
    outpaint_pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    # hires fix
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_denoising_strength: float = 0.7
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    # per-job settings overrides (A1111's override_settings); frozen into the job
    override_settings: Mapping[str, Any] = field(default_factory=dict)
    styles: tuple[str, ...] = ()
    do_not_save: bool = False

    @property
    def is_img2img(self) -> bool:
        return len(self.init_images) > 0

    def replace(self, **changes: Any) -> "GenerationRequest":
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Conditioning:
    """Text conditioning for one prompt: what the UNet's cross-attention and ADM input see."""

    cross_attn: torch.Tensor  # [B, tokens, context_dim]
    pooled: torch.Tensor | None = None  # [B, pooled_dim] (SDXL)
    # SDXL `y` vector (pooled + size/crop embeddings), already assembled, or None
    adm: torch.Tensor | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProgressEvent:
    """Sent by the sampler loop after every step, and once per decoded batch with its `images` (then
    `step` and `total_steps` are 0: that event says nothing about steps), so the UI shows each
    image as it finishes."""

    step: int
    total_steps: int
    job_index: int = 0  # which image of the batch count
    job_count: int = 1
    latent: torch.Tensor | None = None
    preview: Any | None = None  # PIL image, when a preview was made this step
    images: tuple[Any, ...] = ()  # PIL images finished since the previous event


@dataclass(frozen=True)
class Result:
    """What a job produced: images with their infotexts and seeds, plus an info mapping."""

    images: tuple[Any, ...]  # PIL images
    infotexts: tuple[str, ...]
    seeds: tuple[int, ...]
    subseeds: tuple[int, ...] = ()
    prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)
    paths: tuple[str, ...] = ()  # files written under outputs/
    interrupted: bool = False
