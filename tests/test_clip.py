"""CLIP text encoders: configs from shapes, published checkpoint layouts on the meta device, and the
open_clip → transformers conversion checked against a forward pass written out by hand here."""
from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modules.nn.clip import (  # noqa: E402
    CLIP_L,
    OPEN_CLIP_BIGG,
    OPEN_CLIP_H,
    TextEncoderConfig,
    build_text_encoder,
    convert_open_clip_state_dict,
    load_text_encoder,
    open_clip_consumed_keys,
    text_encoder_config_from_state_dict,
)

BOS, EOS = 49406, 49407


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU spinning threads cost 100x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- published layouts, written out from the key names real checkpoints carry -----------------------

def hf_layout(prefix: str, width: int, layers: int, inner: int, vocab: int = 49408, positions: int = 77,
              projection: int | None = None, make=None) -> dict:
    """SD1 / SDXL CLIP-L keys: `<prefix>text_model.…` (+ the `position_ids` buffer old files carry)."""
    make = make or (lambda *shape: torch.empty(shape, device="meta"))
    t = prefix + "text_model."
    sd = {
        t + "embeddings.token_embedding.weight": make(vocab, width),
        t + "embeddings.position_embedding.weight": make(positions, width),
        t + "embeddings.position_ids": torch.arange(positions)[None],
        t + "final_layer_norm.weight": make(width),
        t + "final_layer_norm.bias": make(width),
    }
    for i in range(layers):
        b = f"{t}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{b}self_attn.{name}.weight"] = make(width, width)
            sd[f"{b}self_attn.{name}.bias"] = make(width)
        for name in ("layer_norm1", "layer_norm2"):
            sd[f"{b}{name}.weight"] = make(width)
            sd[f"{b}{name}.bias"] = make(width)
        sd[f"{b}mlp.fc1.weight"] = make(inner, width)
        sd[f"{b}mlp.fc1.bias"] = make(inner)
        sd[f"{b}mlp.fc2.weight"] = make(width, inner)
        sd[f"{b}mlp.fc2.bias"] = make(width)
    if projection:
        sd[prefix + "text_projection.weight"] = make(projection, width)
    return sd


def open_clip_layout(prefix: str, width: int, layers: int, inner: int, projection: int | None,
                     vocab: int = 49408, positions: int = 77, make=None) -> dict:
    """SD2 ViT-H / SDXL bigG keys as open_clip saves them (fused in_proj, text_projection [width, proj])."""
    make = make or (lambda *shape: torch.empty(shape, device="meta"))
    sd = {
        prefix + "token_embedding.weight": make(vocab, width),
        prefix + "positional_embedding": make(positions, width),
        prefix + "ln_final.weight": make(width),
        prefix + "ln_final.bias": make(width),
        prefix + "logit_scale": make(),
    }
    for i in range(layers):
        b = f"{prefix}transformer.resblocks.{i}."
        sd[b + "attn.in_proj_weight"] = make(3 * width, width)
        sd[b + "attn.in_proj_bias"] = make(3 * width)
        sd[b + "attn.out_proj.weight"] = make(width, width)
        sd[b + "attn.out_proj.bias"] = make(width)
        for name in ("ln_1", "ln_2"):
            sd[f"{b}{name}.weight"] = make(width)
            sd[f"{b}{name}.bias"] = make(width)
        sd[b + "mlp.c_fc.weight"] = make(inner, width)
        sd[b + "mlp.c_fc.bias"] = make(inner)
        sd[b + "mlp.c_proj.weight"] = make(width, inner)
        sd[b + "mlp.c_proj.bias"] = make(width)
    if projection:
        sd[prefix + "text_projection"] = make(width, projection)
    return sd


IGNORED_BY_NAME = (".position_ids", ".logit_scale", ".attn_mask")


