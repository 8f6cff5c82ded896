"""A small stand-in for `modules.engine.Engine`, for the queue and UI tests.

It has the Engine's public methods and returns solid-colour images (colour from the seed) with an
A1111-style infotext, so the UI can be driven end to end before the real pipeline exists and on
machines without models. Prompts steer it: "raise" fails, "oom" raises torch.OutOfMemoryError,
"nan" raises a NaN error, "slow" takes `slow_step` seconds per step. An inpaint request (a mask) gets
its init image back with the masked pixels (mask > 128) painted in the seed's colour, so a UI test can
see where the mask landed. A `<lora:name:w>` tag naming a file not in `models/Lora` is a RequestError on
`prompt`, as the real engine's. Extra networks are the files under `root/models/Lora` and
`root/models/embeddings`, scanned once and again on `refresh_networks()`, as the Engine contract says.
"""
from __future__ import annotations

import random
import re
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from modules import config as config_mod
from modules.engine import CancelToken, CheckpointInfo
from modules.networks import find_preview
from modules.paths import ModelPaths, safe_join
from modules.prompts import parse_extra_networks
from modules.tokenizer import default_tokenizer
from modules.types import CheckpointHints, GenerationRequest, NetworkEntry, ProgressEvent, Result
from modules.validation import RequestError, validate_request

NETWORK_EXTENSIONS = {"lora": (".safetensors", ".pt", ".ckpt"), "embeddings": (".safetensors", ".pt", ".bin")}
_TAGS = re.compile(r"<[^>]*>")
_WEIGHTS = re.compile(r":\s*-?[\d.]+\s*(?=[)\]])")
_SYNTAX = re.compile(r"[()\[\]]|\bBREAK\b")


def embedding_metadata(path: Path) -> dict[str, str]:
    """What the real registry lists for an embedding file (read the same way); {} when unreadable."""
    from modules.embeddings import read_embedding_details
    from modules.weights_io import WeightFileError

    try:
        return read_embedding_details(path)[1]
    except (OSError, WeightFileError):
        return {}


def rough_token_count(text: str) -> int:
    """CLIP tokens after dropping `<lora:…>` tags, `:1.2` weights and brackets (near A1111's count)."""
    plain = _SYNTAX.sub(" ", _WEIGHTS.sub("", _TAGS.sub("", text)))
    return len(default_tokenizer().encode(plain))


def fake_infotext(req: GenerationRequest, seed: int, model: CheckpointInfo | None) -> str:
    """The A1111 layout: prompt, `Negative prompt:` line, then `Key: value` pairs."""
    parts = {
        "Steps": req.steps,
        "Sampler": req.sampler_name,
        "Schedule type": req.scheduler,
        "CFG scale": f"{req.cfg_scale:g}",
        "Seed": seed,
        "Size": f"{req.width}x{req.height}",
        "Model hash": model.short_hash if model else None,
        "Model": model.model_name if model else None,
        "Denoising strength": f"{req.denoising_strength:g}" if req.is_img2img or req.enable_hr else None,
        "Clip skip": req.clip_skip if req.clip_skip > 1 else None,
        "Hires upscale": f"{req.hr_scale:g}" if req.enable_hr else None,
        "Hires upscaler": req.hr_upscaler if req.enable_hr else None,
        "Mask blur": req.mask_blur if req.mask is not None else None,
        "Masked content": ("fill", "original", "latent noise", "latent nothing")[req.inpainting_fill]
        if req.mask is not None and req.inpainting_fill != 1 else None,
    }
    tail = ", ".join(f"{k}: {v}" for k, v in parts.items() if v is not None)
    negative = f"\nNegative prompt: {req.negative_prompt}" if req.negative_prompt else ""
    return f"{req.prompt}{negative}\n{tail}"


