"""LoRA files → weight patches on clones of a model's patchers (the cached model is never touched).

`open_lora` reads a file lazily (safetensors: header only until a delta is computed), `lora_family`
says which model family it was made for from its key names and shapes, and `apply_loras` clones the
bundle's UNet and text-encoder patchers and records one patch per module, with the tag's text-encoder
and UNet strengths. Several LoRAs stack: each adds its own patch, in prompt order. Keys that fit no
module of this model are counted per LoRA, so the user learns that a LoRA did (partly) nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from modules.lora_formats import Value, group_keys, make_adapter
from modules.lora_keys import UNET, KeyMap
from modules.patcher import DeltaPatch, ModelPatcher
from modules.types import LoraRef
from modules.weights_io import open_weights

log = logging.getLogger(__name__)

FAMILY_LABELS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sdxl_refiner": "SDXL Refiner"}
MODEL_FAMILY_KEYS = {label: key for key, label in FAMILY_LABELS.items()}
# Cross-attention context width → family (the UNet's attn2.to_k / to_v input width).
_CONTEXT_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl_refiner"}
# Text-encoder width of a single-encoder LoRA (CLIP-L → SD1, OpenCLIP ViT-H → SD2).
_TEXT_WIDTHS = {768: "sd1", 1024: "sd2"}


@dataclass(frozen=True)
class LoraFile:
    """An opened LoRA file: its tensors (lazy for safetensors) and safetensors metadata."""

    name: str
    path: Path
    tensors: Mapping[str, Value]
    metadata: Mapping[str, str] = field(default_factory=dict)


def open_lora(path: Path, name: str | None = None) -> LoraFile:
    """Open a LoRA file (safetensors lazily; .pt/.ckpt through the weights-only unpickler)."""
    path = Path(path)
    tensors = open_weights(path)
    return LoraFile(name or path.stem, path, tensors, dict(getattr(tensors, "metadata", {}) or {}))


def _input_width(tensors: Mapping[str, Value], parts: Mapping[str, str]) -> int | None:
    """The input width a module's factors imply, where the format shows it."""
    for part in ("lora_down", "hada_w1_b", "diff"):
        if part in parts:
            shape = tuple(tensors[parts[part]].shape)
            if len(shape) >= 2:
                return int(shape[1])
    return None


def _metadata_family(metadata: Mapping[str, str]) -> str | None:
    base = str(metadata.get("ss_base_model_version", ""))
    arch = str(metadata.get("modelspec.architecture", ""))
    if base.startswith("sdxl_") or arch.startswith("stable-diffusion-xl"):
        return "sdxl"
    if str(metadata.get("ss_v2", "")) == "True" or base.startswith("sd_v2") or arch.startswith("stable-diffusion-v2"):
        return "sd2"
    if base.startswith("sd_v1") or arch.startswith("stable-diffusion-v1"):
        return "sd1"
    return None


def lora_family(tensors: Mapping[str, Value], metadata: Mapping[str, str] | None = None) -> str | None:
    """"sd1", "sd2", "sdxl" (or "sdxl_refiner") from key names and shapes, falling back to kohya's
    metadata; None when nothing tells (e.g. a LoRA for a model of unusual width).

    In order: a second text encoder (`lora_te2_`, `text_encoder_2.`) means SDXL; else the UNet's
    cross-attention context width (768 SD1, 1024 SD2, 2048 SDXL); else the text encoder's width
    (768 CLIP-L → SD1, 1024 ViT-H → SD2); else `ss_base_model_version` / `modelspec.architecture`."""
    keys = list(tensors.keys())
    if any(k.startswith(("lora_te2_", "text_encoder_2.")) for k in keys):
        return "sdxl"
    groups, _ = group_keys(keys)
    text_width = None
    for stem, parts in groups.items():
        flat = stem.replace(".", "_")
        if flat.endswith(("attn2_to_k", "attn2_to_v")):
            width = _input_width(tensors, parts)
            if width in _CONTEXT_WIDTHS:
                return _CONTEXT_WIDTHS[width]
        elif text_width is None and flat.startswith(("lora_te", "text_encoder")) and flat.endswith("self_attn_q_proj"):
            text_width = _input_width(tensors, parts)
    if text_width in _TEXT_WIDTHS:
        return _TEXT_WIDTHS[text_width]
    return _metadata_family(metadata or {})


