"""Face restoration for the Extras tab and `/sdapi/v1/extra-*`: GFPGAN (or RestoreFormer) and CodeFormer.

Model files go where A1111 keeps them: `models/GFPGAN/` (`GFPGANv1.4.pth`, or a RestoreFormer file)
and `models/Codeformer/` (`codeformer-v0.2.0.pth`). They are read with Palette's safe reader
(`modules.weights_io`: validated safetensors, or `torch.load(weights_only=True)`, which also unwraps the
`params_ema` dict the released files use) and built by spandrel from the state dict. CodeFormer's
architecture lives in the optional package `spandrel_extra_arches` (S-Lab License 1.0, non-commercial):
without it CodeFormer is listed as unavailable with the reason, and everything else works.

The restore step follows A1111 / facexlib: find the faces (`modules.face_detect`, OpenCV's Haar
cascades), warp each to a 512×512 crop, run the network on it (input and output in [-1, 1]), warp the
result back through a feathered mask, then blend the whole image with the original by the visibility
(A1111's `Image.blend(original, restored, visibility)`). GFPGAN runs with the noise stored in the file
rather than fresh random noise, so the same image restores the same way twice. An image with no face
found comes back unchanged. The registry lives on the Engine (`engine.face_restorers`).
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from modules.face_detect import FaceBox, HaarFaceDetector, crop_matrix, paste, warp_crop
from modules.model_cache import FileModelCache
from modules.paths import FOLDERS, ModelPaths
from modules.upscalers import choose_dtype, not_an_upscaler
from modules.weights_io import WeightFileError, materialize, open_weights

log = logging.getLogger(__name__)

FACE_EXTENSIONS = (".pth", ".pt", ".safetensors", ".ckpt", ".bin")
CROP_SIZE = 512  # what GFPGAN, RestoreFormer and CodeFormer were trained on
MODELS_KEPT = 2
CODEFORMER_PACKAGE = "spandrel_extra_arches==0.2.0"


class FaceRestoreError(ValueError):
    """A face restorer that cannot be used; the message names the file or the restorer and the reason."""


@dataclass(frozen=True)
class RestorerSpec:
    """One restorer as A1111 lists it: its name, its folder kind (modules.paths.FOLDERS) and the
    spandrel architectures its folder may hold."""

    name: str
    kind: str
    architectures: tuple[str, ...]


RESTORERS = (
    RestorerSpec("GFPGAN", "gfpgan", ("GFPGAN", "RestoreFormer")),
    RestorerSpec("CodeFormer", "codeformer", ("CodeFormer",)),
)
FOLDER_OF_ARCH = {arch: spec.kind for spec in RESTORERS for arch in spec.architectures}


@dataclass(frozen=True)
class FaceRestorerInfo:
    """One entry of `/sdapi/v1/face-restorers`: the folder searched, the file chosen, why the restorer
    cannot run (None when it can), and `unsupported`: the part of that reason no model file fixes."""

    name: str
    folder: Path
    path: Path | None
    unavailable: str | None
    unsupported: str | None = None


@dataclass
class LoadedRestorer:
    name: str
    path: Path
    descriptor: Any  # spandrel.ImageModelDescriptor
    architecture: str
    dtype: torch.dtype


def codeformer_architecture() -> tuple[Any | None, str | None]:
    """(spandrel ArchSupport for CodeFormer, None) when `spandrel_extra_arches` is installed, else
    (None, why not). Only CodeFormer is taken from that package."""
    try:
        from spandrel_extra_arches import EXTRA_REGISTRY
    except ImportError:
        return None, (f"CodeFormer needs the optional package {CODEFORMER_PACKAGE} (pip install "
                      f"{CODEFORMER_PACKAGE}); its CodeFormer code is under the S-Lab License 1.0, "
                      "non-commercial use only, so Palette does not install it")
    support = EXTRA_REGISTRY.get("CodeFormer")
    if support is None:
        return None, "this spandrel_extra_arches has no CodeFormer architecture"
    return support, None


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def choose_file(files: list[Path], hint: str) -> Path | None:
    """A1111 keeps one model per restorer: of several files, the newest-named one that carries the
    restorer's name (`GFPGANv1.4` over `GFPGANv1.3`), else the last by name."""
    if not files:
        return None
    named = [p for p in files if hint.lower() in p.name.lower()] or files
    return max(named, key=lambda p: _natural(p.name))


