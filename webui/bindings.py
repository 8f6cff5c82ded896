"""Widget values ⇄ GenerationRequest: the only code that knows both.

Every widget is keyed by the name of the request field it edits (`steps`, `cfg_scale`, …), so event
handlers receive `**values` keyed by field name and nothing is positional. Type coercion follows the
request's type hints; the few fields whose widget shows something else (a label for an index, a
"Use same sampler" choice for None) have an explicit converter in `SPECIAL`.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from modules import infotext, inpaint
from modules.sampling.samplers import SAMPLERS
from modules.sampling.schedules import SCHEDULES
from modules.types import RESIZE_MODES, GenerationRequest
from modules.validation import LATENT_UPSCALE_MODES, PIXEL_UPSCALERS

SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULER = "Use same scheduler"
AUTOMATIC_VAE = "Automatic"
HR_UPSCALERS = LATENT_UPSCALE_MODES + PIXEL_UPSCALERS

# Which request fields each generation tab edits (the top bar adds checkpoint, vae, clip_skip).
TOP_BAR = ("checkpoint", "vae", "clip_skip")
COMMON = (
    "prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "width", "height",
    "n_iter", "batch_size", "seed", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h",
)
HIRES = (
    "enable_hr", "hr_upscaler", "hr_second_pass_steps", "hr_denoising_strength", "hr_scale", "hr_resize_x",
    "hr_resize_y", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
)
TXT2IMG_FIELDS = TOP_BAR + COMMON + HIRES
IMG2IMG_FIELDS = TOP_BAR + COMMON + ("init_images", "resize_mode", "denoising_strength")
# The Inpaint tab; its outpainting pixels (four sliders) become `outpaint_pad` in the tab's own code.
INPAINT_FIELDS = IMG2IMG_FIELDS + (
    "mask", "mask_blur", "inpainting_mask_invert", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
    "soft_inpainting", "soft_inpainting_schedule_bias", "soft_inpainting_preservation", "soft_inpainting_contrast",
)


@dataclass(frozen=True)
class Converter:
    to_request: Callable[[Any], Any]
    to_widget: Callable[[Any], Any]


def _first_image(images: tuple[Any, ...]) -> Any:
    return images[0] if images else None


def _resize_index(label: Any) -> int:
    if isinstance(label, int):
        return label
    return RESIZE_MODES.index(label) if label in RESIZE_MODES else 0


def _label_index(label: Any, labels: tuple[str, ...]) -> int:
    """A radio's label → its index (an index passes through)."""
    if isinstance(label, int):
        return label
    if label not in labels:
        raise ValueError(f"{label!r} is not one of {', '.join(labels)}")
    return labels.index(label)


SPECIAL: dict[str, Converter] = {
    "checkpoint": Converter(lambda v: v or None, lambda v: v or None),
    # The job carries the VAE the user sees ("Automatic" = the checkpoint's sidecar), not the global setting.
    "vae": Converter(lambda v: v or None, lambda v: v or AUTOMATIC_VAE),
    "init_images": Converter(lambda v: (v,) if v is not None else (), _first_image),
    "resize_mode": Converter(_resize_index, lambda v: RESIZE_MODES[v]),
    "mask": Converter(lambda v: v, lambda v: v),
    "inpainting_mask_invert": Converter(lambda v: _label_index(v, inpaint.MASK_MODES), lambda v: inpaint.MASK_MODES[v]),
    "inpainting_fill": Converter(lambda v: _label_index(v, inpaint.MASKED_CONTENT), lambda v: inpaint.MASKED_CONTENT[v]),
    "inpaint_full_res": Converter(lambda v: v == inpaint.INPAINT_AREAS[1] if isinstance(v, str) else bool(v),
                                  lambda v: inpaint.INPAINT_AREAS[int(bool(v))]),
    "hr_sampler_name": Converter(lambda v: None if v in (None, "", SAME_SAMPLER) else v, lambda v: v or SAME_SAMPLER),
    "hr_scheduler": Converter(lambda v: None if v in (None, "", SAME_SCHEDULER) else v, lambda v: v or SAME_SCHEDULER),
}

