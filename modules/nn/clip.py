"""CLIP text encoders (OpenAI CLIP-L, OpenCLIP ViT-H and ViT-bigG) as `transformers` models, built from
configs derived from checkpoint shapes, and the open_clip → transformers key conversion.

Checkpoints store the text encoder in one of two layouts:
- "hf": transformers' names, `<prefix>text_model.embeddings.token_embedding.weight`, … (SD1 and SDXL's
  CLIP-L under `cond_stage_model.transformer.` / `conditioner.embedders.0.transformer.`);
- "open_clip": `<prefix>transformer.resblocks.N.attn.in_proj_weight` (q, k, v fused), `ln_1`, `mlp.c_fc`,
  `token_embedding.weight`, `positional_embedding`, `ln_final`, `text_projection` ([width, proj], used as
  `x @ P`) — SD2's ViT-H under `cond_stage_model.model.` and SDXL's bigG under
  `conditioner.embedders.1.model.` (the same mapping ComfyUI and diffusers' converters use).

`TextEncoder` keeps the published transformers layout (`text_model.*`, `text_projection.weight`) whatever
the installed transformers version calls its inner modules (5.x dropped the `text_model.` level from
`CLIPTextModel` itself), so the file's keys map one to one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from typing import TYPE_CHECKING

from modules.nn.assign import assign_weights
from modules.weights_io import WeightFileError, materialize

if TYPE_CHECKING:  # transformers is imported when a text encoder is built: it costs seconds at start-up
    from transformers import CLIPTextConfig

HEAD_WIDTH = 64  # every CLIP text encoder SD uses has 64-wide attention heads


@dataclass(frozen=True)
class TextEncoderConfig:
    """Shape and behaviour of one CLIP text transformer."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = 77
    vocab_size: int = 49408
    # OpenAI's CLIP was trained with x·sigmoid(1.702x); OpenCLIP's models use exact (erf) GELU.
    hidden_act: str = "quick_gelu"
    projection_dim: int | None = None  # text_projection width; None when the file has none (SD1)
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406
    eos_token_id: int = 49407  # pooling reads the first EOS, so padding after it may be anything

    def to_hf(self) -> CLIPTextConfig:
        """The transformers config object (never fetched from the hub)."""
        from transformers import CLIPTextConfig

        config = CLIPTextConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            projection_dim=self.projection_dim or self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            max_position_embeddings=self.max_positions,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
            attention_dropout=0.0,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=1,
        )
        config._attn_implementation = "sdpa"
        return config


# Published configurations.
CLIP_L = TextEncoderConfig()  # OpenAI CLIP ViT-L/14 text tower: SD1, SDXL encoder 0
OPEN_CLIP_H = TextEncoderConfig(  # OpenCLIP ViT-H/14 text tower: SD2 (which reads the 23rd of 24 layers)
    hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096, hidden_act="gelu", projection_dim=1024
)
OPEN_CLIP_BIGG = TextEncoderConfig(  # OpenCLIP ViT-bigG/14 text tower: SDXL encoder 1, SDXL refiner
    hidden_size=1280, num_layers=32, num_heads=20, intermediate_size=5120, hidden_act="gelu", projection_dim=1280
)
LAYOUTS = ("hf", "open_clip")


@dataclass(frozen=True)
class TextEncoderOutput:
    """What one forward pass gives: every layer's output and the pooled (EOS) features."""

    hidden_states: tuple[torch.Tensor, ...]  # [0] = embeddings, [i] = after layer i (no final norm)
    last_hidden_state: torch.Tensor  # final_layer_norm(hidden_states[-1])
    pooled: torch.Tensor  # last_hidden_state at each row's first EOS
    text_embeds: torch.Tensor | None  # text_projection(pooled), when the encoder has a projection


# An embedding override: (batch row, first token position, vectors [n, hidden]).
TokenOverride = tuple[int, int, torch.Tensor]


