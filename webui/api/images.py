"""Images in and out of the API: base64 / data-URL decoding with limits and PNG encoding.

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
    from modules.infotext import embed_in_png, write_image

    buf = io.BytesIO()
    pnginfo = embed_in_png(parameters, extra) if parameters is not None else None
    write_image(image, buf, format="PNG", pnginfo=pnginfo)
    return base64.b64encode(buf.getvalue()).decode("ascii")

