"""The Extras (postprocess upscale) operation, shared by the Upscale tab and `/sdapi/v1/extra-*`.

A1111's postprocessing_upscale: scale by a factor, or to a size (then optionally crop, centred), with
one upscaler, optionally blended with a second one by visibility. The infotext is A1111's
(`Postprocess upscale by: 2, Postprocess upscaler: R-ESRGAN 4x+`). Then, as A1111's postprocessing
order has it (upscale 1000, GFPGAN 2000, CodeFormer 3000), face restoration: GFPGAN, then CodeFormer,
each blended in by its visibility (`modules.face_restore`), adding `GFPGAN visibility: 0.5`,
`CodeFormer visibility: 0.5, CodeFormer weight: 0.5` to the infotext. Saved files go to
`outputs/extras-images/` with the source's own chunks (its `parameters` stay) plus `postprocessing`
and `extras`, as A1111 writes them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

from PIL import Image

from modules.config import OUTDIR_SETTINGS
from modules.paths import FOLDERS, within
from modules.types import ProgressEvent
from modules.validation import MAX_SIDE, RequestError

log = logging.getLogger(__name__)

MAX_RESULT_PIXELS = 4 * MAX_SIDE * MAX_SIDE
MAX_FOLDER_IMAGES = 1000
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# (visibility field, restorer name) in A1111's order: GFPGAN before CodeFormer
FACE_STEPS = (("gfpgan_visibility", "GFPGAN"), ("codeformer_visibility", "CodeFormer"))


@dataclass(frozen=True)
class ExtrasOptions:
    """A1111's extras fields (the API's names)."""

    resize_mode: int = 0  # 0: scale by, 1: scale to
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0  # CodeFormer's fidelity: 0 = strongest restoration, 1 = closest to the input

    @classmethod
    def from_fields(cls, source: Any) -> "ExtrasOptions":
        """From any object or mapping carrying the A1111 field names (a pydantic body, a dict)."""
        get = source.get if isinstance(source, Mapping) else lambda k, d: getattr(source, k, d)
        defaults = cls()
        return cls(**{f: get(f, getattr(defaults, f)) for f in cls.__dataclass_fields__})


def validate(opts: ExtrasOptions, upscalers: Collection[str], face_restorers: Any = None) -> None:
    """Every bad field is a RequestError naming it, before any image work starts. `face_restorers`
    (the Engine's `modules.face_restore.FaceRestorers`) says whether a requested restorer can run."""
    for name in ("gfpgan_visibility", "codeformer_visibility", "codeformer_weight"):
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise RequestError(name, f"must be between 0 and 1, got {value!r}")
    for name, restorer in FACE_STEPS:
        if getattr(opts, name) > 0:
            reason = (face_restorers.unavailable(restorer) if face_restorers is not None
                      else "face restoration needs the engine's face-restorer registry")
            if reason:
                raise RequestError(name, f"{restorer} is not available: {reason}")
    for name in ("upscaler_1", "upscaler_2"):
        value = getattr(opts, name)
        if value not in upscalers:
            raise RequestError(name, f"unknown upscaler {value!r}; available: {', '.join(upscalers)}")
    if opts.resize_mode not in (0, 1):
        raise RequestError("resize_mode", f"must be 0 (scale by) or 1 (scale to), got {opts.resize_mode!r}")
    if opts.resize_mode == 1:
        for name in ("upscaling_resize_w", "upscaling_resize_h"):
            value = getattr(opts, name)
            if not isinstance(value, int) or not 8 <= value <= MAX_SIDE * 2:
                raise RequestError(name, f"must be between 8 and {MAX_SIDE * 2}, got {value!r}")
    elif not 0 < float(opts.upscaling_resize) <= 8:
        raise RequestError("upscaling_resize", f"must be above 0 and at most 8, got {opts.upscaling_resize}")
    if not 0 <= float(opts.extras_upscaler_2_visibility) <= 1:
        raise RequestError("extras_upscaler_2_visibility", f"must be between 0 and 1, got {opts.extras_upscaler_2_visibility}")


def _scale_for(image: Image.Image, opts: ExtrasOptions) -> float:
    if opts.resize_mode == 1:
        return max(opts.upscaling_resize_w / image.width, opts.upscaling_resize_h / image.height)
    return float(opts.upscaling_resize)


def upscale(registry: Any, image: Image.Image, opts: ExtrasOptions, *,
            on_tile: Callable[[int, int], None] | None = None) -> tuple[Image.Image, str]:
    """One image through A1111's extras upscale → (image, "Postprocess …" infotext). Upscaler 1 "None"
    leaves the step out, size and infotext included (A1111 does not resize then, nor run upscaler 2)."""
    if opts.upscaler_1 == "None":
        return image.convert("RGB"), ""
    scale = _scale_for(image, opts)
    if image.width * scale * image.height * scale > MAX_RESULT_PIXELS:
        raise RequestError("upscaling_resize", f"the result would exceed {MAX_RESULT_PIXELS} pixels")
    info: dict[str, Any] = {}
    source = image.convert("RGB")

    def one(name: str) -> Image.Image:
        result = registry.upscale(source, name, scale, on_tile=on_tile)
        if opts.resize_mode == 1 and opts.upscaling_crop:
            w, h = opts.upscaling_resize_w, opts.upscaling_resize_h
            cropped = Image.new("RGB", (w, h))
            cropped.paste(result, box=(w // 2 - result.width // 2, h // 2 - result.height // 2))
            result = cropped
        return result

    if opts.resize_mode == 1:
        info["Postprocess upscale to"] = f"{opts.upscaling_resize_w}x{opts.upscaling_resize_h}"
    else:
        info["Postprocess upscale by"] = f"{scale:g}"
    result = one(opts.upscaler_1)
    if opts.resize_mode == 1 and opts.upscaling_crop:
        info["Postprocess crop to"] = f"{result.width}x{result.height}"
    info["Postprocess upscaler"] = opts.upscaler_1
    if opts.upscaler_2 != "None" and opts.extras_upscaler_2_visibility > 0:
        second = one(opts.upscaler_2)
        result = Image.blend(result, second, float(opts.extras_upscaler_2_visibility))
        info["Postprocess upscaler 2"] = opts.upscaler_2
    return result, ", ".join(f"{k}: {v}" for k, v in info.items())


def restore_faces(face_restorers: Any, image: Image.Image, opts: ExtrasOptions) -> tuple[Image.Image, str]:
    """A1111's GFPGAN then CodeFormer postprocessing steps → (image, their infotext part). A step whose
    visibility is 0 is left out; one that finds no face still reports what was asked, as A1111 does."""
    info: dict[str, str] = {}
    for field, name in FACE_STEPS:
        visibility = float(getattr(opts, field))
        if visibility <= 0:
            continue
        weight = float(opts.codeformer_weight)
        image, _faces = face_restorers.restore(image, name, visibility, codeformer_weight=weight)
        info[f"{name} visibility"] = f"{round(visibility, 3):g}"
        if name == "CodeFormer":
            info["CodeFormer weight"] = f"{round(weight, 3):g}"
    return image, ", ".join(f"{k}: {v}" for k, v in info.items())


# ---- folders and saving ----------------------------------------------------------------------------

def input_roots(engine: Any, data_dir: Path) -> tuple[list[Path], list[Path]]:
    """(roots, refused) for "Batch from Directory": Palette's data folder and the output folders may be
    read; no model folder may, even where it lies inside the data folder (the default layout)."""
    settings = engine.settings
    roots = [Path(data_dir)]
    for name in OUTDIR_SETTINGS:
        try:
            roots.append(engine.output_dir(getattr(settings, name)))
        except (AttributeError, ValueError):  # an unset or unsafe setting adds nothing
            continue
    paths = engine.paths
    refused = [Path(paths.models_dir), *(folder for kind in FOLDERS for folder in paths.folders(kind))]
    return roots, refused


def allowed_folder(roots: Sequence[Path], text: str, field: str, *, refused: Sequence[Path] = ()) -> Path:
    """A server folder named by the user (relative to the first root), accepted only inside `roots`
    and outside `refused`, symlinks resolved."""
    if not text or not text.strip() or "\x00" in text:
        raise RequestError(field, "give a folder path")
    path = Path(text.strip()).expanduser()
    path = (path if path.is_absolute() else Path(roots[0]) / path).resolve()
    if not within(path, roots) or within(path, refused):
        raise RequestError(field, f"{text!r} is outside Palette's data and output folders ({Path(roots[0]).resolve()}) "
                                  "or inside a model folder; only those folders are read")
    if not path.is_dir():
        raise RequestError(field, f"{text!r} is not a folder")
    return path


def folder_images(folder: Path, roots: Sequence[Path], *, refused: Sequence[Path] = ()) -> list[Path]:
    """The folder's images; a file (or symlink) that leads outside `roots` or into `refused` is left out."""
    files = []
    for path in folder.iterdir():
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if not within(path, roots) or within(path, refused):
            log.warning("not reading %s: it leads outside the allowed folders", path)
            continue
        files.append(path.resolve())
    files.sort(key=lambda p: p.name.lower())
    if len(files) > MAX_FOLDER_IMAGES:
        raise RequestError("input_dir", f"{len(files)} images; at most {MAX_FOLDER_IMAGES} per batch")
    if not files:
        raise RequestError("input_dir", f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def text_chunks(image: Image.Image) -> dict[str, str]:
    """An image's PNG text chunks (`parameters`, `postprocessing`, …); the API's png-info reads them too."""
    return {str(k): v for k, v in (image.info or {}).items() if isinstance(v, str)}


def save(image: Image.Image, folder: Path, info: str, *, source_chunks: Mapping[str, str] | None = None,
         basename: str = "", fmt: str = "png") -> Path:
    """`folder/NNNNN[-basename].png` with the source's chunks plus `postprocessing`/`extras` (A1111);
    JPEG/WEBP keep one text: the source's parameters, else the postprocess line."""
    from modules.outputs import NameContext, save_image

    source = dict(source_chunks or {})
    parameters = source.pop("parameters", None)
    return save_image(image, folder, NameContext(seed=0), infotext=parameters if fmt == "png" else (parameters or info),
                      chunks={**source, "postprocessing": info, "extras": info}, stem=basename, fmt=fmt,
                      per_date_folder=False)


@dataclass(frozen=True)
class ExtrasResult:
    images: tuple[Image.Image, ...]
    infotexts: tuple[str, ...]
    paths: tuple[Path, ...] = ()


def run(engine: Any, sources: list[tuple[Image.Image, str]], opts: ExtrasOptions, *, save_output: bool,
        progress: Callable[[ProgressEvent], None] | None = None, cancel: Any = None) -> ExtrasResult:
    """The job the worker runs (a queue task with `pass_job=True`): each (image, name) upscaled and
    saved to the extras folder when asked. An interrupt stops before the next image; the images
    finished so far are kept. Progress counts images (step = images done)."""
    face_restorers = getattr(engine, "face_restorers", None)
    validate(opts, engine.upscalers.names(), face_restorers)
    images, texts, paths = [], [], []
    settings = engine.settings
    for index, (image, name) in enumerate(sources):
        if cancel is not None and cancel.interrupted.is_set():
            break
        result, info = upscale(engine.upscalers, image, opts)
        result, face_info = restore_faces(face_restorers, result, opts)
        info = ", ".join(part for part in (info, face_info) if part)
        images.append(result)
        texts.append(info)
        if save_output:
            folder = engine.output_dir(settings.outdir_extras_samples)
            fmt = settings.samples_format if settings.samples_format in ("png", "jpg", "webp") else "png"
            paths.append(save(result, folder, info, source_chunks=text_chunks(image), basename=Path(name).stem if name else "",
                              fmt=fmt))
        if progress is not None:
            progress(ProgressEvent(index + 1, len(sources), images=(result,)))
    return ExtrasResult(tuple(images), tuple(texts), tuple(paths))