@pytest.mark.parametrize(
    ("sd", "prefix", "layout", "expected"),
    [
        (hf_layout("cond_stage_model.transformer.", 768, 12, 3072), "cond_stage_model.transformer.", "hf", CLIP_L),
        (hf_layout("conditioner.embedders.0.transformer.", 768, 12, 3072),
         "conditioner.embedders.0.transformer.", "hf", CLIP_L),
        (open_clip_layout("cond_stage_model.model.", 1024, 24, 4096, 1024), "cond_stage_model.model.", "open_clip",
         OPEN_CLIP_H),
        (open_clip_layout("conditioner.embedders.1.model.", 1280, 32, 5120, 1280),
         "conditioner.embedders.1.model.", "open_clip", OPEN_CLIP_BIGG),
        (open_clip_layout("conditioner.embedders.0.model.", 1280, 32, 5120, 1280),
         "conditioner.embedders.0.model.", "open_clip", OPEN_CLIP_BIGG),
    ],
    ids=["sd1-clip-l", "sdxl-clip-l", "sd2-vit-h", "sdxl-bigg", "refiner-bigg"],
)
def test_published_layouts_load_with_zero_missing_and_unexpected(sd, prefix, layout, expected):
    assert text_encoder_config_from_state_dict(sd, prefix, layout) == expected
    loaded = load_text_encoder(sd, prefix, layout, device="meta")
    assert loaded.missing == []
    unexpected = {k for k in sd if k not in loaded.used and not k.endswith(IGNORED_BY_NAME)}
    assert unexpected == set()
    assert loaded.model.config == expected
    params = sum(p.numel() for p in loaded.model.parameters())
    assert params == sum(v.numel() for k, v in sd.items() if not k.endswith(IGNORED_BY_NAME))


def test_early_sd1_files_without_text_model_level():
    # Some early SD1 files have `cond_stage_model.transformer.embeddings.…` (A1111 renames them on load).
    sd = {k.replace("transformer.text_model.", "transformer."): v
          for k, v in hf_layout("cond_stage_model.transformer.", 768, 12, 3072).items()}
    assert text_encoder_config_from_state_dict(sd, "cond_stage_model.transformer.", "hf") == CLIP_L
    loaded = load_text_encoder(sd, "cond_stage_model.transformer.", "hf", device="meta")
    assert loaded.missing == [] and set(sd) - loaded.used == {"cond_stage_model.transformer.embeddings.position_ids"}


def test_published_config_widths():
    assert (CLIP_L.hidden_size, CLIP_L.num_layers, CLIP_L.num_heads, CLIP_L.hidden_act) == (768, 12, 12, "quick_gelu")
    assert (OPEN_CLIP_H.hidden_size, OPEN_CLIP_H.num_layers, OPEN_CLIP_H.num_heads) == (1024, 24, 16)
    assert (OPEN_CLIP_BIGG.hidden_size, OPEN_CLIP_BIGG.num_layers, OPEN_CLIP_BIGG.num_heads) == (1280, 32, 20)
    assert OPEN_CLIP_BIGG.projection_dim == 1280 and OPEN_CLIP_BIGG.hidden_act == "gelu"


def test_config_from_shape_only_objects():
    # Lazy file entries only promise `.shape`.
    sd = hf_layout("p.", 768, 12, 3072, make=lambda *s: SimpleNamespace(shape=torch.Size(s)))
    assert text_encoder_config_from_state_dict(sd, "p.", "hf") == CLIP_L
    sd = open_clip_layout("q.", 1280, 32, 5120, 1280, make=lambda *s: SimpleNamespace(shape=torch.Size(s)))
    assert text_encoder_config_from_state_dict(sd, "q.", "open_clip") == OPEN_CLIP_BIGG


def test_bad_input_errors_teach():
    with pytest.raises(KeyError, match="token_embedding"):
        text_encoder_config_from_state_dict({}, "cond_stage_model.model.", "open_clip")
    with pytest.raises(ValueError, match="layout"):
        text_encoder_config_from_state_dict({}, "", "diffusers")


def test_missing_tensor_is_reported_with_its_file_name():
    sd = open_clip_layout("m.", 128, 2, 256, 64)
    del sd["m.transformer.resblocks.1.attn.in_proj_weight"]
    loaded = load_text_encoder(sd, "m.", "open_clip", device="meta")
    assert loaded.missing == ["m.transformer.resblocks.1.attn.in_proj_weight"] * 3  # q, k and v


# ---- conversion numerics -------------------------------------------------------------------------

WIDTH, LAYERS, INNER, PROJ, HEADS = 128, 2, 256, 96, 2


@pytest.fixture(scope="module")
def open_clip_weights() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    scale = {"ln_1.weight": 1.0, "ln_2.weight": 1.0, "ln_final.weight": 1.0}

    def make(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64) * 0.2

    sd = open_clip_layout("", WIDTH, LAYERS, INNER, PROJ, make=make)
    for key in sd:
        if any(key.endswith(s) for s in scale):
            sd[key] = 1.0 + sd[key]  # layer-norm gains near 1
    return sd


