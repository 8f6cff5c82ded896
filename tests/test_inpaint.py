"""The mask maths of modules/inpaint.py, against independent formulas (no models)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from modules import inpaint


def gaussian_reference(arr: np.ndarray, radius: int) -> np.ndarray:
    """Separable Gaussian (σ = radius, 2·int(2.5σ+0.5)+1 taps) with reflect-101 borders, written out."""
    half = int(2.5 * radius + 0.5)
    taps = np.array([math.exp(-(i * i) / (2 * radius * radius)) for i in range(-half, half + 1)])
    taps /= taps.sum()
    out = arr.astype(np.float64)
    for axis in (1, 0):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (half, half)
        padded = np.pad(out, pad, mode="reflect")
        out = sum(taps[k] * np.take(padded, range(k, k + arr.shape[axis]), axis=axis) for k in range(len(taps)))
        out = np.round(out)  # OpenCV rounds to uint8 after each pass
    return out


def test_blur_matches_a_written_out_gaussian():
    mask = Image.new("L", (48, 40), 0)
    mask.paste(255, (10, 12, 30, 26))
    blurred = np.asarray(inpaint.blur_mask(mask, 4), dtype=np.float64)
    assert np.abs(blurred - gaussian_reference(np.asarray(mask), 4)).max() <= 1
    # the blur stops int(2.5·r+0.5) pixels from the edge
    assert blurred[:, 40:].max() == 0 and blurred[:, 39].max() > 0  # white up to column 29, reach 10
    assert np.array_equal(np.asarray(inpaint.blur_mask(mask, 0)), np.asarray(mask))


def test_binary_mask_thresholds_and_reads_brush_alpha():
    grey = Image.new("L", (4, 1))
    grey.putdata([0, 128, 129, 255])
    assert list(inpaint.binary_mask(grey).getdata()) == [0, 0, 255, 255]
    assert list(inpaint.binary_mask(grey, round_=False).getdata()) == [0, 128, 129, 255]
    brush = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    brush.putpixel((2, 0), (255, 0, 0, 255))  # a red stroke on a transparent layer
    assert list(inpaint.binary_mask(brush).getdata()) == [0, 0, 255, 0]
    assert list(inpaint.invert_mask(grey).getdata()) == [255, 127, 126, 0]


def test_crop_region_pads_and_clips():
    mask = Image.new("L", (100, 80), 0)
    mask.paste(255, (10, 20, 30, 50))
    assert inpaint.crop_region(mask, 0) == (10, 20, 30, 50)
    assert inpaint.crop_region(mask, 15) == (0, 5, 45, 65)
    assert inpaint.crop_region(Image.new("L", (8, 8), 0), 4) is None


@pytest.mark.parametrize(
    ("box", "size", "image", "expected"),
    [
        ((40, 40, 60, 50), (64, 64), (100, 100), (40, 35, 60, 55)),  # wide box grows in height, centred
        ((40, 40, 50, 60), (64, 64), (100, 100), (35, 40, 55, 60)),  # tall box grows in width
        ((0, 0, 10, 40), (64, 64), (100, 100), (0, 0, 40, 40)),  # pushed back inside at the left edge
        ((90, 0, 100, 40), (64, 64), (100, 100), (60, 0, 100, 40)),  # and at the right edge
        ((0, 0, 10, 80), (64, 64), (50, 80), (0, 0, 50, 80)),  # the image is too small: clipped
    ],
)
def test_expand_region_reaches_the_working_aspect_ratio(box, size, image, expected):
    assert inpaint.expand_region(box, *size, *image) == expected


def test_fill_takes_the_colour_around_the_hole():
    image = Image.new("RGB", (64, 64), (200, 40, 10))
    image.paste((0, 0, 255), (24, 24, 40, 40))  # the masked part is blue; around it is orange
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    filled = np.asarray(inpaint.fill_masked(image, mask), dtype=np.int16)
    assert np.abs(filled[24:40, 24:40] - np.array([200, 40, 10])).max() <= 8  # premultiplied-alpha rounding
    assert np.array_equal(filled[:20], np.asarray(image, dtype=np.int16)[:20])


def test_composite_is_exact_where_the_mask_is_black():
    original = Image.new("RGB", (4, 1), (10, 20, 30))
    generated = Image.new("RGB", (4, 1), (250, 240, 230))
    mask = Image.new("L", (4, 1))
    mask.putdata([0, 1, 128, 255])
    out = list(inpaint.composite(generated, original, mask).getdata())
    assert out[0] == (10, 20, 30) and out[3] == (250, 240, 230)
    assert out[2] == tuple(round(g * 128 / 255 + o * 127 / 255) for g, o in zip((250, 240, 230), (10, 20, 30)))


def test_overlay_mask_doubles_for_whole_picture():
    mask = Image.new("L", (3, 1))
    mask.putdata([0, 100, 200])
    assert list(inpaint.overlay_mask(mask, whole_picture=True, soft=False).getdata()) == [0, 200, 255]
    assert list(inpaint.overlay_mask(mask, whole_picture=False, soft=False).getdata()) == [0, 100, 200]
    assert list(inpaint.overlay_mask(mask, whole_picture=True, soft=True).getdata()) == [0, 100, 200]


def test_outpaint_canvas_places_the_original_and_masks_the_new_area():
    image = Image.new("RGB", (20, 10), (0, 0, 0))
    image.paste((255, 0, 0), (0, 0, 10, 10))  # left half red, right half black
    canvas, mask = inpaint.outpaint_canvas(image, 8, 4, 2, 6)
    assert canvas.size == mask.size == (32, 18)
    assert np.array_equal(np.asarray(canvas)[2:12, 8:28], np.asarray(image))
    m = np.asarray(mask)
    assert (m[2:12, 8:28] == 0).all() and m.sum() == 255 * (32 * 18 - 20 * 10)
    left = np.asarray(canvas, dtype=np.int16)[2:12, :4]
    assert left[..., 0].mean() > 150  # the left band continues the red edge
    right = np.asarray(canvas, dtype=np.int16)[2:12, 30:]
    assert right[..., 0].mean() < 100  # the right band continues the black edge


def test_resize_fill_bands_match_the_resize():
    bands = np.asarray(inpaint.resize_fill_bands((64, 32), 64, 64))
    assert (bands[:16] == 255).all() and (bands[48:] == 255).all() and (bands[16:48] == 0).all()
    side = np.asarray(inpaint.resize_fill_bands((32, 64), 64, 64))
    assert (side[:, :16] == 255).all() and (side[:, 16:48] == 0).all()
    assert not np.asarray(inpaint.resize_fill_bands((64, 64), 64, 64)).any()


def test_latent_mask_shrinks_and_rounds():
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 40, 40))
    m = inpaint.latent_mask(mask, 8, 8)
    assert m.shape == (1, 1, 8, 8) and set(m.unique().tolist()) == {0.0, 1.0}
    assert m[0, 0, 3, 3] == 1 and m[0, 0, 0, 0] == 0
    soft = inpaint.latent_mask(mask, 8, 8, round_=False)
    assert ((soft > 0) & (soft < 1)).any()


def test_latent_blend_keeps_the_unmasked_latent():
    init, current = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    blend = inpaint.LatentBlend(init, mask)
    out = blend(current, current, torch.tensor([3.0, 3.0]))
    assert torch.equal(out[..., :2, :], init[..., :2, :]) and torch.equal(out[..., 2:6, 2:6], current[..., 2:6, 2:6])
    assert torch.equal(blend.final(current), out)


def test_soft_blend_interpolates_and_keeps_magnitudes():
    init, current = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    for t_value in (0.0, 1.0):
        t = torch.full((1, 4, 3, 3), t_value)
        want = init if t_value == 0 else current
        assert torch.allclose(inpaint.soft_blend(init, current, t, 4.0), want, atol=1e-4)
    t = torch.full((1, 4, 3, 3), 0.5)
    out = inpaint.soft_blend(init, current, t, 1.0)  # contrast 1: the mean of the two magnitudes
    mixed = (init + current) / 2
    expected = mixed * ((init.norm(dim=1, keepdim=True) + current.norm(dim=1, keepdim=True)) / 2
                        / (mixed.norm(dim=1, keepdim=True) + 1e-5))
    assert torch.allclose(out, expected, atol=1e-5)
    # soft steps: σ large → mostly the original, σ → 0 → the sample (t = m^(σ^bias · preservation))
    mask = torch.full((1, 1, 3, 3), 0.5)
    blend = inpaint.LatentBlend(init, mask, inpaint.SoftOptions())
    high = blend(current, current, torch.tensor([10.0]))
    low = blend(current, current, torch.tensor([0.01]))
    assert (high - init).norm() < (high - current).norm() and (low - current).norm() < (low - init).norm()