class TextEncoder(nn.Module):
    """transformers' CLIP text transformer (+ optional projection) under the published key names."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        from transformers import CLIPTextModel

        model = CLIPTextModel(config.to_hf())
        # transformers < 5 wraps the transformer as `.text_model`; 5.x's CLIPTextModel is the transformer.
        self.text_model = getattr(model, "text_model", model)
        self.text_projection = (
            nn.Linear(config.hidden_size, config.projection_dim, bias=False) if config.projection_dim else None
        )

    @property
    def final_layer_norm(self) -> nn.LayerNorm:
        return self.text_model.final_layer_norm

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.text_model.embeddings.token_embedding

    def forward(self, input_ids: torch.Tensor, overrides: Sequence[TokenOverride] = ()) -> TextEncoderOutput:
        """Encode [B, T] ids. `overrides` replace token embeddings (textual inversion) before the position
        embeddings are added, through a forward hook that lives only for this call."""
        handle = None
        if overrides:
            handle = self.token_embedding.register_forward_hook(_override_hook(overrides))
        try:
            out = self.text_model(input_ids=input_ids, output_hidden_states=True)
        finally:
            if handle is not None:
                handle.remove()
        embeds = self.text_projection(out.pooler_output) if self.text_projection is not None else None
        return TextEncoderOutput(tuple(out.hidden_states), out.last_hidden_state, out.pooler_output, embeds)

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """Rebuild non-persistent buffers (position ids), which files never carry, e.g. after a meta build."""
        emb = self.text_model.embeddings
        ids = torch.arange(self.config.max_positions, device=device).unsqueeze(0)
        emb.register_buffer("position_ids", ids, persistent=False)


def _override_hook(overrides: Sequence[TokenOverride]) -> Callable[..., torch.Tensor]:
    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for row, start, vectors in overrides:
            count = min(output.shape[1] - start, vectors.shape[0])  # A1111 truncates at the chunk end
            output[row, start : start + count] = vectors[:count].to(output.dtype)
        return output

    return hook


def build_text_encoder(
    config: TextEncoderConfig, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> TextEncoder:
    """A text encoder from a config object (random weights; use `load_text_encoder` for a file)."""
    with torch.device(device or "cpu"):
        model = TextEncoder(config)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)


# ---- configs from state-dict shapes ---------------------------------------------------------------

def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


def _require(sd: Mapping[str, Any], key: str, layout: str) -> Any:
    if key not in sd:
        raise KeyError(f"text encoder ({layout} layout) is missing {key!r}: not a CLIP text encoder at this prefix")
    return sd[key]


def _count_layers(sd: Mapping[str, Any], stem: str) -> int:
    pattern = re.compile(re.escape(stem) + r"(\d+)\.")
    indices = {int(m.group(1)) for k in sd.keys() if (m := pattern.match(k))}
    if not indices:
        raise KeyError(f"no transformer layers under {stem!r}")
    if indices != set(range(len(indices))):
        raise KeyError(f"transformer layers under {stem!r} are not numbered 0..{len(indices) - 1}")
    return len(indices)


def _hf_inner(sd: Mapping[str, Any], prefix: str) -> str:
    """"text_model." normally; "" for early SD1 files saved without that level (A1111 renames those)."""
    if prefix + "text_model.embeddings.token_embedding.weight" not in sd and \
            prefix + "embeddings.token_embedding.weight" in sd:
        return ""
    return "text_model."


def text_encoder_config_from_state_dict(
    sd: Mapping[str, Any], prefix: str, layout: str = "hf", hidden_act: str | None = None
) -> TextEncoderConfig:
    """Derive widths and depth from tensor shapes (works on meta tensors and lazy file entries).

    Shapes cannot say which activation was trained; unless given, a 768-wide encoder is taken to be
    OpenAI's CLIP-L (quick_gelu) and any other width an OpenCLIP model (gelu)."""
    if layout == "hf":
        base = prefix + _hf_inner(sd, prefix)
        vocab, hidden = _shape(_require(sd, base + "embeddings.token_embedding.weight", layout))
        positions = _shape(_require(sd, base + "embeddings.position_embedding.weight", layout))[0]
        layers = _count_layers(sd, base + "encoder.layers.")
        inner = _shape(_require(sd, base + "encoder.layers.0.mlp.fc1.weight", layout))[0]
        proj_key = prefix + "text_projection.weight"
        projection = _shape(sd[proj_key])[0] if proj_key in sd else None
    elif layout == "open_clip":
        vocab, hidden = _shape(_require(sd, prefix + "token_embedding.weight", layout))
        positions = _shape(_require(sd, prefix + "positional_embedding", layout))[0]
        layers = _count_layers(sd, prefix + "transformer.resblocks.")
        inner = _shape(_require(sd, prefix + "transformer.resblocks.0.mlp.c_fc.weight", layout))[0]
        proj_key = prefix + "text_projection"
        projection = _shape(sd[proj_key])[1] if proj_key in sd else None
    else:
        raise ValueError(f"unknown text encoder layout {layout!r}; expected one of {LAYOUTS}")
    if hidden % HEAD_WIDTH:
        raise ValueError(f"text encoder width {hidden} is not a multiple of {HEAD_WIDTH}")
    return TextEncoderConfig(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=hidden // HEAD_WIDTH,
        intermediate_size=inner,
        max_positions=positions,
        vocab_size=vocab,
        hidden_act=hidden_act or ("quick_gelu" if hidden == 768 else "gelu"),
        projection_dim=projection,
    )