_HINTS = typing.get_type_hints(GenerationRequest)


def _coerce(name: str, value: Any) -> Any:
    """Widget value → the request field's type (sliders send floats, numbers may send None)."""
    hint = _HINTS[name]
    default = getattr(GenerationRequest(), name)
    if value is None:
        return default
    if hint is int:
        return int(round(float(value)))
    if hint is float:
        return float(value)
    if hint is bool:
        return bool(value)
    if hint is str:
        return str(value)
    return value


def check_widgets(widgets: Mapping[str, Any], expected: tuple[str, ...]) -> None:
    """A tab must bind exactly its fields: a missing or extra widget is a bug caught at build time."""
    if set(widgets) != set(expected):
        raise RuntimeError(f"widgets do not match the binding table: {sorted(set(widgets) ^ set(expected))}")


def request_from_values(values: Mapping[str, Any], base: GenerationRequest | None = None) -> GenerationRequest:
    """Build a request from widget values keyed by field name; unknown keys are a programming error."""
    unknown = sorted(set(values) - set(GenerationRequest.field_names()))
    if unknown:
        raise KeyError(f"no GenerationRequest field for widget(s): {', '.join(unknown)}")
    changes = {}
    for name, value in values.items():
        conv = SPECIAL.get(name)
        changes[name] = conv.to_request(value) if conv else _coerce(name, value)
    return (base or GenerationRequest()).replace(**changes)


def values_from_request(request: GenerationRequest, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The widget value for every field in `names` (default: every field the UI shows)."""
    out = {}
    for name in names or tuple(dict.fromkeys(TXT2IMG_FIELDS + INPAINT_FIELDS)):
        value = getattr(request, name)
        conv = SPECIAL.get(name)
        out[name] = conv.to_widget(value) if conv else value
    return out


# ---- infotext ---------------------------------------------------------------------------------------
# Paste never switches the model or VAE behind the user's back, and never touches the init image.
PASTE_SKIPS = ("checkpoint", "vae", "init_images", "mask")


def values_from_infotext(text: str, names: tuple[str, ...]) -> dict[str, Any]:
    """Widget values to fill from an A1111 infotext ("Send to txt2img/img2img").

    For the img2img tab "Denoising strength" is the img2img strength, elsewhere the hires one, as in
    A1111's paste buttons; modules.infotext decides that from whether the base request is img2img.
    """
    img2img = any(n in names for n in ("init_images", "resize_mode"))  # paste leaves the image out of `names`
    base = GenerationRequest(init_images=(None,)) if img2img else GenerationRequest()
    request = infotext.request_from_params(infotext.parse(text), base)
    return values_from_request(request, tuple(n for n in names if n not in PASTE_SKIPS))


# ---- lists the widgets offer ------------------------------------------------------------------------
def sampler_choices(engine: Any) -> list[str]:
    """A1111 sampler labels: the engine's list when it offers one, else the sampler registry."""
    return list(engine.samplers()) if hasattr(engine, "samplers") else list(SAMPLERS)


def schedule_choices(engine: Any) -> list[str]:
    names = list(engine.schedulers()) if hasattr(engine, "schedulers") else list(SCHEDULES)
    return ["Automatic", *(n for n in names if n != "Automatic")]


def token_count(engine: Any, text: str, *, is_positive: bool = True, steps: int = 20) -> tuple[int, int]:
    """(tokens used, capacity) for A1111's `N/75` counter, from `engine.token_count` (the contract:
    extra-network tags removed, embeddings counted by their vectors, capacity 75 per chunk).
    `is_positive=False` for the negative box: as A1111, its `AND` is text, not a split into parts."""
    used, capacity = engine.token_count(text, steps=steps, is_positive=is_positive)
    return int(used), int(capacity)
