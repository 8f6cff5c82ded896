"""Images in and out of the API: base64 / data-URL decoding with limits, PNG encoding, PIL upscaling.

Decoding is where hostile input arrives, so every failure is a `RequestError` naming the field:
remote URLs are refused (never fetched: no server-side request forgery), sizes are checked from the
header before pixels are decoded (no decompression bombs).
"""
from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any

from PIL import Image, UnidentifiedImageError

from modules.validation import MAX_SIDE, RequestError

MAX_INPUT_PIXELS = MAX_SIDE * MAX_SIDE  # same bound as the largest image Palette can generate
MAX_BASE64_CHARS = 96 * 1024 * 1024  # ~72 MB of file per image
_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
PIL_UPSCALERS = {"None": Image.Resampling.LANCZOS, "Lanczos": Image.Resampling.LANCZOS,
                 "Nearest": Image.Resampling.NEAREST, "Bicubic": Image.Resampling.BICUBIC}


def decode_image(text: Any, field: str) -> Image.Image:
    """A base64 string or data URL → a loaded PIL image (RGB/RGBA/L as stored)."""
    if not isinstance(text, str) or not text.strip():
        raise RequestError(field, "must be a base64-encoded image or a data: URL")
    text = text.strip()
    if text.lower().startswith(("http://", "https://", "ftp://", "file:")):
        raise RequestError(field, "remote URLs are not fetched; send the image itself as base64 or a data: URL")
    if len(text) > MAX_BASE64_CHARS:
        raise RequestError(field, f"is {len(text)} characters of base64; the limit is {MAX_BASE64_CHARS}")
    match = _DATA_URL.match(text)
    if match:
        text = text[match.end():]
    elif text.startswith("data:"):
        raise RequestError(field, "data URLs must be base64 (data:image/png;base64,...)")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(field, "is not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
    except (UnidentifiedImageError, OSError, ValueError):
        raise RequestError(field, "is not an image Palette can read (PNG, JPEG, WEBP, …)") from None
    width, height = image.size
    if width * height > MAX_INPUT_PIXELS or max(width, height) > MAX_SIDE * 2:
        raise RequestError(field, f"is {width}x{height} pixels; the limit is {MAX_INPUT_PIXELS} pixels")
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RequestError(field, f"could not be decoded: {exc}") from None
    return image


def encode_png(image: Image.Image, parameters: str | None = None, *, extra: dict[str, str] | None = None) -> str:
    """A plain base64 PNG (no data: prefix, as A1111 returns) with the `parameters` text chunk."""
    from modules.infotext import embed_in_png

    buf = io.BytesIO()
    pnginfo = embed_in_png(parameters, extra) if parameters is not None else None
    image.save(buf, format="PNG", pnginfo=pnginfo)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def text_chunks(image: Image.Image) -> dict[str, str]:
    return {str(k): v for k, v in (image.info or {}).items() if isinstance(v, str)}


def check_upscaler(name: str, field: str) -> Image.Resampling:
    if name not in PIL_UPSCALERS:
        raise RequestError(field, f"unknown upscaler {name!r}; available: {', '.join(PIL_UPSCALERS)}")
    return PIL_UPSCALERS[name]


def _resize_by(image: Image.Image, scale: float, resample: Image.Resampling) -> Image.Image:
    """A1111's Upscaler.upscale with a PIL filter: the target is rounded down to a multiple of 8."""
    width = max(8, int(image.width * scale) // 8 * 8)
    height = max(8, int(image.height * scale) // 8 * 8)
    if (width, height) == image.size:
        return image
    return image.resize((width, height), resample=resample)


def upscale(image: Image.Image, opts: Any) -> tuple[Image.Image, str]:
    """A1111's extras upscale (scale by / scale to + crop, optional second upscaler blend) → (image, info)."""
    if opts.gfpgan_visibility or opts.codeformer_visibility:
        field = "gfpgan_visibility" if opts.gfpgan_visibility else "codeformer_visibility"
        raise RequestError(field, "face restoration is not available in Palette; send 0")
    first = check_upscaler(opts.upscaler_1, "upscaler_1")
    second = check_upscaler(opts.upscaler_2, "upscaler_2")
    if opts.resize_mode not in (0, 1):
        raise RequestError("resize_mode", "must be 0 (scale by) or 1 (scale to)")
    if opts.resize_mode == 1:
        for name in ("upscaling_resize_w", "upscaling_resize_h"):
            value = getattr(opts, name)
            if not 1 <= value <= MAX_SIDE * 2:
                raise RequestError(name, f"must be between 1 and {MAX_SIDE * 2}, got {value}")
        scale = max(opts.upscaling_resize_w / image.width, opts.upscaling_resize_h / image.height)
    else:
        scale = opts.upscaling_resize
        if not 0 < scale <= 8:
            raise RequestError("upscaling_resize", f"must be between 0 and 8, got {scale}")
    if image.width * scale * image.height * scale > MAX_INPUT_PIXELS * 4:
        raise RequestError("upscaling_resize", f"the result would exceed {MAX_INPUT_PIXELS * 4} pixels")
    source = image.convert("RGB") if image.mode not in ("RGB", "RGBA") else image
    result = _resize_by(source, scale, first)
    if opts.upscaler_2 != "None" and opts.extras_upscaler_2_visibility > 0:
        other = _resize_by(source, scale, second)
        result = Image.blend(result, other, min(1.0, float(opts.extras_upscaler_2_visibility)))
    info = f"Postprocess upscale by: {scale:g}, Postprocess upscaler: {opts.upscaler_1}"
    if opts.resize_mode == 1:
        info = f"Postprocess upscale to: {opts.upscaling_resize_w}x{opts.upscaling_resize_h}, " \
               f"Postprocess upscaler: {opts.upscaler_1}"
        if opts.upscaling_crop:
            w, h = opts.upscaling_resize_w, opts.upscaling_resize_h
            left, top = (result.width - w) // 2, (result.height - h) // 2
            result = result.crop((left, top, left + w, top + h))
    if opts.upscaler_2 != "None" and opts.extras_upscaler_2_visibility > 0:
        info += f", Postprocess upscaler 2: {opts.upscaler_2}"
    return result, info
