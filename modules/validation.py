"""Request validation: every bad field is refused by name before any model work starts.

The API turns `RequestError` into HTTP 422 with the field name; the UI shows the message.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection

from modules.types import RESIZE_MODES, GenerationRequest

MAX_STEPS = 1000
MAX_SIDE = 8192
MAX_BATCH_SIZE = 64
MAX_BATCH_COUNT = 1000
MAX_PROMPT_CHARS = 20_000
LATENT_UPSCALE_MODES = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)
PIXEL_UPSCALERS = ("None", "Lanczos", "Nearest", "Bicubic")  # PIL filters by name: upscalers.PIL_FILTERS


class RequestError(ValueError):
    """A request field with an unusable value. (A plain exception, not a frozen dataclass: Python sets
    `__traceback__` on exceptions that pass through context managers, which a frozen one refuses.)"""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RequestError) and (self.field, self.message) == (other.field, other.message)

    __hash__ = ValueError.__hash__


def _finite(name: str, value: float, lo: float, hi: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise RequestError(name, f"must be a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(name, f"must be between {lo:g} and {hi:g}, got {value:g}")


def _integer(name: str, value: int, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(name, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(name, f"must be between {lo} and {hi}, got {value}")


def _side(name: str, value: int) -> None:
    _integer(name, value, 64, MAX_SIDE)
    if value % 8:
        raise RequestError(name, f"must be a multiple of 8, got {value} (try {value // 8 * 8 or 8})")


def validate_request(request: GenerationRequest, *, upscalers: Collection[str] | None = None) -> None:
    """Raise RequestError for the first bad field. Sampler and schedule names are resolved here too.

    `upscalers`: every name `hr_upscaler` may take (the engine's `hr_upscaler_names()`: Latent modes,
    PIL filters and model files); None means the built-in ones only."""
    from modules.sampling.samplers import resolve_sampler_name
    from modules.sampling.schedules import SCHEDULES

    _integer("steps", request.steps, 1, MAX_STEPS)
    _side("width", request.width)
    _side("height", request.height)
    _finite("cfg_scale", request.cfg_scale, 0.0, 100.0)
    _integer("batch_size", request.batch_size, 1, MAX_BATCH_SIZE)
    _integer("n_iter", request.n_iter, 1, MAX_BATCH_COUNT)
    _integer("seed", request.seed, -1, 2**32 - 1)
    _integer("subseed", request.subseed, -1, 2**32 - 1)
    _finite("subseed_strength", request.subseed_strength, 0.0, 1.0)
    _integer("clip_skip", request.clip_skip, 1, 12)
    _finite("denoising_strength", request.denoising_strength, 0.0, 1.0)
    _finite("s_noise", request.s_noise, 0.0, 10.0)
    _finite("s_churn", request.s_churn, 0.0, 100.0)
    if request.eta is not None:
        _finite("eta", request.eta, 0.0, 10.0)
    for name in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
        text = getattr(request, name)
        if not isinstance(text, str):
            raise RequestError(name, "must be text")
        if len(text) > MAX_PROMPT_CHARS:
            raise RequestError(name, f"is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}")
    for name in ("sampler_name", "hr_sampler_name"):
        value = getattr(request, name)
        if value is None or (name == "hr_sampler_name" and value in ("", "Use same sampler")):
            continue
        try:
            resolve_sampler_name(value)
        except ValueError as exc:
            raise RequestError(name, str(exc)) from None
    for name in ("scheduler", "hr_scheduler"):
        value = getattr(request, name)
        if value is None or (name == "hr_scheduler" and value in ("", "Use same scheduler")):
            continue
        if value not in SCHEDULES and value != "Automatic":
            known = ", ".join(["Automatic", *SCHEDULES])
            raise RequestError(name, f"unknown schedule type {value!r}; known: {known}")
    _integer("resize_mode", request.resize_mode, 0, len(RESIZE_MODES) - 1)
    from modules import inpaint  # mask, inpaint options and outpainting

    inpaint.validate(request)
    if request.enable_hr:
        _finite("hr_scale", request.hr_scale, 1.0, 8.0)
        _integer("hr_second_pass_steps", request.hr_second_pass_steps, 0, MAX_STEPS)
        _finite("hr_denoising_strength", request.hr_denoising_strength, 0.0, 1.0)
        for name in ("hr_resize_x", "hr_resize_y"):
            value = getattr(request, name)
            if value:
                _side(name, value)
        known = tuple(upscalers) if upscalers is not None else LATENT_UPSCALE_MODES + PIXEL_UPSCALERS
        if request.hr_upscaler not in known:
            raise RequestError("hr_upscaler", f"unknown upscaler {request.hr_upscaler!r}; known: {', '.join(known)}")
