"""ModelPatcher: patches are recorded, applied for the duration of a job, and undone bit-exactly.

LoRAs, ControlNet and extensions never mutate a cached model for good. A patcher wraps one shared
`nn.Module`; `clone()` gives a new patcher over the same module with its own list of patches, so the
cached bundle stays clean. `applied()` swaps the patched tensors in and restores the *original tensor
objects* afterwards (no copy, so restoring is exact to the bit and costs nothing).

Hooks are named callables the denoiser looks up (e.g. "pre_cfg", "post_cfg", "unet_wrapper"); they are
the place where ControlNet and extensions enter, instead of reassigning `forward`.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol

import torch
from torch import nn


class WeightPatch(Protocol):
    """Something that turns a weight into its patched value. Receives and returns float32."""

    def __call__(self, weight: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class DeltaPatch:
    """W + strength · delta(W): the common additive form (LoRA, LoHa, LoKr, diff files)."""

    delta: Callable[[torch.Tensor], torch.Tensor]
    strength: float = 1.0

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        d = self.delta(weight)
        return weight + self.strength * d.reshape(weight.shape).to(weight.dtype)


@dataclass
class _SharedState:
    """Per-module state shared by all clones: who has patched it and the original tensors."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    backups: dict[str, torch.Tensor] = field(default_factory=dict)
    applied_by: int | None = None


def _get_param_owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    *path, leaf = key.split(".")
    owner = model
    for part in path:
        owner = getattr(owner, part)
    return owner, leaf


def _set_tensor(model: nn.Module, key: str, value: torch.Tensor) -> None:
    owner, leaf = _get_param_owner(model, key)
    if isinstance(getattr(owner, leaf), nn.Parameter):
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[leaf] = value


class ModelPatcher:
    """A module plus the patches and hooks one job wants on it."""

    def __init__(self, model: nn.Module, *, _state: _SharedState | None = None) -> None:
        self.model = model
        self.weight_patches: dict[str, list[WeightPatch]] = {}
        self.hooks: dict[str, list[Callable[..., Any]]] = {}
        self.model_options: dict[str, Any] = {}
        self._state = _state or _SharedState()

    def clone(self) -> "ModelPatcher":
        """Same module, independent copy of the patch and hook lists."""
        other = ModelPatcher(self.model, _state=self._state)
        other.weight_patches = {k: list(v) for k, v in self.weight_patches.items()}
        other.hooks = {k: list(v) for k, v in self.hooks.items()}
        other.model_options = dict(self.model_options)
        return other

    def state_keys(self) -> set[str]:
        return set(self.model.state_dict(keep_vars=True).keys())

    def add_weight_patches(self, patches: Mapping[str, WeightPatch]) -> set[str]:
        """Record patches by state-dict key; returns the keys that exist in the model (others ignored)."""
        known = self.state_keys()
        used = set()
        for key, patch in patches.items():
            if key in known:
                self.weight_patches.setdefault(key, []).append(patch)
                used.add(key)
        return used

    def add_hook(self, point: str, fn: Callable[..., Any]) -> None:
        self.hooks.setdefault(point, []).append(fn)

    def get_hooks(self, point: str) -> list[Callable[..., Any]]:
        return list(self.hooks.get(point, ()))

    @property
    def is_patched(self) -> bool:
        return bool(self.weight_patches)

    def _patched_value(self, key: str, original: torch.Tensor) -> torch.Tensor:
        w = original.detach().to(torch.float32)
        for patch in self.weight_patches[key]:
            w = patch(w)
        return w.to(original.dtype)

    def patch_model(self) -> None:
        """Swap patched tensors in (restoring another clone's patches first)."""
        with self._state.lock:
            if self._state.applied_by == id(self):
                return
            self._restore()
            if not self.weight_patches:
                return
            tensors = self.model.state_dict(keep_vars=True)
            with torch.no_grad():
                for key in self.weight_patches:
                    original = tensors[key]
                    original = original.data if isinstance(original, nn.Parameter) else original
                    self._state.backups[key] = original
                    _set_tensor(self.model, key, self._patched_value(key, original))
            self._state.applied_by = id(self)

    def unpatch_model(self) -> None:
        with self._state.lock:
            self._restore()

    def _restore(self) -> None:
        for key, original in self._state.backups.items():
            _set_tensor(self.model, key, original)
        self._state.backups.clear()
        self._state.applied_by = None

    @contextmanager
    def applied(self) -> Iterator[nn.Module]:
        """Patches on for the block; originals back afterwards."""
        with self._state.lock:
            self.patch_model()
            try:
                yield self.model
            finally:
                self.unpatch_model()
