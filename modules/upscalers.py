"""Upscalers: PIL filters and ESRGAN-family models (through spandrel), listed under A1111's names.

Model files live in `models/ESRGAN/`, `models/RealESRGAN/`, `models/SwinIR/`, `models/DAT/`,
`models/HAT/` and `models/upscale_models/`. They are read with Palette's safe reader
(`modules.weights_io`: validated safetensors, or `torch.load(weights_only=True)`), checked for files
that are clearly something else (an SD checkpoint, a LoRA, a VAE dropped in the wrong folder), and
handed to spandrel, which recognises the architecture and scale from the state dict's keys and shapes.

Inference is tiled (`modules.tiling`), runs in fp16/bf16 where spandrel says the architecture allows
it and the device plan asks for it, and falls back to fp32 for good when a half-precision tile comes
back with NaNs. The registry lives on the Engine (`engine.upscalers`); nothing here is global.
"""
from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from PIL import Image

from modules.model_cache import FileModelCache
from modules.paths import ModelPaths
from modules.tiling import run_tiled
from modules.validation import PIXEL_UPSCALERS
from modules.weights_io import WeightFileError, materialize, open_weights

log = logging.getLogger(__name__)

UPSCALER_EXTENSIONS = (".pth", ".pt", ".safetensors", ".ckpt", ".bin")
# (folder kind in modules.paths.FOLDERS, label used as the API's model_name)
MODEL_FOLDERS = (("esrgan", "ESRGAN"), ("realesrgan", "RealESRGAN"), ("swinir", "SwinIR"), ("dat", "DAT"),
                 ("hat", "HAT"), ("upscale_models", "spandrel"))
# The names are validation.PIXEL_UPSCALERS (one list); each is the PIL filter of that name, except
# A1111's "None", which leaves the model step out: its final resize is Lanczos.
PIL_FILTERS: Mapping[str, Image.Resampling] = {
    name: Image.Resampling.LANCZOS if name == "None" else Image.Resampling[name.upper()] for name in PIXEL_UPSCALERS
}
# A1111 lists its built-in downloads under these names; the same files dropped in a folder get them too.
A1111_NAMES = {
    "realesrgan_x4plus": "R-ESRGAN 4x+",
    "realesrgan_x4plus_anime_6b": "R-ESRGAN 4x+ Anime6B",
    "realesrgan_x2plus": "R-ESRGAN 2x+",
    "realesr-general-x4v3": "R-ESRGAN General 4xV3",
    "realesr-general-wdn-x4v3": "R-ESRGAN General WDN 4xV3",
    "realesr-animevideov3": "R-ESRGAN AnimeVideo",
    "esrgan_4x": "ESRGAN_4x",
    "003_realsr_bsrgan_dfowmfc_s64w8_swinir-l_x4_gan": "SwinIR 4x",
    "dat_x2": "DAT x2",
    "dat_x3": "DAT x3",
    "dat_x4": "DAT x4",
}
MODELS_KEPT = 2  # upscaler models kept loaded
MAX_PASSES = 3  # A1111 applies a model at most three times to reach the asked scale


class UpscalerError(ValueError):
    """An upscaler that cannot be used; the message names the file or the name and the reason."""


@dataclass(frozen=True)
class UpscalerInfo:
    """One entry of the upscaler list, as A1111's `/sdapi/v1/upscalers` shows it."""

    name: str
    kind: str  # "none" | "pil" | "model"
    path: Path | None = None
    folder: str | None = None  # "ESRGAN", "RealESRGAN", … for model files
    scale: int | None = None  # model scale: detected once loaded, else read from the file name


@dataclass
class LoadedUpscaler:
    """A spandrel model on its device, with what the tiling needs to know."""

    name: str
    path: Path
    descriptor: Any  # spandrel.ImageModelDescriptor
    architecture: str
    scale: int
    align: int
    dtype: torch.dtype

    @property
    def device(self) -> torch.device:
        return self.descriptor.device


