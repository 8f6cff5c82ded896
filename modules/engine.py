"""The Engine: the one place that owns settings, model files, loaded models and the device.

`launch.py` builds one Engine; the UI, the API and the job queue call it. All mutable state of the
running program lives here (and in the job queue it owns), nowhere else. Generation must be called
from one worker thread at a time (the queue guarantees it); listing and settings calls are safe from
any thread.
"""
from __future__ import annotations

import gc
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from modules import config as config_mod
from modules.checkpoints import ModelBundle, ema_only_view, load_checkpoint
from modules.detection import detect
from modules.devices import DevicePlan, plan_devices
from modules.face_restore import FaceRestoreError, FaceRestorers
from modules.networks import NetworkRegistry
from modules.paths import BUNDLED_DEMO_MODEL, CHECKPOINT_EXTENSIONS, VAE_EXTENSIONS, ModelPaths, safe_join
from modules.types import CheckpointHints, GenerationRequest, NetworkEntry, ProgressEvent, Result
from modules.upscalers import UpscalerInfo, UpscalerRegistry
from modules.validation import RequestError
from modules.weights_io import (SafetensorsFile, WeightFileError, file_sha256, open_weights,
                                stat_key)

log = logging.getLogger(__name__)

DEMO_MODEL_NAME = BUNDLED_DEMO_MODEL.name


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint file on disk, named as A1111 names it (path relative to the folder)."""

    name: str
    path: Path
    short_hash: str | None = None

    @property
    def model_name(self) -> str:
        """The name A1111 writes as `Model:` in infotexts (file stem)."""
        return Path(self.name).stem

    @property
    def title(self) -> str:
        label = self.name + (" (demo model)" if Path(self.name).name == DEMO_MODEL_NAME else "")
        return f"{label} [{self.short_hash}]" if self.short_hash else label


class CancelToken:
    """Set from any thread; checked by the sampler loop after every step."""

    def __init__(self) -> None:
        self.interrupted = threading.Event()
        self.skipped = threading.Event()

    def interrupt(self) -> None:
        self.interrupted.set()

    def skip(self) -> None:
        self.skipped.set()


class HashCache:
    """sha256 of model files, computed once per (path, size, mtime) and kept in `cache.json`."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict] = {}
        if path and path.is_file():
            try:
                self._data = json.loads(path.read_text(encoding="utf-8")).get("hashes", {})
            except (ValueError, OSError):
                self._data = {}

    def sha256(self, file: Path, *, compute: bool = True, addnet: bool = False) -> str | None:
        """`addnet`: A1111's LoRA hash, the sha256 of a safetensors file's data after its header."""
        key, size, mtime = stat_key(file)
        key = key + "#addnet" if addnet else key
        with self._lock:
            entry = self._data.get(key)
            if entry and entry.get("size") == size and entry.get("mtime") == mtime:
                return entry["sha256"]
        if not compute:
            return None
        digest = SafetensorsFile(file).payload_sha256() if addnet else file_sha256(file)
        with self._lock:
            self._data[key] = {"size": size, "mtime": mtime, "sha256": digest}
            if self.path:
                config_mod.write_json_atomic(self.path, {"hashes": self._data})
        return digest


