"""The demo model's picture measure (tools/demo_data.py) reads back what the training pictures show.

These are the rulers tests/test_demo_model.py measures the model with, so they are checked first on
pictures whose truth is known: the training renders themselves."""
from __future__ import annotations

import random
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import demo_data  # noqa: E402


def scenes(count: int, seed: int):
    rng = random.Random(seed)
    return [demo_data.random_scene(rng) for _ in range(count)]


def test_measure_reads_colour_background_position_and_shape_of_training_pictures():
    for scene in scenes(60, seed=11):
        m = demo_data.measure(demo_data.render(scene))
        assert (m.shape_color, m.background, m.position(), m.shape) == \
            (scene.color, scene.background, scene.position, scene.shape), scene
        assert m.shape_iou > 0.8


@pytest.mark.parametrize("shape", demo_data.SHAPES)
def test_every_shape_at_every_size_and_tilt_is_named(shape):
    rng = random.Random(shape)
    for size in demo_data.SIZES:
        for angle in (-0.25, 0.0, 0.25):
            scene = replace(demo_data.random_scene(rng), shape=shape, size=size, angle=angle,
                            radius=demo_data.SIZES[size])
            assert demo_data.measure(demo_data.render(scene)).shape == shape, (size, angle)


def test_a_blob_gets_a_low_fit_and_nothing_gets_no_shape():
    yy, xx = np.mgrid[:256, :256]
    ellipse = ((xx - 128) / 70.0) ** 2 + ((yy - 128) / 25.0) ** 2 <= 1  # a flat ellipse is none of the five
    shape, iou = demo_data.classify_shape(ellipse)
    assert iou < 0.75
    assert demo_data.classify_shape(np.zeros((256, 256), bool)) == (None, 0.0)


def test_off_colour_specks_do_not_count_as_the_shape():
    scene = replace(scenes(1, seed=3)[0], shape="square", size="medium", position="center",
                    cx=0.5, cy=0.5, radius=demo_data.SIZES["medium"], angle=0.0)
    pixels = np.array(demo_data.render(scene))
    pixels[4:20, 4:20] = demo_data.COLORS[scene.color]  # a speck near the corner, in the shape's colour
    assert demo_data.measure(pixels).shape == "square"