# ---- recognising files ------------------------------------------------------------------------------

_NOT_UPSCALERS = (
    (("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders."),
     "a Stable Diffusion checkpoint: put it in models/Stable-diffusion/"),
    (("lora_unet_", "lora_te", "lora_transformer_"), "a LoRA: put it in models/Lora/"),
    ((".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".hada_w1_a", ".lokr_w1"), "a LoRA: put it in models/Lora/"),
    (("control_model.", "input_hint_block.", "controlnet_cond_embedding."), "a ControlNet: put it in models/ControlNet/"),
    (("string_to_param", "emb_params"), "a textual-inversion embedding: put it in models/embeddings/"),
)


def not_an_upscaler(keys: list[str]) -> str | None:
    """What the file is instead, when its keys say it is clearly no image-to-image model."""
    for markers, what in _NOT_UPSCALERS:
        if any(marker in key for key in keys for marker in markers):
            return what
    if {"clip_l", "clip_g"} & set(keys):
        return "a textual-inversion embedding (SDXL): put it in models/embeddings/"
    if (any(k.startswith("encoder.down") for k in keys) and any(k.startswith("decoder.up") for k in keys)
            and "quantize.embedding.weight" not in keys):  # a VQ model (RestoreFormer) has both too
        return "a VAE: put it in models/VAE/"
    return None


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "netG."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def scale_from_name(name: str) -> int | None:
    """`4x-UltraSharp`, `RealESRGAN_x2plus`, `DAT x3`, `2xNomos` → 4, 2, 3, 2; None when not written."""
    match = re.search(r"(?:^|[^a-z0-9])(\d)x(?![a-z]{2,}\d)|x(\d)(?!\d)", name.lower())
    if not match:
        return None
    return int(match.group(1) or match.group(2))


def choose_dtype(wanted: torch.dtype, supports_half: bool, supports_bfloat16: bool) -> torch.dtype:
    """The plan's dtype when the architecture supports it, else fp32."""
    if wanted == torch.float16 and supports_half:
        return torch.float16
    if wanted == torch.bfloat16 and supports_bfloat16:
        return torch.bfloat16
    return torch.float32


def load_model_file(path: Path, *, device: torch.device, dtype: torch.dtype) -> tuple[Any, dict[str, Any]]:
    """Read `path` safely and build its spandrel model. Errors name the file and say what it is instead."""
    import spandrel

    weights = open_weights(path)
    keys = list(weights.keys())
    other = not_an_upscaler(keys)
    if other:
        raise UpscalerError(f"{path.name}: not an upscaler; this file looks like {other}")
    sd = _strip_prefixes({k: materialize(weights[k]) for k in keys})
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(sd)
    except spandrel.UnsupportedModelError:
        sample = ", ".join(keys[:4])
        raise UpscalerError(f"{path.name}: not an upscaler architecture Palette knows (spandrel "
                            f"{spandrel.__version__} recognised none; first keys: {sample})") from None
    except (RuntimeError, KeyError, ValueError, IndexError) as exc:
        raise UpscalerError(f"{path.name}: looks like {_arch_guess(exc)}but its weights do not fit: "
                            f"{str(exc).splitlines()[0][:200]}") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscalerError(f"{path.name}: a {descriptor.architecture.name} {descriptor.purpose.lower()} model, "
                            "not an upscaler")
    if descriptor.purpose == "FaceSR":
        raise UpscalerError(f"{path.name}: a {descriptor.architecture.name} face-restoration model, not an "
                            "upscaler: put it in models/GFPGAN/ (GFPGAN, RestoreFormer) or models/Codeformer/ "
                            "(CodeFormer), where the Extras tab's face restoration reads it")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UpscalerError(f"{path.name}: a {descriptor.architecture.name} model with {descriptor.input_channels} "
                            f"input and {descriptor.output_channels} output channels; only RGB models are supported")
    chosen = choose_dtype(dtype, descriptor.supports_half, descriptor.supports_bfloat16)
    descriptor.to(device=device, dtype=chosen).eval()
    window = getattr(descriptor.model, "window_size", 1)
    align = math.lcm(descriptor.size_requirements.multiple_of, window if isinstance(window, int) and window > 0 else 1)
    facts = {"architecture": descriptor.architecture.name, "scale": int(descriptor.scale), "align": align,
             "dtype": chosen}
    return descriptor, facts


def _arch_guess(exc: BaseException) -> str:
    return "a known architecture " if isinstance(exc, RuntimeError) else "an upscaler "


# ---- image helpers ----------------------------------------------------------------------------------

def to_tensor(image: Image.Image) -> torch.Tensor:
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_image(tensor: torch.Tensor) -> Image.Image:
    arr = (tensor[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr)


def target_size(image: Image.Image, scale: float) -> tuple[int, int]:
    """A1111's Upscaler.upscale target: each side times `scale`, rounded down to a multiple of 8."""
    return max(8, int(image.width * scale) // 8 * 8), max(8, int(image.height * scale) // 8 * 8)


# ---- the registry -----------------------------------------------------------------------------------

class UpscalerRegistry:
    """The upscaler list (read live from the folders) and a small cache of loaded models.

    `settings()` gives the current Settings (tile size and overlap are read per call, so a job's
    settings apply to that job). Model inference is meant for the worker thread; listing is safe
    from any thread."""

    def __init__(self, paths: ModelPaths, *, device: torch.device, dtype: torch.dtype,
                 settings: Callable[[], Any] | None = None) -> None:
        self.paths = paths
        self.device = device
        self.dtype = dtype
        self._settings = settings
        self._lock = threading.RLock()
        self._models: FileModelCache[LoadedUpscaler] = FileModelCache(MODELS_KEPT)
        self._scales: dict[Path, int] = {}

    # -- listing --
    def list(self) -> list[UpscalerInfo]:
        """PIL upscalers first (A1111's order), then model files by name."""
        infos = [UpscalerInfo("None", "none"), *(UpscalerInfo(n, "pil") for n in PIL_FILTERS if n != "None")]
        models: list[UpscalerInfo] = []
        seen: dict[str, int] = {}
        for kind, label in MODEL_FOLDERS:
            for path in self.paths.list_files(kind, UPSCALER_EXTENSIONS):
                name = A1111_NAMES.get(path.stem.lower(), path.stem)
                seen[name] = seen.get(name, 0) + 1
                if seen[name] > 1 or name in PIL_FILTERS or name.startswith("Latent"):
                    name = f"{name} ({label})"
                models.append(UpscalerInfo(name, "model", path, label, self._scales.get(path) or scale_from_name(name)))
        return infos + sorted(models, key=lambda i: i.name.lower())

    def names(self) -> list[str]:
        return [i.name for i in self.list()]

    def find(self, name: str) -> UpscalerInfo:
        infos = self.list()
        for info in infos:
            if name == info.name:
                return info
        for info in infos:  # a file name or stem also works (what a user sees on disk)
            if info.path is not None and name in (info.path.name, info.path.stem):
                return info
        raise UpscalerError(f"unknown upscaler {name!r}; available: {', '.join(i.name for i in infos)}")

    # -- models --
    def load(self, name: str) -> LoadedUpscaler:
        """The loaded model for `name` (cached; reloaded when the file changed)."""
        info = self.find(name)
        if info.kind != "model" or info.path is None:
            raise UpscalerError(f"{name!r} is a PIL filter, not a model")

        def build() -> LoadedUpscaler:
            try:
                descriptor, facts = load_model_file(info.path, device=self.device, dtype=self.dtype)
            except WeightFileError as exc:
                raise UpscalerError(str(exc)) from None
            loaded = LoadedUpscaler(info.name, info.path, descriptor, facts["architecture"], facts["scale"],
                                    facts["align"], facts["dtype"])
            with self._lock:
                self._scales[info.path] = loaded.scale
            log.info("upscaler %s: %s %dx (%s)", info.path.name, loaded.architecture, loaded.scale, loaded.dtype)
            return loaded

        return self._models.get(info.path, build)

    def unload(self) -> None:
        self._models.clear()

    def _tiling(self) -> tuple[int, int]:
        settings = self._settings() if self._settings else None
        return (int(getattr(settings, "ESRGAN_tile", 192)), int(getattr(settings, "ESRGAN_tile_overlap", 32)))

    def run_model(self, model: LoadedUpscaler, image: torch.Tensor, *, tile: int | None = None,
                  overlap: int | None = None, on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """One pass of the model over [1, 3, H, W] in [0, 1] → [1, 3, sH, sW] float32 (CPU), tiled."""
        default_tile, default_overlap = self._tiling()
        tile = default_tile if tile is None else tile
        overlap = default_overlap if overlap is None else overlap

        def one(part: torch.Tensor) -> torch.Tensor:
            d = model.descriptor
            out = d(part.to(device=d.device, dtype=d.dtype))
            if d.dtype != torch.float32 and not bool(torch.isfinite(out).all()):
                log.warning("upscaler %s produced NaNs in %s; switching it to fp32", model.name, d.dtype)
                d.to(dtype=torch.float32)
                model.dtype = torch.float32
                out = d(part.to(device=d.device, dtype=torch.float32))
            return out

        with torch.inference_mode():
            return run_tiled(one, image, model.scale, tile=tile, overlap=overlap, align=model.align, on_tile=on_tile)

    # -- A1111's upscale operations --
    def upscale(self, image: Image.Image, name: str, scale: float, *,
                on_tile: Callable[[int, int], None] | None = None) -> Image.Image:
        """A1111's Upscaler.upscale: the model applied (at most 3 times) until the image reaches `scale`,
        then a Lanczos resize to the target rounded down to a multiple of 8. Alpha is resized by Lanczos."""
        info = self.find(name)
        width, height = target_size(image, scale)
        alpha = image.getchannel("A") if image.mode in ("RGBA", "LA") else None
        result = image.convert("RGB")
        if info.kind == "model":
            model = self.load(info.name)
            for _ in range(MAX_PASSES):
                if result.width >= width and result.height >= height:
                    break
                before = result.size
                result = to_image(self.run_model(model, to_tensor(result), on_tile=on_tile))
                if result.size == before:
                    break
        resample = PIL_FILTERS.get(info.name, Image.Resampling.LANCZOS)
        if result.size != (width, height):
            result = result.resize((width, height), resample=resample)
        if alpha is not None:
            result.putalpha(alpha.resize((width, height), Image.Resampling.LANCZOS))
        return result

    def resize(self, image: Image.Image, name: str | None, width: int, height: int) -> Image.Image:
        """A1111's `resize_image` (mode "Just resize") with an upscaler: hires fix and SD upscale use it."""
        if not name or name == "None" or image.mode == "L":
            return image.resize((width, height), Image.Resampling.LANCZOS)
        info = self.find(name)
        if info.kind == "pil":
            return image.convert("RGB").resize((width, height), PIL_FILTERS[info.name])
        scale = max(width / image.width, height / image.height)
        if scale > 1.0:
            image = self.upscale(image, info.name, scale)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        return image


def resize_for_hires(engine: Any, images: list[Image.Image], name: str, width: int, height: int) -> list[Image.Image]:
    """Hires fix through pixels: each first-pass image resized with the named upscaler (A1111's
    resize_image). Without an engine (bare pipeline tests) only the PIL filters are available."""
    registry = getattr(engine, "upscalers", None)
    if registry is None:
        if name not in PIL_FILTERS:
            raise UpscalerError(f"upscaler {name!r} needs the engine's upscaler registry")
        return [im.convert("RGB").resize((width, height), PIL_FILTERS[name]) for im in images]
    return [registry.resize(im, name, width, height) for im in images]