class Engine:
    """Settings, model registry, model cache and generation."""

    def __init__(
        self,
        paths: ModelPaths,
        *,
        settings: config_mod.Settings | None = None,
        settings_path: Path | None = None,
        plan: DevicePlan | None = None,
        outputs_root: Path | None = None,
        bundled_demo: Path | None = None,
    ) -> None:
        """`bundled_demo`: the demo checkpoint shipped with Palette, listed (last) when the checkpoint
        folder has no file of that name, so a fresh --data-dir or --ckpt-dir still has a model."""
        self.paths = paths
        self.bundled_demo = bundled_demo
        self.settings_path = settings_path
        loaded = config_mod.load_settings(settings_path) if settings_path else config_mod.LoadedSettings(config_mod.Settings())
        self.settings = settings or loaded.settings
        self.notices: list[str] = [loaded.notice] if loaded.notice else []
        self.plan = plan or plan_devices(precision=self.settings.precision, no_half_vae=self.settings.no_half_vae)
        self.outputs_root = outputs_root or paths.root
        self.hashes = HashCache(paths.root / "cache.json" if settings_path else None)
        self._lock = threading.RLock()
        self._cache: OrderedDict[Path, ModelBundle] = OrderedDict()
        self._current: Path | None = None
        self._vaes: dict[tuple[Path, float], object] = {}
        self.networks = NetworkRegistry(paths, self.hashes)
        self.upscalers = UpscalerRegistry(paths, device=self.plan.device, dtype=self.plan.unet_dtype,
                                          settings=lambda: self.settings)
        self.face_restorers = FaceRestorers(paths, device=self.plan.device, dtype=self.plan.unet_dtype)

    # ---- settings -------------------------------------------------------------------------------
    def update_settings(self, **changes) -> config_mod.Settings:
        with self._lock:
            self.settings = self.settings.with_overrides(changes)
            return self.settings

    def save_settings(self) -> None:
        if self.settings_path:
            config_mod.save_settings(self.settings, self.settings_path)

    # ---- model files ----------------------------------------------------------------------------
    def list_checkpoints(self) -> list[CheckpointInfo]:
        """Checkpoints on disk; the demo model is listed last so a real model is the default."""
        folder = self.paths.folder("checkpoints")
        infos = []
        for path in self.paths.list_files("checkpoints", CHECKPOINT_EXTENSIONS):
            name = str(path.relative_to(folder)) if folder in path.parents else path.name
            sha = self.hashes.sha256(path, compute=False)
            infos.append(CheckpointInfo(name, path, sha[:10] if sha else None))
        demo = self.bundled_demo
        if demo is not None and demo.is_file() and not any(Path(i.name).name == DEMO_MODEL_NAME for i in infos):
            sha = self.hashes.sha256(demo, compute=False)
            infos.append(CheckpointInfo(DEMO_MODEL_NAME, demo, sha[:10] if sha else None))
        infos.sort(key=lambda i: (Path(i.name).name == DEMO_MODEL_NAME, i.name.lower()))
        return infos

    def checkpoint_hints(self, name: str | None) -> CheckpointHints:
        """What a checkpoint asks of the UI in its safetensors metadata (Palette's demo model carries
        both keys), or empty hints. Reads the header only; a value out of range is ignored."""
        if not name:
            return CheckpointHints()
        try:
            return CheckpointHints.from_file(self.find_checkpoint(name).path)
        except (OSError, ValueError, WeightFileError):
            return CheckpointHints()

    def find_checkpoint(self, name: str) -> CheckpointInfo:
        """Accept a file name, a relative name, a title with `[hash]`, a stem or a hash prefix."""
        wanted = name.strip()
        bare = wanted.split(" [")[0].removesuffix(" (demo model)")
        infos = self.list_checkpoints()
        for info in infos:
            if bare in (info.name, info.title, info.model_name, Path(info.name).name):
                return info
        for info in infos:
            if info.short_hash and wanted.lower() in (info.short_hash, f"[{info.short_hash}]"):
                return info
        names = ", ".join(i.name for i in infos) or "none"
        raise FileNotFoundError(f"checkpoint {name!r} not found in {self.paths.folder('checkpoints')} (have: {names})")

    def list_vaes(self) -> list[Path]:
        return self.paths.list_files("vae", VAE_EXTENSIONS)

    def vae_for(self, bundle: ModelBundle, setting: str) -> tuple[object, Path | None]:
        """(VAE, file) the "SD VAE" setting selects for `bundle`; loaded VAEs are cached by path."""
        from modules.vae_files import choose_vae_path, load_vae_file

        path = choose_vae_path(setting, bundle.path, self.list_vaes())
        if path is None:
            return bundle.vae, None
        with self._lock:
            key = (path, bundle.family.vae_scaling)
            if key not in self._vaes:
                self._vaes.clear()  # keep one external VAE in memory
                self._vaes[key] = load_vae_file(path, self.plan, scaling=bundle.family.vae_scaling,
                                                shift=bundle.family.vae_shift)
            return self._vaes[key], path

    # ---- extra networks (LoRA, textual inversion) -------------------------------------------------
    def list_loras(self) -> list[NetworkEntry]:
        return self.networks.list_loras()

    def list_embeddings(self) -> list[NetworkEntry]:
        return self.networks.list_embeddings()

    def refresh_networks(self) -> None:
        self.networks.refresh()

    def token_count(self, prompt: str, *, steps: int = 20, is_positive: bool = True) -> tuple[int, int]:
        """A1111's "N/75" counter for a prompt; uses the loaded model's encoders if one is loaded
        (never loads one), counting embedding names as their vectors."""
        from modules.networks import token_count

        current = self._current  # no lock: the counter must not wait for a model load
        bundle = self._cache.get(current) if current is not None else None
        return token_count(self.networks, bundle.text if bundle is not None else None, prompt, steps=steps,
                           is_positive=is_positive, comma_padding_backtrack=self.settings.comma_padding_backtrack)

    # ---- upscalers --------------------------------------------------------------------------------
    def list_upscalers(self) -> list[UpscalerInfo]:
        """PIL upscalers and the model files in the upscaler folders, under A1111's names."""
        return self.upscalers.list()

    def hr_upscaler_names(self) -> list[str]:
        """Every name `hr_upscaler` accepts: the Latent modes, then the list above."""
        from modules.validation import LATENT_UPSCALE_MODES

        return [*LATENT_UPSCALE_MODES, *self.upscalers.names()]

    def validate(self, request: GenerationRequest) -> None:
        """Every check that needs no model: the fields, upscaler names, LoRA names. Raises RequestError
        naming the field; the queue calls it at submit so a bad job never waits in line."""
        from modules.networks import check_request
        from modules.validation import validate_request

        validate_request(request, upscalers=self.hr_upscaler_names())
        check_request(self.networks, request)
        settings = self.settings.with_overrides(request.override_settings) if request.override_settings else self.settings
        self.face_restorer_for(request, settings)

    def face_restorer_for(self, request: GenerationRequest, settings: config_mod.Settings) -> str | None:
        """The face restorer a job runs after decoding (A1111's restore_faces; None follows the "Restore
        faces" setting), or None. One that cannot run is a RequestError naming `restore_faces`."""
        wanted = request.restore_faces if request.restore_faces is not None else settings.face_restoration
        if not wanted:
            return None
        name = settings.face_restoration_model
        try:
            reason = self.face_restorers.unavailable(name)
        except FaceRestoreError as exc:
            reason = str(exc)
        if reason:
            raise RequestError("restore_faces", f"face restoration model {name} is not available: {reason}")
        return self.face_restorers.spec(name).name

    def model_hash(self, path: Path) -> str:
        return (self.hashes.sha256(path) or "")[:10]

    # ---- loaded models --------------------------------------------------------------------------
    @property
    def current_checkpoint(self) -> CheckpointInfo | None:
        if self._current is None:
            return None
        return next((i for i in self.list_checkpoints() if i.path == self._current), None)

    def select_checkpoint(self, name: str) -> ModelBundle:
        """Make `name` the current model, loading it if needed. On any error the previous model stays."""
        info = self.find_checkpoint(name)
        with self._lock:
            bundle = self._load(info.path)
            self._current = info.path
            self.settings = self.settings.with_overrides({"sd_model_checkpoint": info.name})
            return bundle

    def current_bundle(self) -> ModelBundle:
        """The current model, loading the default one (first real checkpoint, else the demo) if none."""
        with self._lock:
            if self._current is None:
                wanted = self.settings.sd_model_checkpoint
                infos = self.list_checkpoints()
                if not infos:
                    raise FileNotFoundError(
                        f"no checkpoint found: put a .safetensors file in {self.paths.folder('checkpoints')}"
                    )
                chosen = next((i for i in infos if wanted and wanted in (i.name, i.title)), infos[0])
                return self.select_checkpoint(chosen.name)
            return self._load(self._current)

    def _overrides_for(self, path: Path) -> tuple[str | None, str | None]:
        name = path.name
        return self.settings.family_overrides.get(name), self.settings.prediction_type_overrides.get(name)

    def _load(self, path: Path) -> ModelBundle:
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        family_override, prediction_override = self._overrides_for(path)
        # Validate the header, offsets and family *before* evicting anything.
        detect(ema_only_view(open_weights(path)), path, family_override=family_override, prediction_override=prediction_override)
        capacity = max(self.settings.sd_checkpoint_cache, 1)
        evicted: list[Path] = []
        while len(self._cache) >= capacity:
            old_path, _ = self._cache.popitem(last=False)
            evicted.append(old_path)
        gc.collect()
        try:
            bundle = load_checkpoint(path, self.plan, family_override=family_override, prediction_override=prediction_override)
        except Exception:
            for old in evicted:  # put the previous model back (cheap: weights are memory-mapped)
                try:
                    self._cache[old] = load_checkpoint(old, self.plan, **dict(zip(("family_override", "prediction_override"), self._overrides_for(old))))
                except Exception:  # noqa: BLE001 - the original error matters more
                    log.exception("could not restore %s", old)
            raise
        log.info("loaded %s: %s (%s)", path.name, bundle.detection.label, bundle.report.summary())
        self._cache[path] = bundle
        return bundle

    def unload(self) -> None:
        with self._lock:
            self._cache.clear()
            self._current = None
            gc.collect()

    # ---- generation -----------------------------------------------------------------------------
    def generate(
        self,
        request: GenerationRequest,
        *,
        progress: Callable[[ProgressEvent], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> Result:
        """Run one job on the worker thread. Settings are frozen for the job (with its overrides)."""
        from modules import pipeline

        self.validate(request)  # before any model is loaded
        settings = self.settings.with_overrides(request.override_settings) if request.override_settings else self.settings
        if request.checkpoint:
            bundle = self.select_checkpoint(request.checkpoint)
        else:
            bundle = self.current_bundle()
        info = self.current_checkpoint
        return pipeline.generate(
            self,
            bundle,
            request,
            settings=settings,
            checkpoint=info,
            progress=progress,
            cancel=cancel or CancelToken(),
        )

    def output_dir(self, relative: str) -> Path:
        return safe_join(self.outputs_root, relative) if not Path(relative).is_absolute() else Path(relative)
