"""Finding faces for face restoration, with no downloaded weights: OpenCV's Haar cascades.

A1111 (through facexlib) finds faces with RetinaFace and aligns each one on five landmarks; those
weights are a download Palette cannot make. OpenCV's 4.x wheels ship the Viola-Jones cascades
(`cv2.data.haarcascades`), so Palette uses `haarcascade_frontalface_default.xml` for the faces and
`haarcascade_eye.xml` for the eye line, which sets the crop's rotation when both eyes are found.
It finds frontal faces only (no profiles, little tilt) and misses more than RetinaFace does; a face it
misses is left as it is.

The geometry is facexlib's in spirit: each face gets a square crop, enlarged around the detected box
and rotated to level the eyes, warped to the network's input size; the restored crop is warped back
with a feathered mask, so nothing outside the crop changes and no seam shows at its edge.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

FACE_CASCADE = "haarcascade_frontalface_default.xml"
EYE_CASCADE = "haarcascade_eye.xml"
DETECT_SIDE = 1024  # images are searched at most this large (facexlib searches at 640)
MAX_TILT = 30.0  # degrees; an eye pair tilted more is taken for a false detection and ignored
CROP_EXPAND = 1.8  # crop side / Haar box side: the aligned 512 crops GFPGAN was trained on hold the
# face in about the middle half, and the Haar box spans roughly brows to mouth, cheek to cheek
FEATHER = 0.1  # the paste mask fades over this fraction of the crop side


class FaceDetectionError(RuntimeError):
    """The detector itself cannot run (a cascade file missing from the OpenCV wheel)."""


@dataclass(frozen=True)
class FaceBox:
    """One detected face in image pixels: a square box and the tilt of its eye line in degrees
    (positive: the right-hand eye is lower; 0 when the eyes were not found)."""

    x: float
    y: float
    size: float
    angle: float = 0.0

    @property
    def center(self) -> tuple[float, float]:
        return self.x + self.size / 2, self.y + self.size / 2


def cascade_path(name: str) -> Path:
    """Where the OpenCV wheel keeps a cascade; a clear error when this build has none (OpenCV 5.0)."""
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = Path(folder or "") / name
    if not folder or not path.is_file():
        raise FaceDetectionError(
            f"OpenCV {cv2.__version__} has no {name} (cv2.data.haarcascades); face detection needs "
            "the opencv-python-headless 4.x wheel that requirements.txt pins")
    return path


class HaarFaceDetector:
    """The two cascades, loaded once (the Engine's face-restorer registry owns one)."""

    def __init__(self) -> None:
        self.faces = self._load(FACE_CASCADE)
        self.eyes = self._load(EYE_CASCADE)

    @staticmethod
    def _load(name: str) -> cv2.CascadeClassifier:
        path = cascade_path(name)
        cascade = cv2.CascadeClassifier(str(path))
        if cascade.empty():
            raise FaceDetectionError(f"OpenCV could not read its cascade {path}")
        return cascade

    def detect(self, image: Image.Image) -> list[FaceBox]:
        """Frontal faces, largest first. The image is searched at most DETECT_SIDE pixels large,
        grey and histogram-equalised; a box inside a larger one is dropped."""
        gray = np.asarray(image.convert("L"))
        scale = min(1.0, DETECT_SIDE / max(gray.shape))
        if scale < 1.0:
            gray = cv2.resize(gray, (round(gray.shape[1] * scale), round(gray.shape[0] * scale)),
                              interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        smallest = max(24, round(min(gray.shape) * 0.04))
        found = self.faces.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest))
        boxes = sorted((tuple(int(v) for v in b) for b in np.asarray(found).reshape(-1, 4)),
                       key=lambda b: -b[2] * b[3])
        kept: list[tuple[int, int, int, int]] = []
        for x, y, w, h in boxes:
            cx, cy = x + w / 2, y + h / 2
            if any(kx <= cx <= kx + kw and ky <= cy <= ky + kh for kx, ky, kw, kh in kept):
                continue
            kept.append((x, y, w, h))
        return [FaceBox(x / scale, y / scale, max(w, h) / scale, self._tilt(gray, (x, y, w, h)))
                for x, y, w, h in kept]

    def _tilt(self, gray: np.ndarray, box: tuple[int, int, int, int]) -> float:
        """The eye line's angle from the eye cascade in the box's upper part; 0 unless one eye is
        found on each side and the pair is plausible."""
        x, y, w, h = box
        top, bottom = y + int(h * 0.15), y + int(h * 0.6)
        region = gray[top:bottom, x:x + w]
        if region.size == 0:
            return 0.0
        eyes = self.eyes.detectMultiScale(region, scaleFactor=1.1, minNeighbors=5,
                                          minSize=(max(8, w // 10), max(8, w // 10)), maxSize=(w // 2, w // 2))
        centres = [(ex + ew / 2, ey + eh / 2, ew * eh) for ex, ey, ew, eh in np.asarray(eyes).reshape(-1, 4)]
        left = [c for c in centres if c[0] < w / 2]
        right = [c for c in centres if c[0] >= w / 2]
        if not left or not right:
            return 0.0
        (lx, ly, _), (rx, ry, _) = max(left, key=lambda c: c[2]), max(right, key=lambda c: c[2])
        angle = math.degrees(math.atan2(ry - ly, rx - lx))
        if abs(angle) > MAX_TILT or rx - lx < w * 0.2:
            return 0.0
        return angle


# ---- crop and paste ---------------------------------------------------------------------------------

def crop_matrix(box: FaceBox, size: int, expand: float = CROP_EXPAND) -> np.ndarray:
    """The 2×3 affine map from image pixels to a `size`×`size` crop: centred on the box, the box's
    side times `expand` across, rotated so the eye line is level."""
    cx, cy = box.center
    matrix = cv2.getRotationMatrix2D((cx, cy), box.angle, size / (box.size * expand))
    matrix[:, 2] += (size / 2 - cx, size / 2 - cy)
    return matrix


def warp_crop(rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The face crop (uint8, size×size×3); beyond the image edge the picture is mirrored."""
    return cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def feather_mask(size: int, feather: float = FEATHER) -> np.ndarray:
    """1 inside the crop, falling smoothly to exactly 0 over its outer `feather` fraction."""
    ramp = max(2.0, size * feather)
    distance = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)
    edge = np.clip((distance - 1.0) / ramp, 0.0, 1.0)  # the outermost pixel row stays 0
    edge = edge * edge * (3.0 - 2.0 * edge)  # smoothstep
    return np.minimum.outer(edge, edge)


def paste(base: np.ndarray, face: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """`base` (float32 H×W×3, 0..255) with the restored crop warped back into place through the
    feathered mask. Pixels the crop does not reach keep their exact values."""
    height, width = base.shape[:2]
    size = face.shape[0]
    inverse = cv2.invertAffineTransform(matrix)
    back = cv2.warpAffine(face.astype(np.float32), inverse, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = cv2.warpAffine(feather_mask(size), inverse, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)[..., None]
    return np.where(mask > 0, base * (1.0 - mask) + back * mask, base)
