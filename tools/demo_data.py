"""Synthetic "shapes" data for Palette's demo model: pictures drawn with PIL, and their captions.

Every picture is one shape (circle, square, triangle, star, heart) in a named colour on a flat,
differently-coloured background, at one of nine positions and in one of three sizes. Everything is
drawn from a seeded `random.Random`, so the same seed gives the same pictures and captions on any
machine. The scene is a small dataclass; captions are written from it at training time (a fresh wording
each time a picture is seen), so the model learns the words, not one sentence.

Also here: the named colour palette and the measure the tests and the `--grid` report use to check a
generated picture (background colour, shape colour, shape centroid), so training and testing agree on
what "a red circle on a blue background, top left" looks like.
"""
from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Named colours (sRGB). Chosen far apart so a nearest-colour classifier can tell them apart.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (245, 220, 40),
    "green": (40, 165, 60),
    "blue": (35, 75, 220),
    "purple": (135, 50, 185),
    "pink": (245, 135, 195),
    "white": (245, 245, 240),
    "black": (20, 20, 25),
}
COLOR_NAMES = tuple(COLORS)
SHAPES = ("circle", "square", "triangle", "star", "heart")
# Position word → (x, y) centre as a fraction of the picture.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top": (0.5, 0.25),
    "top right": (0.75, 0.25),
    "left": (0.25, 0.5),
    "center": (0.5, 0.5),
    "right": (0.75, 0.5),
    "bottom left": (0.25, 0.75),
    "bottom": (0.5, 0.75),
    "bottom right": (0.75, 0.75),
}
# Size word → the shape's radius as a fraction of the picture's side.
SIZES: dict[str, float] = {"small": 0.11, "medium": 0.16, "large": 0.21}

# How a position is said in a caption (several wordings each).
_POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("top left", "in the top left", "in the top left corner", "at the top left"),
    "top": ("top", "at the top", "top center", "in the upper middle"),
    "top right": ("top right", "in the top right", "in the top right corner", "at the top right"),
    "left": ("left", "on the left", "at the left", "middle left"),
    "center": ("center", "in the center", "in the middle", "centered"),
    "right": ("right", "on the right", "at the right", "middle right"),
    "bottom left": ("bottom left", "in the bottom left", "in the bottom left corner", "at the bottom left"),
    "bottom": ("bottom", "at the bottom", "bottom center", "in the lower middle"),
    "bottom right": ("bottom right", "in the bottom right", "in the bottom right corner", "at the bottom right"),
}


@dataclass(frozen=True)
class Scene:
    """What one training picture shows."""

    shape: str
    color: str
    background: str
    position: str
    size: str
    # exact geometry and shading (jittered around the named values)
    cx: float
    cy: float
    radius: float
    angle: float
    fg_rgb: tuple[int, int, int]
    bg_rgb: tuple[int, int, int]


def _jitter_rgb(rgb: tuple[int, int, int], rng: random.Random, amount: int = 10) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def random_scene(rng: random.Random) -> Scene:
    shape = rng.choice(SHAPES)
    color = rng.choice(COLOR_NAMES)
    background = rng.choice([c for c in COLOR_NAMES if c != color])
    position = rng.choice(tuple(POSITIONS))
    size = rng.choice(tuple(SIZES))
    px, py = POSITIONS[position]
    radius = SIZES[size] * rng.uniform(0.9, 1.1)
    cx = px + rng.uniform(-0.04, 0.04)
    cy = py + rng.uniform(-0.04, 0.04)
    angle = rng.uniform(-0.25, 0.25)  # a slight tilt, radians
    return Scene(shape, color, background, position, size, cx, cy, radius, angle,
                 _jitter_rgb(COLORS[color], rng), _jitter_rgb(COLORS[background], rng))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def rot(points):
        ca, sa = math.cos(angle), math.sin(angle)
        return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]

    if shape == "square":
        s = r * 0.85
        return rot([(-s, -s), (s, -s), (s, s), (-s, s)])
    if shape == "triangle":
        return rot([(r * math.cos(a), r * math.sin(a) + r * 0.15)
                    for a in (-math.pi / 2, -math.pi / 2 + 2 * math.pi / 3, -math.pi / 2 + 4 * math.pi / 3)])
    if shape == "star":
        pts = []
        for i in range(10):
            a = -math.pi / 2 + i * math.pi / 5
            rr = r if i % 2 == 0 else r * 0.45
            pts.append((rr * math.cos(a), rr * math.sin(a)))
        return rot(pts)
    if shape == "heart":
        pts = []
        for i in range(64):
            t = 2 * math.pi * i / 64
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x * r / 16.5, -y * r / 16.5 + r * 0.1))
        return rot(pts)
    raise ValueError(shape)