# ---- open_clip → transformers -----------------------------------------------------------------------

_BLOCK_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
_TOP_RENAMES = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
# A plan entry: HF key → (source key, how to get the HF tensor from the source value).
Plan = dict[str, tuple[str, Callable[[Any], Any]]]


def _keep(value: Any) -> Any:
    return value  # renamed only: lazy file entries stay lazy


def _qkv_part(index: int) -> Callable[[Any], torch.Tensor]:
    return lambda value: materialize(value).chunk(3, dim=0)[index]


def _transposed(value: Any) -> torch.Tensor:
    return materialize(value).t().contiguous()


def open_clip_plan(sd: Mapping[str, Any], prefix: str) -> Plan:
    """Which source key (and transform) fills each HF key, for the keys present under `prefix`."""
    plan: Plan = {}
    for source, target in _TOP_RENAMES.items():
        if prefix + source in sd:
            plan[target] = (prefix + source, _keep)
    if prefix + "text_projection" in sd:
        plan["text_projection.weight"] = (prefix + "text_projection", _transposed)
    stem = prefix + "transformer.resblocks."
    block = re.compile(re.escape(stem) + r"(\d+)\.(.+)$")
    for key in sd.keys():
        match = block.match(key)
        if not match:
            continue
        layer, rest = match.groups()
        out = f"text_model.encoder.layers.{layer}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[1]
            for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
                plan[f"{out}self_attn.{name}.{kind}"] = (key, _qkv_part(index))
            continue
        module, _, param = rest.rpartition(".")
        if module in _BLOCK_RENAMES:
            plan[f"{out}{_BLOCK_RENAMES[module]}.{param}"] = (key, _keep)
    return plan


def convert_open_clip_state_dict(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """open_clip text-tower keys under `prefix` → `TextEncoder` keys (no prefix). Fused q/k/v are split,
    `text_projection` is transposed; pure renames keep lazy file entries lazy. Source keys that have no
    place (`logit_scale`, `attn_mask`, the visual tower) are left out: see `open_clip_consumed_keys`."""
    return {target: transform(sd[source]) for target, (source, transform) in open_clip_plan(sd, prefix).items()}


def open_clip_consumed_keys(sd: Mapping[str, Any], prefix: str) -> set[str]:
    """The source keys `convert_open_clip_state_dict` reads, so a loader can prove nothing went unused."""
    return {source for source, _ in open_clip_plan(sd, prefix).values()}


# ---- loading ----------------------------------------------------------------------------------------

@dataclass
class LoadedTextEncoder:
    model: TextEncoder
    used: set[str]  # file keys consumed
    missing: list[str]  # file keys (with prefix) the model needed but the file lacks


def load_text_encoder(
    sd: Mapping[str, Any],
    prefix: str,
    layout: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    hidden_act: str | None = None,
) -> LoadedTextEncoder:
    """Build on the meta device and assign the file's tensors, so nothing is initialised twice."""
    config = text_encoder_config_from_state_dict(sd, prefix, layout, hidden_act)
    with torch.device("meta"):
        model = TextEncoder(config)
    if layout == "open_clip":
        plan = open_clip_plan(sd, prefix)

        def source(key: str) -> tuple[str, Any] | None:
            if key not in plan:
                return None
            file_key, transform = plan[key]
            return file_key, transform(sd[file_key])
    else:
        inner = _hf_inner(sd, prefix)

        def source(key: str) -> tuple[str, Any] | None:
            if key.startswith("text_model."):
                key = inner + key[len("text_model.") :]
            return (prefix + key, sd[prefix + key]) if prefix + key in sd else None

    missing_keys, used = assign_weights(model, source, dtype, torch.device(device))
    missing = [_file_key(key, prefix, layout) for key in missing_keys]
    model.reset_buffers(device)
    return LoadedTextEncoder(model.eval().requires_grad_(False), used, missing)


def _file_key(key: str, prefix: str, layout: str) -> str:
    """Best-effort name of the file key a missing module key would have had (for error messages)."""
    if layout == "hf":
        return prefix + key
    for source, target in _TOP_RENAMES.items():
        if key == target:
            return prefix + source
    if key == "text_projection.weight":
        return prefix + "text_projection"
    match = re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
    if match:
        layer, module, param = match.groups()
        if module.startswith("self_attn.") and module != "self_attn.out_proj":
            return f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{param}"
        inverse = {v: k for k, v in _BLOCK_RENAMES.items()}
        return f"{prefix}transformer.resblocks.{layer}.{inverse.get(module, module)}.{param}"
    return prefix + key
