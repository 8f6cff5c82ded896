"""A1111's img2img "SD upscale" script: upscale, cut into overlapping tiles, img2img each, blend back.

The init image is enlarged by `scale` with any upscaler, split into tiles of the request's width ×
height overlapping by `overlap` pixels (A1111's split_grid placement), each tile goes through img2img
with the request's prompt and denoising strength (tile i gets seed + i, as A1111's batch loop gives
it), and the tiles are pasted back left to right, top to bottom with a linear ramp across each
overlap (A1111's combine_grid). The infotext gains `SD upscale overlap` and `SD upscale upscaler`.
`n_iter` repeats the whole script, picture n starting at seed + n (A1111's upscale_count loop). Run as
a queue task with `pass_job=True`: the job's progress shows tile by tile and interrupt/skip work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
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


def _tile_progress(progress: Callable[[ProgressEvent], None] | None, index: int, count: int
                   ) -> Callable[[ProgressEvent], None] | None:
    """A tile's step events counted over the whole script (tile `index` of `count`); the tile's own
    finished picture is not a result, so it is not passed on."""
    if progress is None:
        return None
    return lambda event: progress(replace(event, job_index=index, job_count=count, images=()))


def run(engine: Any, request: GenerationRequest, opts: SDUpscaleOptions, *,
        progress: Callable[[ProgressEvent], None] | None = None, cancel: Any = None) -> Result:
    """The whole script as one job (run it on the worker thread, with the job's `progress` and
    `cancel`: an interrupt stops between tiles and inside the running tile; skip skips one tile).

    `n_iter` makes that many pictures, iteration n starting at seed + n, as A1111's script does."""
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

    def interrupted() -> bool:
        return cancel is not None and cancel.interrupted.is_set()

    def crop(x: int, y: int) -> Image.Image:
        return image.crop((x, y, x + tile_w, y + tile_h))

    tile_count = len(xs) * len(ys)
    pictures, texts, seeds, firsts = [], [], [], []
    for n in range(max(int(request.n_iter), 1)):
        if interrupted():
            break
        start = seed + n
        first: Result | None = None
        tiles: list[list[Image.Image]] = []
        for y in ys:
            row: list[Image.Image] = []
            for x in xs:
                if interrupted():
                    break
                index = len(tiles) * len(xs) + len(row)
                tile_request = request.replace(init_images=(crop(x, y),), seed=start + index, batch_size=1, n_iter=1,
                                               resize_mode=0, do_not_save=True)
                result = engine.generate(tile_request, cancel=cancel,
                                         progress=_tile_progress(progress, n * tile_count + index, request.n_iter * tile_count))
                row.append(result.images[0] if result.images else tile_request.init_images[0])  # skipped: as it was
                if result.images and first is None:
                    first = result
            tiles.append(row + [crop(x, y) for x in xs[len(row):]])
        if first is None and n > 0:  # interrupted before this picture's first tile
            break
        tiles += [[crop(x, y) for x in xs] for y in ys[len(tiles):]]
        combined = combine(image.size, xs, ys, tiles, overlap)
        text = (first.infotexts[0] if first and first.infotexts else "")
        text += f", SD upscale overlap: {opts.overlap}, SD upscale upscaler: {opts.upscaler}"
        pictures.append(combined)
        texts.append(text)
        seeds.append(start)
        firsts.append(first)
        if progress is not None:
            progress(ProgressEvent(0, 0, n, request.n_iter, images=(combined,)))
    paths = _save(engine, request, pictures, texts, seeds)
    first = next((f for f in firsts if f is not None), None)
    info = dict(first.info) if first else {}
    info.update(seed=seeds[0] if seeds else seed, all_seeds=seeds, infotexts=texts, all_prompts=[request.prompt] * len(seeds),
                all_negative_prompts=[request.negative_prompt] * len(seeds), tiles=tile_count, width=image.width,
                height=image.height, grid_path=None,
                extra_generation_params={"SD upscale overlap": opts.overlap, "SD upscale upscaler": opts.upscaler})
    subseeds = tuple(f.subseeds[0] for f in firsts if f and f.subseeds)
    return Result(tuple(pictures), tuple(texts), tuple(seeds), subseeds if len(subseeds) == len(seeds) else (), (request.prompt,) * len(seeds),
                  (request.negative_prompt,) * len(seeds), info, paths, interrupted())


def _save(engine: Any, request: GenerationRequest, pictures: list[Image.Image], texts: list[str], seeds: list[int]
          ) -> tuple[str, ...]:
    """Each picture under the img2img folder, named from its start seed (A1111 saves each one)."""
    if request.do_not_save or not engine.settings.samples_save:
        return ()
    from modules import outputs

    settings = engine.settings
    folder = engine.output_dir(settings.outdir_img2img_samples)
    return tuple(str(outputs.save_image(
        picture, folder, outputs.NameContext(seed=seed, prompt=request.prompt, steps=request.steps,
                                             sampler=request.sampler_name, cfg=request.cfg_scale,
                                             width=picture.width, height=picture.height),
        infotext=text, pattern=settings.samples_filename_pattern, fmt=settings.samples_format,
        per_date_folder=settings.save_to_dirs)) for picture, text, seed in zip(pictures, texts, seeds))
