"""LoRA key names → the module of Palette's networks they patch, built from the loaded model itself.

LoRA files name modules in several dialects:
- kohya: `lora_unet_<path with _>` where the path is either diffusers' (`down_blocks_0_attentions_0_…`)
  or LDM's (`input_blocks_1_1_…`, kohya's SDXL scripts); `lora_te_` / `lora_te1_` / `lora_te2_` +
  transformers' CLIP path (`text_model_encoder_layers_0_self_attn_q_proj`);
- diffusers / peft: the same paths with dots, under `unet.`, `text_encoder.`, `text_encoder_2.`.

Palette's UNet keeps LDM's names (modules/nn/unet.py) and its text encoders keep transformers' names
(modules/nn/clip.py), so the map is made by walking the real modules and writing each name in every
dialect; the diffusers ↔ LDM block correspondence is computed from the UNet's own config (levels,
ResBlocks per level, where transformers are), never from a fixed table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

UNET = -1  # `Target.part` of the UNet; text encoders are 0, 1 (index into the stack's units)

# Inside a ResBlock: LDM name → diffusers name.
_RESNET_INNER = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}
_TOP_LEVEL = {
    "input_blocks.0.0": "conv_in",
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}


@dataclass(frozen=True)
class Target:
    """A module a LoRA key patches: which network (`UNET` or a text-encoder index) and its path."""

    part: int
    module: str


def diffusers_blocks(config: Any) -> dict[str, tuple[str, str]]:
    """LDM block prefix → (diffusers prefix, kind) for a UNet config; kind is "resnet", "attention",
    "down", "up" or "top". Mirrors the construction order of `UNetModel`."""
    out: dict[str, tuple[str, str]] = {k: (v, "top") for k, v in _TOP_LEVEL.items()}
    levels = len(config.channel_mult)
    index = 1
    for level, depths in enumerate(config.input_depths()):
        for i, depth in enumerate(depths):
            out[f"input_blocks.{index}.0"] = (f"down_blocks.{level}.resnets.{i}", "resnet")
            if depth > 0:
                out[f"input_blocks.{index}.1"] = (f"down_blocks.{level}.attentions.{i}", "attention")
            index += 1
        if level != levels - 1:
            out[f"input_blocks.{index}.0.op"] = (f"down_blocks.{level}.downsamplers.0.conv", "down")
            index += 1
    if config.transformer_depth_middle >= -1:
        out["middle_block.0"] = ("mid_block.resnets.0", "resnet")
        if config.transformer_depth_middle >= 0:
            out["middle_block.1"] = ("mid_block.attentions.0", "attention")
            out["middle_block.2"] = ("mid_block.resnets.1", "resnet")
    depth_output = iter(config.transformer_depth_output)
    index = 0
    for up, level in enumerate(reversed(range(levels))):
        n_blocks = config.num_res_blocks[level]
        for i in range(n_blocks + 1):
            out[f"output_blocks.{index}.0"] = (f"up_blocks.{up}.resnets.{i}", "resnet")
            has_attention = next(depth_output) > 0
            if has_attention:
                out[f"output_blocks.{index}.1"] = (f"up_blocks.{up}.attentions.{i}", "attention")
            if level and i == n_blocks:
                out[f"output_blocks.{index}.{2 if has_attention else 1}.conv"] = (f"up_blocks.{up}.upsamplers.0.conv", "up")
            index += 1
    return out


def ldm_to_diffusers(module: str, blocks: dict[str, tuple[str, str]]) -> str | None:
    """`input_blocks.1.0.in_layers.2` → `down_blocks.0.resnets.0.conv1`; None when there is none."""
    parts = module.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix not in blocks:
            continue
        target, kind = blocks[prefix]
        rest = ".".join(parts[cut:])
        if not rest:
            return target
        if kind == "resnet":
            inner = _RESNET_INNER.get(rest)
            return f"{target}.{inner}" if inner else None
        if kind == "attention":
            return f"{target}.{rest}"
        return None
    return None


def _weighted_modules(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules()
            if name and isinstance(getattr(module, "weight", None), nn.Parameter)]


class KeyMap:
    """Every name a LoRA file may use for a module of this model → `Target`."""

    def __init__(self, unet: nn.Module, text_models: Sequence[nn.Module]) -> None:
        self.names: dict[str, Target] = {}
        self.shapes: dict[Target, tuple[int, ...]] = {}
        config = getattr(unet, "config", None)
        blocks = diffusers_blocks(config) if config is not None else {}
        for module in _weighted_modules(unet):
            target = Target(UNET, module)
            self.shapes[target] = tuple(unet.get_submodule(module).weight.shape)
            aliases = [module, "diffusion_model." + module, "model.diffusion_model." + module]
            diffusers = ldm_to_diffusers(module, blocks)
            if diffusers:
                aliases.append("unet." + diffusers)
                self._add("lora_unet_" + diffusers.replace(".", "_"), target)
            self._add("lora_unet_" + module.replace(".", "_"), target)
            for alias in aliases:
                self._add(alias, target)
        # kohya: `lora_te_` for a single encoder (some SD1 files say `lora_te1_`), `lora_te1_`/`lora_te2_` for two
        prefixes = (("lora_te1_",), ("lora_te2_",)) if len(text_models) > 1 else (("lora_te_", "lora_te1_"),)
        dotted = ("text_encoder.", "text_encoder_2.")
        for part, model in enumerate(text_models[:2]):
            for module in _weighted_modules(model):
                target = Target(part, module)
                self.shapes[target] = tuple(model.get_submodule(module).weight.shape)
                for prefix in prefixes[part]:
                    self._add(prefix + module.replace(".", "_"), target)
                self._add(dotted[part] + module, target)

    def _add(self, name: str, target: Target) -> None:
        self.names.setdefault(name, target)

    def lookup(self, stem: str) -> Target | None:
        return self.names.get(stem)

    def weight_shape(self, target: Target) -> tuple[int, ...]:
        return self.shapes[target]
