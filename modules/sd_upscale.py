"""A1111's img2img "SD upscale" script: upscale, cut into overlapping tiles, img2img each, blend back.

The init image is enlarged by `scale` with any upscaler, split into tiles of the request's width ×
height overlapping by `overlap` pixels (A1111's split_grid placement), each tile goes through img2img
with the request's prompt and denoising strength (tile i gets seed + i, as A1111's batch loop gives
it), and the tiles are pasted back left to right, top to bottom with a linear ramp across each
overlap (A1111's combine_grid). The infotext gains `SD upscale overlap` and `SD upscale upscaler`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image

from modules.types import GenerationRequest, ProgressEvent, Result
from modules.validation import RequestError

SCRIPT_NAME = "SD upscale"


@dataclass(frozen=True)
class SDUpscaleOptions:
    upscaler: str = "None"
    scale: float = 2.0
    overlap: int = 64


def is_script(name: str | None) -> bool:
    """A1111's script_name for this script ("SD upscale", any case)."""
    return bool(name) and name.strip().lower() == SCRIPT_NAME.lower()


def options_from_args(args: list[Any], upscalers: list[str]) -> SDUpscaleOptions:
    """A1111's script_args `[info, overlap, upscaler_index, scale_factor]`; the upscaler may also be
    given by name. The index counts in Palette's `/sdapi/v1/upscalers` list."""
    values = list(args) + [None] * (4 - len(args))
    _, overlap, upscaler, scale = values[:4]
    if isinstance(upscaler, int) and not isinstance(upscaler, bool):
        if not 0 <= upscaler < len(upscalers):
            raise RequestError("script_args", f"upscaler index {upscaler} is out of range 0..{len(upscalers) - 1}")
        upscaler = upscalers[upscaler]
    try:
        return SDUpscaleOptions(upscaler=str(upscaler if upscaler is not None else "None"),
                                scale=float(2.0 if scale is None else scale), overlap=int(64 if overlap is None else overlap))
    except (TypeError, ValueError):
        raise RequestError("script_args", f"expected [info, overlap, upscaler, scale_factor], got {args!r}") from None


