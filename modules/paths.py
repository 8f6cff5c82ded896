"""Where user files live: A1111's folder names under `models/`, each overridable from the command line.

A `ModelPaths` value is built once by `launch.py` and handed to the Engine; nothing here is global.
File lookups go through `safe_join` (and every containment check through `within`), so a name from
the UI or the API can never leave its folder.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
VAE_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

# The demo model that ships in the repository (models/Stable-diffusion/ of the install, not of the data
# folder): offered whenever the checkpoint folder holds no file of that name, e.g. with --data-dir.
BUNDLED_DEMO_MODEL = Path(__file__).resolve().parents[1] / "models" / "Stable-diffusion" / "palette-demo.safetensors"

# A1111's folder names, relative to the models directory.
FOLDERS = {
    "checkpoints": "Stable-diffusion",
    "vae": "VAE",
    "lora": "Lora",
    "embeddings": "embeddings",
    "controlnet": "ControlNet",
    "esrgan": "ESRGAN",
    "realesrgan": "RealESRGAN",
    "swinir": "SwinIR",
    "dat": "DAT",
    "hat": "HAT",
    "upscale_models": "upscale_models",
    "gfpgan": "GFPGAN",  # face restoration (modules/face_restore.py)
    "codeformer": "Codeformer",
}


class UnsafePathError(ValueError):
    """A user-supplied name tried to leave its folder."""


def within(path: Path | str, roots: Iterable[Path | str]) -> bool:
    """True when `path`, symlinks resolved, is one of `roots` (also resolved) or lies under one.
    The one containment check: every user-named path goes through it."""
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return False
    for root in roots:
        try:
            base = Path(root).resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if real == base or base in real.parents:
            return True
    return False


def safe_join(root: Path, name: str) -> Path:
    """Join `name` under `root`, refusing absolute paths, `..` and symlink escapes."""
    if not name or "\x00" in name:
        raise UnsafePathError(f"invalid file name {name!r}")
    if not within(root / name, [root]):
        raise UnsafePathError(f"{name!r} is outside {root.resolve()}")
    return (root / name).resolve()


@dataclass(frozen=True)
class ModelPaths:
    """The model folders Palette reads. `embeddings` may also live at the repo root (A1111 habit)."""

    root: Path
    models_dir: Path
    overrides: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        root: Path,
        models_dir: Path | None = None,
        *,
        ckpt_dir: Path | None = None,
        vae_dir: Path | None = None,
        lora_dir: Path | None = None,
        embeddings_dir: Path | None = None,
    ) -> "ModelPaths":
        root = Path(root).resolve()
        overrides = {
            key: Path(value).resolve()
            for key, value in (
                ("checkpoints", ckpt_dir),
                ("vae", vae_dir),
                ("lora", lora_dir),
                ("embeddings", embeddings_dir),
            )
            if value is not None
        }
        return cls(root=root, models_dir=Path(models_dir or root / "models").resolve(), overrides=overrides)

    def folder(self, kind: str) -> Path:
        """The primary folder for a kind of model file (see FOLDERS)."""
        if kind in self.overrides:
            return self.overrides[kind]
        return self.models_dir / FOLDERS[kind]

    def folders(self, kind: str) -> list[Path]:
        """All folders searched for a kind; embeddings also at `<root>/embeddings` and LoRAs also in
        `models/LyCORIS`, as A1111 does."""
        found = [self.folder(kind)]
        if kind == "embeddings" and "embeddings" not in self.overrides:
            found.append(self.root / "embeddings")
        if kind == "lora":
            found.append(self.models_dir / "LyCORIS")
        return [p for i, p in enumerate(found) if p not in found[:i]]

    def list_files(self, kind: str, extensions: tuple[str, ...]) -> list[Path]:
        """Files of a kind, recursively, sorted by relative name (case-insensitive)."""
        files: list[Path] = []
        for folder in self.folders(kind):
            if not folder.is_dir():
                continue
            for dirpath, _dirs, names in os.walk(folder, followlinks=True):
                for name in names:
                    if name.lower().endswith(extensions) and not name.startswith("."):
                        files.append(Path(dirpath) / name)
        return sorted(files, key=lambda p: str(p).lower())

    def ensure(self) -> None:
        """Create the standard folders so users see where files go."""
        for kind in ("checkpoints", "vae", "lora", "embeddings", "controlnet", "esrgan", "gfpgan", "codeformer"):
            self.folder(kind).mkdir(parents=True, exist_ok=True)
