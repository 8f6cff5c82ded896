"""User settings: one frozen dataclass, saved atomically to `config.json`.

Field metadata (group, label, choices) drives the Settings tab, so adding an option is one line here.
A job takes a frozen copy of the settings (with its own overrides applied), so two jobs never see each
other's changes.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping


def option(default: Any, group: str, label: str, choices: tuple[Any, ...] | None = None, **extra: Any) -> Any:
    """A settings field with the metadata the Settings tab and the API need."""
    meta = {"group": group, "label": label, "choices": choices, **extra}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Options under A1111's names where A1111 has one (so `/sdapi/v1/options` speaks the same keys)."""

    sd_model_checkpoint: str = option("", "Stable Diffusion", "Checkpoint")
    sd_vae: str = option("Automatic", "Stable Diffusion", "SD VAE")
    CLIP_stop_at_last_layers: int = option(1, "Stable Diffusion", "Clip skip", minimum=1, maximum=12)
    sd_checkpoint_cache: int = option(1, "Stable Diffusion", "Checkpoints to keep in memory", minimum=0, maximum=8)
    prediction_type_overrides: dict = option({}, "Stable Diffusion", "Per-model prediction type (eps / v)")
    family_overrides: dict = option({}, "Stable Diffusion", "Per-model family override")
    emphasis: str = option("Original", "Stable Diffusion", "Emphasis mode", ("Original", "No norm", "Ignore", "None"))
    comma_padding_backtrack: int = option(20, "Stable Diffusion", "Prompt word wrap length limit", minimum=0, maximum=74)
    inpainting_mask_weight: float = option(1.0, "Stable Diffusion", "Inpainting conditioning mask strength",
                                           minimum=0.0, maximum=1.0)
    precision: str = option("auto", "Compute", "Precision", ("auto", "fp32", "bf16", "fp16"))
    no_half_vae: bool = option(False, "Compute", "Keep the VAE in fp32")
    vae_tile_size: int = option(512, "Compute", "VAE tile size (pixels) for large images", minimum=256, maximum=2048)
    # A1111's face-restoration settings. GFPGAN by default (A1111: CodeFormer), because Palette's
    # install never adds the CodeFormer architecture (non-commercial licence; docs/face-restoration.md).
    face_restoration: bool = option(False, "Face restoration", "Restore faces after every generation")
    face_restoration_model: str = option("GFPGAN", "Face restoration", "Face restoration model", ("GFPGAN", "CodeFormer"))
    code_former_weight: float = option(0.5, "Face restoration", "CodeFormer weight (0 = strongest effect, 1 = least)",
                                       minimum=0.0, maximum=1.0)
    ESRGAN_tile: int = option(192, "Upscaling", "Upscaler tile size (input pixels, 0 = no tiling)", minimum=0, maximum=1024)
    ESRGAN_tile_overlap: int = option(32, "Upscaling", "Upscaler tile overlap (input pixels)", minimum=0, maximum=256)
    eta_ancestral: float = option(1.0, "Sampler parameters", "Eta for ancestral samplers", minimum=0.0, maximum=1.0)
    eta_ddim: float = option(0.0, "Sampler parameters", "Eta for DDIM", minimum=0.0, maximum=1.0)
    s_noise: float = option(1.0, "Sampler parameters", "Sigma noise", minimum=0.0, maximum=1.1)
    live_preview_every: int = option(5, "Live previews", "Show a preview every N steps (0 = off)", minimum=0, maximum=50)
    outdir_txt2img_samples: str = option("outputs/txt2img-images", "Saving images", "txt2img output folder")
    outdir_img2img_samples: str = option("outputs/img2img-images", "Saving images", "img2img output folder")
    outdir_extras_samples: str = option("outputs/extras-images", "Saving images", "Extras output folder")
    outdir_grids: str = option("outputs/txt2img-grids", "Saving images", "Grids output folder")
    samples_format: str = option("png", "Saving images", "File format", ("png", "jpg", "webp"))
    samples_filename_pattern: str = option("[seed]", "Saving images", "File name pattern")
    save_to_dirs: bool = option(True, "Saving images", "Save into a folder per date")
    samples_save: bool = option(True, "Saving images", "Save every generated image")
    queue_max_size: int = option(64, "Queue", "Jobs waiting at most (more get HTTP 429)", minimum=1, maximum=10000)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Settings":
        """A copy with A1111 `override_settings` applied; unknown keys are an error naming them."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"override_settings: unknown option(s) {', '.join(unknown)}")
        return replace(self, **dict(overrides))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# The settings that name an output folder (A1111's `outdir_*`), owned here with the fields: the web
# server serves files from these folders and Extras' "Batch from Directory" may read them.
OUTDIR_SETTINGS: tuple[str, ...] = tuple(f.name for f in fields(Settings) if f.name.startswith("outdir_"))


def defaults() -> dict[str, Any]:
    """Default value of every option."""
    out: dict[str, Any] = {}
    for f in fields(Settings):
        out[f.name] = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
    return out


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    notice: str | None = None  # shown to the user when the file was unreadable


def load_settings(path: Path) -> LoadedSettings:
    """Read `config.json`; a corrupt file is moved aside (never deleted) and defaults are used."""
    if not path.exists():
        return LoadedSettings(Settings())
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        return LoadedSettings(Settings(), notice=f"{path.name} was unreadable ({exc}); moved to {aside.name}, defaults used")
    known = {f.name for f in fields(Settings)}
    values = {k: v for k, v in data.items() if k in known}
    try:
        return LoadedSettings(Settings(**values))
    except TypeError as exc:  # pragma: no cover - dataclass accepts any values for known keys
        return LoadedSettings(Settings(), notice=f"{path.name}: {exc}; defaults used")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file + rename so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_settings(settings: Settings, path: Path) -> None:
    write_json_atomic(path, settings.to_dict())