def positions(size: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one side, as A1111's split_grid places them (evenly, last one flush)."""
    count = max(math.ceil((size - overlap) / (tile - overlap)), 1)
    step = (size - tile) / (count - 1) if count > 1 else 0
    return [min(int(i * step), size - tile) for i in range(count)]


def _ramp(length: int, overlap: int, vertical: bool, across: int) -> Image.Image:
    ramp = (np.arange(overlap, dtype=np.float32) * 255 / overlap).astype(np.uint8)
    mask = np.repeat(ramp[:, None], across, axis=1) if vertical else np.repeat(ramp[None, :], length, axis=0)
    return Image.fromarray(mask, "L")


def combine(size: tuple[int, int], xs: list[int], ys: list[int], tiles: list[list[Image.Image]], overlap: int) -> Image.Image:
    """Tiles (rows of images) pasted back; each overlap fades linearly from the earlier tile to the later."""
    width, height = size
    out = Image.new("RGB", size)
    for y, row in zip(ys, tiles):
        tile_h = row[0].height
        line = Image.new("RGB", (width, tile_h))
        for x, tile in zip(xs, row):
            if x == 0:
                line.paste(tile, (0, 0))
                continue
            line.paste(tile.crop((0, 0, overlap, tile_h)), (x, 0), mask=_ramp(tile_h, overlap, False, overlap))
            line.paste(tile.crop((overlap, 0, tile.width, tile_h)), (x + overlap, 0))
        if y == 0:
            out.paste(line, (0, 0))
            continue
        out.paste(line.crop((0, 0, width, overlap)), (0, y), mask=_ramp(overlap, overlap, True, width))
        out.paste(line.crop((0, overlap, width, tile_h)), (0, y + overlap))
    return out


def run(engine: Any, request: GenerationRequest, opts: SDUpscaleOptions, *,
        progress: Callable[[ProgressEvent], None] | None = None, cancel: Any = None) -> Result:
    """The whole script as one job (run it on the worker thread)."""
    from modules.sampling.noise import random_seed

    if not request.init_images:
        raise RequestError("init_images", "SD upscale needs an input image")
    if opts.upscaler not in engine.upscalers.names():
        raise RequestError("script_args", f"unknown upscaler {opts.upscaler!r}; available: {', '.join(engine.upscalers.names())}")
    if not 1.0 <= float(opts.scale) <= 8.0:
        raise RequestError("script_args", f"scale factor must be between 1 and 8, got {opts.scale}")
    tile_w, tile_h = request.width, request.height
    if not 0 <= opts.overlap < min(tile_w, tile_h) // 2:
        raise RequestError("script_args", f"overlap must be between 0 and {min(tile_w, tile_h) // 2 - 1}, got {opts.overlap}")
    source = request.init_images[0].convert("RGB")
    image = engine.upscalers.upscale(source, opts.upscaler, float(opts.scale)) if opts.upscaler != "None" else source
    if image.width < tile_w or image.height < tile_h:
        raise RequestError("script_args", f"the upscaled image ({image.width}x{image.height}) is smaller than one "
                                          f"tile ({tile_w}x{tile_h}): raise the scale factor or lower width/height")
    overlap = max(opts.overlap, 1)
    xs, ys = positions(image.width, tile_w, overlap), positions(image.height, tile_h, overlap)
    seed = request.seed if request.seed != -1 else random_seed()
    tiles: list[list[Image.Image]] = []
    first: Result | None = None
    index = 0
    for y in ys:
        row = []
        for x in xs:
            tile_request = request.replace(init_images=(image.crop((x, y, x + tile_w, y + tile_h)),), seed=seed + index,
                                           batch_size=1, n_iter=1, resize_mode=0, do_not_save=True)
            result = engine.generate(tile_request, progress=progress, cancel=cancel)
            if not result.images:  # interrupted or skipped: keep the tile as it was
                row.append(tile_request.init_images[0])
            else:
                row.append(result.images[0])
                first = first or result
            index += 1
            if cancel is not None and cancel.interrupted.is_set():
                break
        tiles.append(row + [image.crop((x, y, x + tile_w, y + tile_h)) for x in xs[len(row):]])
        if cancel is not None and cancel.interrupted.is_set():
            break
    tiles += [[image.crop((x, y, x + tile_w, y + tile_h)) for x in xs] for y in ys[len(tiles):]]
    combined = combine(image.size, xs, ys, tiles, overlap)
    text = (first.infotexts[0] if first and first.infotexts else "")
    text += f", SD upscale overlap: {opts.overlap}, SD upscale upscaler: {opts.upscaler}"
    paths: tuple[str, ...] = ()
    if not request.do_not_save and engine.settings.samples_save:
        from modules import outputs

        ctx = outputs.NameContext(seed=seed, prompt=request.prompt, steps=request.steps, sampler=request.sampler_name,
                                  cfg=request.cfg_scale, width=combined.width, height=combined.height)
        settings = engine.settings
        paths = (str(outputs.save_image(combined, engine.output_dir(settings.outdir_img2img_samples), ctx, infotext=text,
                                        pattern=settings.samples_filename_pattern, fmt=settings.samples_format,
                                        per_date_folder=settings.save_to_dirs)),)
    info = dict(first.info) if first else {}
    info.update(seed=seed, all_seeds=[seed], infotexts=[text], all_prompts=[request.prompt],
                all_negative_prompts=[request.negative_prompt], tiles=len(xs) * len(ys), width=combined.width,
                height=combined.height, grid_path=None,
                extra_generation_params={"SD upscale overlap": opts.overlap, "SD upscale upscaler": opts.upscaler})
    return Result((combined,), (text,), (seed,), (first.subseeds[0],) if first and first.subseeds else (),
                  (request.prompt,), (request.negative_prompt,), info, paths,
                  bool(cancel is not None and cancel.interrupted.is_set()))