def load_restorer_file(path: Path, spec: RestorerSpec, *, device: torch.device,
                       dtype: torch.dtype) -> tuple[Any, torch.dtype]:
    """Read `path` safely and build its spandrel model; a file that is no face restorer for `spec`'s
    folder is refused with a message naming the file and where it belongs."""
    import spandrel

    try:
        weights = open_weights(path)
        sd = {k: materialize(weights[k]) for k in weights.keys()}
    except WeightFileError as exc:
        raise FaceRestoreError(str(exc)) from None
    registry = spandrel.MAIN_REGISTRY.copy()
    codeformer, _ = codeformer_architecture()
    if codeformer is not None:
        registry.add(codeformer, ignore_duplicates=True)
    folder = f"models/{FOLDERS[spec.kind]}/"
    try:
        descriptor = spandrel.ModelLoader(registry=registry).load_from_state_dict(sd)
    except spandrel.UnsupportedModelError:
        other = not_an_upscaler(list(sd))
        what = f"it looks like {other}" if other else f"spandrel {spandrel.__version__} recognised no architecture"
        raise FaceRestoreError(f"{path.name}: not a face-restoration model for {folder} ({what}; first keys: "
                               f"{', '.join(list(sd)[:4])})") from None
    except (RuntimeError, KeyError, ValueError, IndexError) as exc:
        raise FaceRestoreError(f"{path.name}: looks like a known architecture but its weights do not fit: "
                               f"{str(exc).splitlines()[0][:200]}") from None
    arch = descriptor.architecture.name
    if arch not in spec.architectures:
        if arch in FOLDER_OF_ARCH:
            where = f"put it in models/{FOLDERS[FOLDER_OF_ARCH[arch]]}/"
        else:
            upscaler = descriptor.purpose in ("SR", "Restoration")
            where = "an upscaler: put it in models/ESRGAN/" if upscaler else "not usable here"
        raise FaceRestoreError(f"{path.name}: a {arch} model, not a face-restoration model for {folder} ({where})")
    chosen = choose_dtype(dtype, descriptor.supports_half, descriptor.supports_bfloat16)
    descriptor.to(device=device, dtype=chosen).eval()
    return descriptor, chosen


def run_network(loaded: LoadedRestorer, crop: torch.Tensor, *, codeformer_weight: float = 0.5) -> torch.Tensor:
    """The network on one [1, 3, 512, 512] crop in [-1, 1] → the same shape in [-1, 1] (float32, CPU).
    The raw modules are called (spandrel's wrappers differ in range per architecture); GFPGAN uses
    its stored noise. A half-precision result with NaNs switches the model to fp32 for good."""
    model = loaded.descriptor.model

    def forward(dtype: torch.dtype) -> torch.Tensor:
        x = crop.to(device=loaded.descriptor.device, dtype=dtype)
        if loaded.architecture == "GFPGAN":
            return model(x, return_rgb=False, randomize_noise=False)[0]
        if loaded.architecture == "CodeFormer":
            return model(x, weight=float(codeformer_weight))[0]
        return model(x)[0]

    with torch.inference_mode():
        out = forward(loaded.dtype)
        if loaded.dtype != torch.float32 and not bool(torch.isfinite(out).all()):
            log.warning("face restorer %s produced NaNs in %s; switching it to fp32", loaded.name, loaded.dtype)
            loaded.descriptor.to(dtype=torch.float32)
            loaded.dtype = torch.float32
            out = forward(torch.float32)
    return out.float().cpu()


