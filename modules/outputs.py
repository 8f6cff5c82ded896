"""Saving images under outputs/, named and numbered as A1111 does, written atomically.

`outputs/txt2img-images/2026-11-23/00012-1234.png`: a per-folder counter (one more than the highest
number already there), then the file-name pattern (`[seed]` by default). Files are written to a temp
name and renamed, so a crash never leaves half an image, and the generation parameters go into the
file (PNG text chunk, or EXIF UserComment for JPEG/WEBP) through `modules.infotext`.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

_COUNTER_LOCK = threading.Lock()
_NUMBER = re.compile(r"^(\d+)[-.]")  # "00012-seed.png", and "00012.png" (a nameless Extras file)
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]')
MAX_NAME = 128


@dataclass(frozen=True)
class NameContext:
    """What the file-name pattern tags can refer to."""

    seed: int
    prompt: str = ""
    steps: int = 0
    sampler: str = ""
    cfg: float = 0.0
    width: int = 0
    height: int = 0
    model_name: str = ""
    model_hash: str = ""
    now: _dt.datetime | None = None


def _sanitize(text: str) -> str:
    return _UNSAFE.sub("_", text).strip().strip(".")[:MAX_NAME]


def expand_pattern(pattern: str, ctx: NameContext) -> str:
    """A1111's common file-name tags: [seed] [prompt] [prompt_words] [steps] [sampler] [cfg]
    [width] [height] [model_name] [model_hash] [date] [datetime]. Unknown tags are left as text."""
    now = ctx.now or _dt.datetime.now()
    words = " ".join(re.sub(r"[^\w\s]", " ", ctx.prompt).split()[:8])
    values: Mapping[str, Any] = {
        "seed": ctx.seed,
        "prompt": ctx.prompt,
        "prompt_words": words,
        "prompt_spaces": ctx.prompt,
        "steps": ctx.steps,
        "sampler": ctx.sampler,
        "cfg": f"{ctx.cfg:g}",
        "width": ctx.width,
        "height": ctx.height,
        "model_name": ctx.model_name,
        "model_hash": ctx.model_hash,
        "date": now.strftime("%Y-%m-%d"),
        "datetime": now.strftime("%Y%m%d%H%M%S"),
    }

    def sub(match: re.Match[str]) -> str:
        key = match.group(1).lower()
        return _sanitize(str(values[key])) if key in values else match.group(0)

    return _sanitize(re.sub(r"\[(\w+)\]", sub, pattern)) or str(ctx.seed)


def next_number(folder: Path) -> int:
    """One more than the highest `NNNNN-` or `NNNNN.` prefix in the folder (A1111's counter)."""
    highest = -1
    if folder.is_dir():
        for name in os.listdir(folder):
            m = _NUMBER.match(name)
            if m:
                highest = max(highest, int(m.group(1)))
    return highest + 1


def save_image(
    image: Any,
    folder: Path,
    ctx: NameContext,
    *,
    infotext: str | None,
    pattern: str = "[seed]",
    fmt: str = "png",
    per_date_folder: bool = True,
    chunks: Mapping[str, str] | None = None,
    stem: str | None = None,
) -> Path:
    """Write one image with its infotext (the `parameters` chunk / EXIF UserComment; None: none) and
    return the final path `NNNNN-<stem>.<fmt>`. `chunks`: extra PNG text chunks (the Extras tab's
    `postprocessing`/`extras`; JPEG and WEBP keep only the infotext). `stem`: a fixed name instead of
    the pattern; "" gives just the number (A1111's extras without a source name)."""
    now = ctx.now or _dt.datetime.now()
    if per_date_folder:
        folder = folder / now.strftime("%Y-%m-%d")
    folder.mkdir(parents=True, exist_ok=True)
    stem = expand_pattern(pattern, ctx) if stem is None else _sanitize(stem)
    with _COUNTER_LOCK:
        number = next_number(folder)
        final = folder / (f"{number:05d}-{stem}.{fmt}" if stem else f"{number:05d}.{fmt}")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f".{fmt}", dir=folder)
        os.close(fd)
        try:
            _write(image, Path(tmp), infotext, chunks if fmt == "png" else None)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return final


def _write(image: Any, path: Path, infotext: str | None, chunks: Mapping[str, str] | None) -> None:
    from modules.infotext import embed_in_png, save_with_infotext, write_image

    if not chunks:
        save_with_infotext(image, path, infotext)
        return
    from PIL import PngImagePlugin

    if infotext is not None:
        pnginfo = embed_in_png(infotext, chunks)
    else:
        pnginfo = PngImagePlugin.PngInfo()
        for key, value in chunks.items():
            pnginfo.add_text(key, str(value))
    write_image(image, path, format="PNG", pnginfo=pnginfo)


def grid_rows(count: int) -> int:
    """A1111's default grid layout (`n_rows = -1`): round(sqrt(n)) rows, at most n."""
    import math

    return max(1, min(count, round(math.sqrt(count))))


def make_grid(images: list[Any], rows: int | None = None) -> Any:
    """Images of one size pasted into a grid (row-major), as A1111's batch grid."""
    from PIL import Image

    rows = rows or grid_rows(len(images))
    cols = -(-len(images) // rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "black")
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * w, (i // cols) * h))
    return grid