def model_family_key(family: Any) -> str:
    """A model's Family → the key LoRA families use ("SDXL" → "sdxl")."""
    return MODEL_FAMILY_KEYS.get(getattr(family, "name", str(family)), str(getattr(family, "name", family)).lower())


def family_mismatch(lora: LoraFile, family: Any, name: str | None = None) -> str | None:
    """The user-facing reason a LoRA cannot be used on a model of `family`, or None. `name`: as the
    prompt wrote it (defaults to the file's)."""
    made_for = lora_family(lora.tensors, lora.metadata)
    model = model_family_key(family)
    if made_for is None or made_for == model:
        return None
    label = FAMILY_LABELS.get(made_for, made_for)
    return f"LoRA '{name or lora.name}' was made for {label}, the model is {getattr(family, 'name', family)}"


@dataclass
class LoraPatches:
    """What one LoRA adds: patches per network (UNET or text-encoder index) and the unused keys."""

    name: str
    patches: dict[int, list[tuple[str, DeltaPatch]]] = field(default_factory=dict)
    modules: int = 0
    skipped: list[str] = field(default_factory=list)

    def add(self, part: int, key: str, patch: DeltaPatch) -> None:
        self.patches.setdefault(part, []).append((key, patch))


def build_patches(lora: LoraFile, keymap: KeyMap, *, te_strength: float = 1.0, unet_strength: float = 1.0,
                  dyn: int | None = None) -> LoraPatches:
    """One DeltaPatch per matched module (and bias); every file key that fits nothing is listed."""
    groups, unknown = group_keys(lora.tensors.keys())
    out = LoraPatches(lora.name, skipped=list(unknown))
    for stem, parts in groups.items():
        target = keymap.lookup(stem)
        values = {part: lora.tensors[key] for part, key in parts.items()}
        adapter = make_adapter(values, dyn=dyn) if target is not None else None
        if target is None or adapter is None or not adapter.fits(keymap.weight_shape(target)):
            out.skipped.extend(parts.values())
            continue
        out.skipped.extend(key for part, key in parts.items() if part not in adapter.used)
        strength = unet_strength if target.part == UNET else te_strength
        out.modules += 1
        if strength == 0:
            continue
        if adapter.weight is not None:
            out.add(target.part, target.module + ".weight", DeltaPatch(adapter.weight, strength))
        if adapter.bias is not None:
            out.add(target.part, target.module + ".bias", DeltaPatch(adapter.bias, strength))
    return out


def _add_all(patcher: ModelPatcher, patches: Sequence[tuple[str, DeltaPatch]]) -> set[str]:
    """Add patches (a key may repeat: each layer holds one patch per key); returns the keys used."""
    layers: list[dict[str, DeltaPatch]] = []
    for key, patch in patches:
        for layer in layers:
            if key not in layer:
                layer[key] = patch
                break
        else:
            layers.append({key: patch})
    used: set[str] = set()
    for layer in layers:
        used |= patcher.add_weight_patches(layer)
    return used


@dataclass(frozen=True)
class AppliedLoras:
    """The patched bundle and, per LoRA name, how many file keys matched nothing."""

    bundle: Any
    skipped_keys: Mapping[str, int]
    modules: Mapping[str, int]


def apply_loras(bundle: Any, loras: Sequence[tuple[LoraRef, LoraFile]], keymap: KeyMap) -> AppliedLoras:
    """Clone the bundle's patchers and add every LoRA's patches; the bundle itself stays untouched."""
    unet = bundle.unet.clone()
    texts = [p.clone() for p in bundle.text_patchers]
    skipped: dict[str, int] = {}
    modules: dict[str, int] = {}
    for ref, lora in loras:
        built = build_patches(lora, keymap, te_strength=ref.te_weight, unet_strength=ref.unet_weight, dyn=ref.dyn)
        missed = list(built.skipped)
        for part, patches in built.patches.items():
            patcher = unet if part == UNET else texts[part]
            used = _add_all(patcher, patches)
            missed += [key for key, _ in patches if key not in used]  # e.g. a bias the layer lacks
        skipped[ref.name] = skipped.get(ref.name, 0) + len(missed)
        modules[ref.name] = modules.get(ref.name, 0) + built.modules
        if missed:
            log.warning("LoRA %s: %d of %d keys match nothing in this model (e.g. %s)", ref.name, len(missed),
                        len(lora.tensors), ", ".join(missed[:3]))
    return AppliedLoras(replace(bundle, unet=unet, text_patchers=tuple(texts)), skipped, modules)