def render(scene: Scene, size: int = 256, supersample: int = 2) -> Image.Image:
    """Draw the scene (anti-aliased by drawing larger and shrinking)."""
    big = size * supersample
    image = Image.new("RGB", (big, big), scene.bg_rgb)
    draw = ImageDraw.Draw(image)
    cx, cy, r = scene.cx * big, scene.cy * big, scene.radius * big
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=scene.fg_rgb)
    else:
        draw.polygon(_polygon(scene.shape, cx, cy, r, scene.angle), fill=scene.fg_rgb)
    return image.resize((size, size), Image.Resampling.BOX) if supersample > 1 else image


# The attributes a caption can name, each with its possible values; `caption_and_labels` says which
# ones a caption named (the others are None). The trainer uses these to teach the text encoder.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": COLOR_NAMES,
    "shape": SHAPES,
    "background": COLOR_NAMES,
    "position": tuple(POSITIONS),
    "size": tuple(SIZES),
}


def caption_and_labels(scene: Scene, rng: random.Random, *, p_drop_position: float = 0.1,
                       p_drop_background: float = 0.1, p_partial: float = 0.08) -> tuple[str, dict[str, str | None]]:
    """A caption for the scene, worded a little differently each call, and what it names.

    Some captions leave out the position or the background, and a few name only one attribute
    ("red", "a star", "blue background"), so each word also means something on its own (which is what
    makes a negative prompt like "red" steer away from red)."""
    named: dict[str, str | None] = dict.fromkeys(ATTRIBUTES)
    if rng.random() < p_partial:
        color, shape, bg, pos = scene.color, scene.shape, scene.background, scene.position
        text, keys = rng.choice((
            (color, ("color",)),
            (f"a {color} shape", ("color",)),
            (f"something {color}", ("color",)),
            (f"a {shape}", ("shape",)),
            (shape, ("shape",)),
            (f"{bg} background", ("background",)),
            (f"on a {bg} background", ("background",)),
            (rng.choice(_POSITION_PHRASES[pos]), ("position",)),
            (f"a {color} {shape}", ("color", "shape")),
        ))
        for key in keys:
            named[key] = getattr(scene, key)
        return text, named
    named["color"], named["shape"] = scene.color, scene.shape
    size = ""
    if rng.random() < 0.5:
        size, named["size"] = f"{scene.size} ", scene.size
    obj = f"{size}{scene.color} {scene.shape}"
    article = "an" if obj[0] in "aeiou" else "a"
    pos = rng.choice(_POSITION_PHRASES[scene.position])
    with_pos = rng.random() >= p_drop_position
    with_bg = rng.random() >= p_drop_background
    bg = scene.background
    if with_bg:
        named["background"] = bg
        body = rng.choice((
            f"{article} {obj} on a {bg} background",
            f"{article} {obj} on {bg}",
            f"{obj}, {bg} background",
            f"{article} {obj} against a {bg} background",
        ))
    else:
        body = rng.choice((f"{article} {obj}", obj))
    if not with_pos:
        return body, named
    named["position"] = scene.position
    text = rng.choice((f"{body}, {pos}", f"{body} {pos}" if pos.startswith(("in ", "on ", "at ")) else f"{body}, {pos}",
                       f"{pos}: {body}"))
    return text, named


def caption(scene: Scene, rng: random.Random, **kwargs: float) -> str:
    """Only the text of `caption_and_labels`."""
    return caption_and_labels(scene, rng, **kwargs)[0]


def prompt_for(color: str, shape: str, background: str, position: str | None = None) -> str:
    """The canonical prompt for a scene (what the tests and the grid ask for)."""
    article = "an" if color[0] in "aeiou" else "a"
    text = f"{article} {color} {shape} on a {background} background"
    return f"{text}, {position}" if position else text


# The prompts the demo model is scored on (tests/test_demo_model.py, tools/score_demo_model.py):
# (colour, shape, background, position); every colour appears once as a shape and once as a background.
SCORE_PROMPTS: tuple[tuple[str, str, str, str], ...] = (
    ("red", "circle", "blue", "top left"),
    ("yellow", "star", "black", "center"),
    ("green", "square", "white", "bottom right"),
    ("blue", "triangle", "yellow", "top right"),
    ("pink", "heart", "purple", "bottom left"),
    ("white", "circle", "green", "bottom"),
    ("orange", "square", "blue", "left"),
    ("purple", "star", "orange", "right"),
)


# The prompts shape-following is scored on: every shape in three colour pairs, in the centre, so that only
# the shape word differs between the prompts of a pair (chance: one in five).
SHAPE_PROMPTS: tuple[tuple[str, str, str, str], ...] = tuple(
    (color, shape, background, "center")
    for color, background in (("yellow", "blue"), ("red", "white"), ("green", "black"))
    for shape in SHAPES
)


def make_dataset(count: int, seed: int, size: int = 256) -> tuple[list[Scene], np.ndarray]:
    """`count` scenes and their pictures as uint8 [N, size, size, 3], reproducible from `seed`."""
    rng = random.Random(seed)
    scenes = [random_scene(rng) for _ in range(count)]
    pixels = np.stack([np.asarray(render(s, size)) for s in scenes])
    return scenes, pixels


