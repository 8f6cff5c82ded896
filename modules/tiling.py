"""Tiled image-to-image inference with overlap and feathered, seam-free blending.

A network that maps an H×W image to (s·H)×(s·W) is run on overlapping tiles so any image size fits in
memory. Each tile's output is weighted by a separable ramp: zero for `margin` input pixels next to an
edge it shares with another tile (where the tile's output suffers from the missing context), then a
linear ramp over `overlap − 2·margin` pixels, then one. The accumulated sum is divided by the summed
weights, so the blend is a convex combination everywhere and no seam is visible.

Exactness: a pixel whose receptive field (in input pixels) is at most `margin` gets only tiles that saw
its whole receptive field, so the tiled output equals the untiled one there (up to float rounding). Tile
starts are aligned to `align` (windowed transformers need their attention windows to line up).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class TileGrid:
    """Input-pixel spans `[start, end)` of the tiles along each axis."""

    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)


def default_margin(overlap: int) -> int:
    """The context (input pixels) thrown away at each shared tile edge: a quarter of the overlap."""
    return max(overlap // 4, 0)


def spans(size: int, tile: int, overlap: int, align: int = 1) -> tuple[tuple[int, int], ...]:
    """Tiles covering `[0, size)`: length `tile` (the last one up to `align − 1` longer, ending at
    `size`), starts multiples of `align`, neighbours overlapping by at least `overlap`."""
    align = max(int(align), 1)
    if tile <= 0 or size <= tile:
        return ((0, size),)
    tile = max(tile, align)
    overlap = min(max(overlap, 0), tile // 2)
    stride = max(tile - overlap - (align - 1), 1)
    count = math.ceil((size - tile) / stride) + 1
    last = (size - tile) // align * align
    starts: list[int] = []
    for i in range(count):
        start = round(i * last / (count - 1)) // align * align if count > 1 else 0
        if not starts or start > starts[-1]:
            starts.append(start)
    starts[-1] = last
    return tuple((s, size if i == len(starts) - 1 else s + tile) for i, s in enumerate(starts))


def plan_tiles(height: int, width: int, tile: int, overlap: int, align: int = 1) -> TileGrid:
    return TileGrid(spans(height, tile, overlap, align), spans(width, tile, overlap, align))


def ramp(span: tuple[int, int], size: int, scale: int, margin: int, feather: int) -> torch.Tensor:
    """1-D blend weights (output pixels) of one tile: ramps only at edges shared with another tile."""
    start, end = span
    u = (torch.arange((end - start) * scale, dtype=torch.float64) + 0.5) / scale + start  # input units
    w = torch.ones_like(u)
    if start > 0:
        w = torch.minimum(w, ((u - start - margin) / feather).clamp(0, 1))
    if end < size:
        w = torch.minimum(w, ((end - margin - u) / feather).clamp(0, 1))
    return w.float()


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    scale: int,
    *,
    tile: int,
    overlap: int,
    align: int = 1,
    margin: int | None = None,
    on_tile: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """`fn` applied to `image` ([1, C, H, W]) tile by tile; returns [1, C', s·H, s·W] float32 on the CPU.

    `tile` and `overlap` are in input pixels (`tile <= 0`: one pass over the whole image). `on_tile(i, n)`
    is called after each tile (progress, cancellation: raise from it to stop)."""
    _, _, height, width = image.shape
    grid = plan_tiles(height, width, tile, overlap, align)
    if grid.count == 1:
        out = fn(image).float().cpu()
        if on_tile:
            on_tile(1, 1)
        return out
    overlap = min(max(overlap, 0), tile // 2)
    margin = default_margin(overlap) if margin is None else margin
    margin = min(margin, max((overlap - 1) // 2, 0))
    feather = max(overlap - 2 * margin, 1)
    acc: torch.Tensor | None = None
    weight = torch.zeros(1, 1, height * scale, width * scale)
    done = 0
    for ys in grid.rows:
        wy = ramp(ys, height, scale, margin, feather)
        for xs in grid.cols:
            part = fn(image[:, :, ys[0]:ys[1], xs[0]:xs[1]]).float().cpu()
            expected = ((ys[1] - ys[0]) * scale, (xs[1] - xs[0]) * scale)
            if tuple(part.shape[-2:]) != expected:
                raise RuntimeError(f"a tile of {ys[1] - ys[0]}x{xs[1] - xs[0]} came back {tuple(part.shape[-2:])}, "
                                   f"expected {expected} for scale {scale}")
            if acc is None:
                acc = torch.zeros(1, part.shape[1], height * scale, width * scale)
            w = wy[:, None] * ramp(xs, width, scale, margin, feather)[None, :]
            oy, ox = slice(ys[0] * scale, ys[1] * scale), slice(xs[0] * scale, xs[1] * scale)
            acc[:, :, oy, ox] += part * w
            weight[:, :, oy, ox] += w
            done += 1
            if on_tile:
                on_tile(done, grid.count)
    assert acc is not None
    return acc / weight.clamp_min(1e-12)