def reference_forward(sd: dict, ids: torch.Tensor, heads: int):
    """open_clip's text tower written out: pre-LN blocks, fused q/k/v, causal mask, exact GELU,
    ln_final, EOS feature (the highest id) @ text_projection."""
    width = sd["token_embedding.weight"].shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
    seq = ids.shape[1]
    mask = torch.full((seq, seq), float("-inf"), dtype=x.dtype).triu(1)
    states = [x]
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], 1e-5)
        qkv = h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]
        q, k, v = (t.reshape(ids.shape[0], seq, heads, -1).transpose(1, 2) for t in qkv.split(width, dim=-1))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(width // heads) + mask, dim=-1) @ v
        att = att.transpose(1, 2).reshape(ids.shape[0], seq, width)
        x = x + att @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        h = F.layer_norm(x, (width,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], 1e-5)
        h = F.gelu(h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"])
        x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
        states.append(x)
    final = F.layer_norm(x, (width,), sd["ln_final.weight"], sd["ln_final.bias"], 1e-5)
    pooled = final[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ sd["text_projection"]
    return states, final, pooled


def test_open_clip_conversion_matches_hand_written_forward(open_clip_weights):
    sd = open_clip_weights
    ids = torch.tensor([
        [BOS, 320, 1125, 539, 320, 2368, EOS] + [0] * 70,
        [BOS] + [2368] * 40 + [EOS] + [0] * 35,
    ])
    loaded = load_text_encoder(sd, "", "open_clip", dtype=torch.float64)
    assert loaded.missing == [] and loaded.used == set(sd) - {"logit_scale"}
    model = loaded.model
    assert model.config.num_heads == HEADS and model.config.hidden_act == "gelu"
    out = model(ids)
    states, final, pooled = reference_forward(sd, ids, HEADS)
    assert len(out.hidden_states) == LAYERS + 1
    for ours, ref in zip(out.hidden_states, states):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.last_hidden_state, final, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.text_embeds, pooled, rtol=1e-9, atol=1e-9)


def test_convert_splits_transposes_and_keeps_renames_lazy(open_clip_weights):
    sd = {"cond_stage_model.model." + k: v for k, v in open_clip_weights.items()}
    converted = convert_open_clip_state_dict(sd, "cond_stage_model.model.")
    fused = sd["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"]
    layer = "text_model.encoder.layers.1.self_attn."
    assert torch.equal(converted[layer + "q_proj.weight"], fused[:WIDTH])
    assert torch.equal(converted[layer + "k_proj.weight"], fused[WIDTH : 2 * WIDTH])
    assert torch.equal(converted[layer + "v_proj.weight"], fused[2 * WIDTH :])
    assert torch.equal(converted["text_projection.weight"], sd["cond_stage_model.model.text_projection"].T)
    token_embedding = converted["text_model.embeddings.token_embedding.weight"]
    assert token_embedding is sd["cond_stage_model.model.token_embedding.weight"]
    assert set(converted) == set(build_text_encoder(
        TextEncoderConfig(WIDTH, LAYERS, HEADS, INNER, projection_dim=PROJ, hidden_act="gelu"), device="meta"
    ).state_dict())
    assert open_clip_consumed_keys(sd, "cond_stage_model.model.") == set(sd) - {"cond_stage_model.model.logit_scale"}


def test_hf_layout_round_trip_and_quick_gelu():
    torch.manual_seed(0)
    config = TextEncoderConfig(hidden_size=64, num_layers=2, num_heads=1, intermediate_size=128)
    assert config.hidden_act == "quick_gelu"
    original = build_text_encoder(config)
    sd = {"cond_stage_model.transformer." + k: v for k, v in original.state_dict().items()}
    derived = text_encoder_config_from_state_dict(sd, "cond_stage_model.transformer.", "hf", hidden_act="quick_gelu")
    assert derived == config
    # A 64-wide encoder would be guessed to be an OpenCLIP (gelu) one; the family names the activation.
    assert text_encoder_config_from_state_dict(sd, "cond_stage_model.transformer.", "hf").hidden_act == "gelu"
    loaded = load_text_encoder(sd, "cond_stage_model.transformer.", "hf", hidden_act="quick_gelu")
    assert loaded.missing == [] and loaded.used == set(sd)
    ids = torch.tensor([[BOS, 320, 1125, EOS] + [EOS] * 73])
    torch.testing.assert_close(loaded.model(ids).last_hidden_state, original(ids).last_hidden_state)
    # the activation really is x·sigmoid(1.702x)
    act = original.text_model.encoder.layers[0].mlp.activation_fn
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(act(x), x * torch.sigmoid(1.702 * x))


def test_build_dtype_and_meta():
    model = build_text_encoder(OPEN_CLIP_BIGG, dtype=torch.float16, device="meta")
    assert model.token_embedding.weight.dtype == torch.float16
    assert model.token_embedding.weight.device.type == "meta"
    assert model.text_projection is not None and tuple(model.text_projection.weight.shape) == (1280, 1280)