def restore_faces(image: Image.Image, faces: list[FaceBox], net: Callable[[torch.Tensor], torch.Tensor],
                  *, size: int = CROP_SIZE) -> Image.Image:
    """Each face cropped, restored by `net` ([-1, 1] in and out) and pasted back feathered; RGB out."""
    rgb = np.asarray(image.convert("RGB"))
    result = rgb.astype(np.float32)
    for box in faces:
        matrix = crop_matrix(box, size)
        crop = warp_crop(rgb, matrix, size)
        x = torch.from_numpy(crop.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        out = net(x)[0].clamp(-1, 1).permute(1, 2, 0).numpy()
        restored = ((out + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
        result = paste(result, restored, matrix)
    return Image.fromarray(result.round().clip(0, 255).astype(np.uint8))


def blend(original: Image.Image, restored: Image.Image, visibility: float) -> Image.Image:
    """A1111's mix: the restored image at `visibility` over the original (alpha kept from the original)."""
    alpha = original.getchannel("A") if original.mode in ("RGBA", "LA") else None
    base = original.convert("RGB")
    mixed = restored if visibility >= 1.0 else Image.blend(base, restored.convert("RGB"), float(visibility))
    if alpha is not None:
        mixed = mixed.copy()
        mixed.putalpha(alpha)
    return mixed


class FaceRestorers:
    """The face restorers (files read live from the folders), a small cache of loaded models and the
    face detector. Inference is meant for the worker thread; listing is safe from any thread."""

    def __init__(self, paths: ModelPaths, *, device: torch.device, dtype: torch.dtype) -> None:
        self.paths = paths
        self.device = device
        self.dtype = dtype
        self._lock = threading.RLock()
        self._models: FileModelCache[LoadedRestorer] = FileModelCache(MODELS_KEPT)
        self._detector: HaarFaceDetector | None = None

    def spec(self, name: str) -> RestorerSpec:
        for spec in RESTORERS:
            if spec.name.lower() == str(name).lower():
                return spec
        raise FaceRestoreError(f"unknown face restorer {name!r}; available: {', '.join(s.name for s in RESTORERS)}")

    def info(self, name: str) -> FaceRestorerInfo:
        spec = self.spec(name)
        folder = self.paths.folder(spec.kind)
        path = choose_file(self.paths.list_files(spec.kind, FACE_EXTENSIONS), spec.name)
        unsupported = codeformer_architecture()[1] if spec.name == "CodeFormer" else None
        reason = unsupported
        if reason is None and path is None:
            example = "codeformer-v0.2.0.pth" if spec.name == "CodeFormer" else "GFPGANv1.4.pth"
            reason = f"no {spec.name} model: put one ({example}) in {folder}"
        return FaceRestorerInfo(spec.name, folder, path, reason, unsupported)

    def list(self) -> list[FaceRestorerInfo]:
        return [self.info(spec.name) for spec in RESTORERS]

    def unavailable(self, name: str) -> str | None:
        """Why `name` cannot run now (no file, no CodeFormer package), or None."""
        return self.info(name).unavailable

    @property
    def detector(self) -> HaarFaceDetector:
        with self._lock:
            if self._detector is None:
                self._detector = HaarFaceDetector()
            return self._detector

    def load(self, name: str) -> LoadedRestorer:
        """The loaded model for `name` (cached; reloaded when the file changed)."""
        info = self.info(name)
        if info.unavailable or info.path is None:
            raise FaceRestoreError(info.unavailable or f"no {info.name} model")

        def build() -> LoadedRestorer:
            descriptor, dtype = load_restorer_file(info.path, self.spec(name), device=self.device, dtype=self.dtype)
            loaded = LoadedRestorer(info.name, info.path, descriptor, descriptor.architecture.name, dtype)
            log.info("face restorer %s: %s (%s)", info.path.name, loaded.architecture, dtype)
            return loaded

        return self._models.get(info.path, build)

    def unload(self) -> None:
        self._models.clear()

    def restore(self, image: Image.Image, name: str, visibility: float, *,
                codeformer_weight: float = 0.5) -> tuple[Image.Image, int]:
        """A1111's postprocessing step for one restorer → (image, faces found). Visibility 0 returns
        the image untouched; no face found returns it unchanged (and logs it)."""
        if visibility <= 0:
            return image, 0
        loaded = self.load(name)
        faces = self.detector.detect(image)
        if not faces:
            log.info("%s: no face found in the %dx%d image; left unchanged", name, image.width, image.height)
            return image, 0
        restored = restore_faces(image, faces, lambda x: run_network(loaded, x, codeformer_weight=codeformer_weight))
        return blend(image, restored, visibility), len(faces)