class FakeEngine:
    """Same public surface as `modules.engine.Engine`; no models, no maths."""

    def __init__(self, root: Path, *, checkpoints: tuple[str, ...] = ("alpha.safetensors", "beta.safetensors"),
                 step_time: float = 0.0, slow_step: float = 0.5) -> None:
        self.root = Path(root)
        self.settings_path = self.root / "config.json"
        self.settings = config_mod.load_settings(self.settings_path).settings
        self.notices: list[str] = []
        self.outputs_root = self.root
        self.step_time = step_time
        self.slow_step = slow_step
        self.paths = ModelPaths.create(self.root)
        self._infos = [CheckpointInfo(n, self.root / n, f"{abs(hash(n)) % 16**10:010x}") for n in checkpoints]
        self._networks: dict[str, list[NetworkEntry]] | None = None
        self._current: CheckpointInfo | None = None
        self._lock = threading.Lock()
        self.calls: list[GenerationRequest] = []
        self.token_prompts: list[str] = []  # every token_count() call (the UI debounces them)
        self.token_steps: list[int] = []
        self.threads: set[str] = set()
        self.on_generate: Callable[[GenerationRequest], None] | None = None
        # the real upscaler registry over <root>/models: PIL filters, plus any tiny model a test puts there
        from modules.upscalers import UpscalerRegistry

        self.upscalers = UpscalerRegistry(ModelPaths.create(self.root), device=torch.device("cpu"),
                                          dtype=torch.float32, settings=lambda: self.settings)
        from modules.face_restore import FaceRestorers

        self.face_restorers = FaceRestorers(ModelPaths.create(self.root), device=torch.device("cpu"), dtype=torch.float32)

    # settings
    def update_settings(self, **changes) -> config_mod.Settings:
        with self._lock:
            self.settings = self.settings.with_overrides(changes)
            return self.settings

    def save_settings(self) -> None:
        config_mod.save_settings(self.settings, self.settings_path)

    # models
    def list_checkpoints(self) -> list[CheckpointInfo]:
        return list(self._infos)

    def checkpoint_hints(self, name: str | None) -> CheckpointHints:
        return CheckpointHints()  # no fake checkpoint names a size or CFG scale

    def find_checkpoint(self, name: str) -> CheckpointInfo:
        bare = name.split(" [")[0]
        for info in self._infos:
            if bare in (info.name, info.title, info.model_name):
                return info
        raise FileNotFoundError(f"checkpoint {name!r} not found")

    @property
    def current_checkpoint(self) -> CheckpointInfo | None:
        return self._current

    def select_checkpoint(self, name: str) -> CheckpointInfo:
        info = self.find_checkpoint(name)
        time.sleep(self.step_time)
        self._current = info
        self.update_settings(sd_model_checkpoint=info.name)
        return info

    def current_bundle(self) -> CheckpointInfo:
        if self._current is None:
            wanted = self.settings.sd_model_checkpoint
            return self.select_checkpoint(wanted if wanted else self._infos[0].name)
        return self._current

    def unload(self) -> None:
        self._current = None

    # extra networks (the Engine contract: a cached scan, rescanned by refresh_networks)
    def refresh_networks(self) -> None:
        found: dict[str, list[NetworkEntry]] = {}
        for kind, label in (("lora", "lora"), ("embeddings", "embedding")):
            entries = []
            for path in self.paths.list_files(kind, NETWORK_EXTENSIONS[kind]):
                stem = path.name[: -len(path.suffix)]
                preview = find_preview(path)  # the real registry's rule
                metadata = {"ss_output_name": f"{stem}-alias"} if kind == "lora" else embedding_metadata(path)
                entries.append(NetworkEntry(stem, label, path, family="sd1", hash=f"{abs(hash(stem)) % 16**12:012x}",
                                            preview=preview, metadata=metadata))
            found[kind] = entries
        with self._lock:
            self._networks = found

    def _network_list(self, kind: str) -> list[NetworkEntry]:
        if self._networks is None:
            self.refresh_networks()
        assert self._networks is not None
        return list(self._networks[kind])

    def list_loras(self) -> list[NetworkEntry]:
        return self._network_list("lora")

    def list_embeddings(self) -> list[NetworkEntry]:
        return self._network_list("embeddings")

    def token_count(self, prompt: str, *, steps: int = 20, is_positive: bool = True) -> tuple[int, int]:
        self.token_prompts.append(prompt)
        self.token_steps.append(steps)
        count = rough_token_count(prompt)
        return count, max(75, -(-count // 75) * 75)

    def list_vaes(self) -> list[Path]:
        return [self.root / "models" / "VAE" / "fake-vae.safetensors"]

    def list_upscalers(self) -> list:
        return self.upscalers.list()

    def hr_upscaler_names(self) -> list[str]:
        from modules.validation import LATENT_UPSCALE_MODES

        return [*LATENT_UPSCALE_MODES, *self.upscalers.names()]

    def output_dir(self, relative: str) -> Path:
        return safe_join(self.outputs_root, relative) if not Path(relative).is_absolute() else Path(relative)

    def samplers(self) -> list[str]:
        return ["Euler a", "Euler", "DPM++ 2M", "DDIM"]

    def schedulers(self) -> list[str]:
        return ["Automatic", "Karras", "Exponential"]

    # generation
    def validate(self, request: GenerationRequest) -> None:
        """As the Engine's: the fields, upscaler names, and LoRA names (files in models/Lora)."""
        validate_request(request, upscalers=self.hr_upscaler_names())
        known = {entry.name for entry in self.list_loras()}
        for params in parse_extra_networks(request.prompt)[1].get("lora", []):
            name = params.positional[0] if params.positional else ""
            if name not in known:
                raise RequestError("prompt", f"LoRA {name!r} not found in {self.paths.folder('lora')}")

    def generate(self, request: GenerationRequest, *, progress: Callable[[ProgressEvent], None] | None = None,
                 cancel: CancelToken | None = None) -> Result:
        self.calls.append(request)
        self.threads.add(threading.current_thread().name)
        if self.on_generate:
            self.on_generate(request)
        prompt = request.prompt.lower()
        if "oom" in prompt:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if "raise" in prompt:
            raise RuntimeError("the fake engine was asked to fail")
        if "nan" in prompt.split():
            raise FloatingPointError("A tensor with all NaNs was produced in Unet")
        self.validate(request)
        info = self.select_checkpoint(request.checkpoint) if request.checkpoint else self.current_bundle()
        cancel = cancel or CancelToken()
        step_time = self.slow_step if "slow" in prompt else self.step_time
        every = self.settings.live_preview_every
        base_seed = request.seed if request.seed >= 0 else random.randrange(2**32)
        images, infotexts, seeds = [], [], []
        for index in range(request.n_iter):
            cancel.skipped.clear()
            for step in range(1, request.steps + 1):
                if cancel.interrupted.is_set() or cancel.skipped.is_set():
                    break
                time.sleep(step_time)
                preview = None
                if every and step % every == 0:
                    preview = self._image(base_seed + index, request, dim=True)
                if progress:
                    progress(ProgressEvent(step, request.steps, index, request.n_iter, preview=preview))
            if cancel.interrupted.is_set():
                break
            if cancel.skipped.is_set():
                continue
            batch = []
            for b in range(request.batch_size):
                seed = base_seed + index * request.batch_size + b
                batch.append(self._image(seed, request))
                infotexts.append(fake_infotext(request, seed, info))
                seeds.append(seed)
            images.extend(batch)
            if progress:
                progress(ProgressEvent(0, 0, index, request.n_iter, images=tuple(batch)))
        return Result(tuple(images), tuple(infotexts), tuple(seeds), interrupted=cancel.interrupted.is_set())

    @staticmethod
    def _image(seed: int, req: GenerationRequest, dim: bool = False) -> Image.Image:
        rng = random.Random(seed)
        colour = tuple(rng.randrange(40, 256) // (2 if dim else 1) for _ in range(3))
        size = (req.width // 4, req.height // 4) if dim else (req.width, req.height)
        if req.mask is not None and req.init_images and not dim:
            init = req.init_images[0].convert("RGB")
            mask = req.mask.convert("L").resize(init.size).point(lambda v: 255 if v > 128 else 0)
            if req.inpainting_mask_invert:
                mask = mask.point(lambda v: 255 - v)
            return Image.composite(Image.new("RGB", init.size, colour), init, mask)
        return Image.new("RGB", size, colour)