# ---- measuring a generated picture -----------------------------------------------------------------

_PALETTE = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)


def classify_pixels(pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] → index into COLOR_NAMES of the nearest named colour, per pixel."""
    flat = pixels.reshape(-1, 3).astype(np.float32)
    dist = ((flat[:, None, :] - _PALETTE[None, :, :]) ** 2).sum(-1)
    return dist.argmin(1).reshape(pixels.shape[:2])


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """bool [size, size]: the shape as `render` draws it (pixel units), without anti-aliasing."""
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=255)
    return np.asarray(image) > 127


@functools.cache
def _unit_shape(shape: str) -> tuple[int, float, float]:
    """Area and centroid offset (pixels) of the shape drawn at radius 100, untilted."""
    unit = _shape_mask(shape, 256, 128.0, 128.0, 100.0, 0.0)
    uy, ux = np.nonzero(unit)
    return int(unit.sum()), float(ux.mean() - 128.0), float(uy.mean() - 128.0)


_TEMPLATE_ANGLES = (-0.3, -0.15, 0.0, 0.15, 0.3)  # training tilts are within +-0.25 rad


def classify_shape(mask: np.ndarray) -> tuple[str | None, float]:
    """Which of SHAPES a region (bool [H, W]) looks like, and how well (IoU in [0, 1]).

    Every shape is drawn with the region's area and centroid at a few tilts; the best IoU wins. A
    blob that is none of them still gets the nearest name, with a low IoU. Deterministic and cheap
    (25 small rasterisations)."""
    area = int(mask.sum())
    if area < 16:
        return None, 0.0
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    my, mx = ys.mean(), xs.mean()
    best, best_iou = None, -1.0
    for shape in SHAPES:
        unit_area, unit_off_x, unit_off_y = _unit_shape(shape)
        r = 100.0 * math.sqrt(area / unit_area)
        off_x, off_y = unit_off_x * r / 100.0, unit_off_y * r / 100.0  # the shape's own centroid
        for angle in (_TEMPLATE_ANGLES if shape != "circle" else (0.0,)):
            ca, sa = math.cos(angle), math.sin(angle)
            cx = mx - (off_x * ca - off_y * sa)
            cy = my - (off_x * sa + off_y * ca)
            template = _shape_mask(shape, max(h, w), cx, cy, r, angle)[:h, :w]
            iou = float((template & mask).sum() / max((template | mask).sum(), 1))
            if iou > best_iou:
                best, best_iou = shape, iou
    return best, best_iou


@dataclass(frozen=True)
class Measure:
    background: str  # most common colour along the picture's border
    shape_color: str | None  # most common other colour (None when nothing stands out)
    shape_share: float  # fraction of the picture in shape_color
    centroid: tuple[float, float] | None  # (x, y) of the shape region, fractions of the picture
    shares: dict[str, float]  # fraction of the picture per named colour
    shape: str | None = None  # classify_shape of the pixels that are not the background colour
    shape_iou: float = 0.0  # how well that shape fits them

    def position(self) -> str | None:
        """The position word whose third of the picture holds the centroid."""
        if self.centroid is None:
            return None
        x, y = self.centroid
        col = ("left", "", "right")[min(int(x * 3), 2)]
        row = ("top", "", "bottom")[min(int(y * 3), 2)]
        return f"{row} {col}".strip() or "center"


def measure(image: Image.Image | np.ndarray, min_share: float = 0.005) -> Measure:
    """Background = the border's dominant named colour; shape = the dominant other colour; centroid of
    the pixels in that colour. Deterministic and cheap (a nearest-colour classifier)."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    labels = classify_pixels(pixels)
    h, w = labels.shape
    counts = np.bincount(labels.ravel(), minlength=len(COLOR_NAMES)) / labels.size
    shares = {name: float(counts[i]) for i, name in enumerate(COLOR_NAMES)}
    border = np.concatenate([labels[:4].ravel(), labels[-4:].ravel(), labels[:, :4].ravel(), labels[:, -4:].ravel()])
    bg = int(np.bincount(border, minlength=len(COLOR_NAMES)).argmax())
    others = counts.copy()
    others[bg] = 0
    fg = int(others.argmax())
    if others[fg] < min_share:
        return Measure(COLOR_NAMES[bg], None, 0.0, None, shares)
    ys, xs = np.nonzero(labels == fg)
    centroid = (float(xs.mean() + 0.5) / w, float(ys.mean() + 0.5) / h)
    shape, iou = classify_shape(_largest_region(labels != bg))
    return Measure(COLOR_NAMES[bg], COLOR_NAMES[fg], float(others[fg]), centroid, shares, shape, iou)


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected part of a bool mask (specks of off-colour near the border, which the
    small autoencoder leaves, are not part of the shape)."""
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask
    biggest = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
    return labels == biggest
