"""UNet: real checkpoint layouts on the meta device, shape-derived configs, block maths against
hand-written formulas, and tiny-model forwards (dtype, odd sizes, SDXL `y`, ControlNet residuals).

Published numbers checked here (parameter counts as reported by diffusers' `num_parameters()` for the
same networks, and by other public tools): SD1.5 UNet 859,520,964 (686 tensors); SD2.x 865,910,724;
SDXL base 2,567,463,684 (1680 tensors); SDXL refiner 2,259,526,660.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from modules.nn.unet import (
    SD2_UNET,
    SD15_UNET,
    SDXL_REFINER_UNET,
    SDXL_UNET,
    CrossAttention,
    GroupNorm32,
    ResBlock,
    UNetConfig,
    UNetModel,
    published_configs,
    timestep_embedding,
    unet_config_from_state_dict,
)
from tests.fixtures_nn import randomize_, tiny_unet_config

PREFIX = "model.diffusion_model."


def meta_state_dict(config: UNetConfig) -> dict[str, torch.Tensor]:
    return UNetModel(config, device="meta").state_dict()


# ---- (a) real layouts -----------------------------------------------------------------------------------

SD15_SHAPES = {
    "time_embed.0.weight": [1280, 320],
    "time_embed.2.weight": [1280, 1280],
    "input_blocks.0.0.weight": [320, 4, 3, 3],
    "input_blocks.1.0.in_layers.0.weight": [320],
    "input_blocks.1.0.in_layers.2.weight": [320, 320, 3, 3],
    "input_blocks.1.0.emb_layers.1.weight": [320, 1280],
    "input_blocks.1.0.out_layers.0.weight": [320],
    "input_blocks.1.0.out_layers.3.weight": [320, 320, 3, 3],
    "input_blocks.1.1.norm.weight": [320],
    "input_blocks.1.1.proj_in.weight": [320, 320, 1, 1],
    "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": [320, 320],
    "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, 768],
    "input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight": [320, 768],
    "input_blocks.1.1.transformer_blocks.0.attn2.to_out.0.weight": [320, 320],
    "input_blocks.1.1.transformer_blocks.0.attn2.to_out.0.bias": [320],
    "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": [2560, 320],
    "input_blocks.1.1.transformer_blocks.0.ff.net.2.weight": [320, 1280],
    "input_blocks.1.1.transformer_blocks.0.norm3.weight": [320],
    "input_blocks.1.1.proj_out.weight": [320, 320, 1, 1],
    "input_blocks.3.0.op.weight": [320, 320, 3, 3],
    "input_blocks.4.0.skip_connection.weight": [640, 320, 1, 1],
    "input_blocks.7.1.transformer_blocks.0.attn2.to_k.weight": [1280, 768],
    "input_blocks.11.0.out_layers.3.weight": [1280, 1280, 3, 3],
    "middle_block.0.in_layers.2.weight": [1280, 1280, 3, 3],
    "middle_block.1.transformer_blocks.0.attn2.to_k.weight": [1280, 768],
    "middle_block.2.out_layers.3.weight": [1280, 1280, 3, 3],
    "output_blocks.0.0.in_layers.0.weight": [2560],
    "output_blocks.0.0.skip_connection.weight": [1280, 2560, 1, 1],
    "output_blocks.2.1.conv.weight": [1280, 1280, 3, 3],
    "output_blocks.5.0.skip_connection.weight": [1280, 1920, 1, 1],
    "output_blocks.5.2.conv.weight": [1280, 1280, 3, 3],
    "output_blocks.8.0.skip_connection.weight": [640, 960, 1, 1],
    "output_blocks.8.2.conv.weight": [640, 640, 3, 3],
    "output_blocks.9.0.in_layers.0.weight": [960],
    "output_blocks.11.0.skip_connection.weight": [320, 640, 1, 1],
    "output_blocks.11.1.transformer_blocks.0.norm1.bias": [320],
    "out.0.weight": [320],
    "out.2.weight": [4, 320, 3, 3],
}
ABSENT_SD15 = ["input_blocks.12.0.in_layers.0.weight", "input_blocks.10.1.norm.weight", "output_blocks.12.0.in_layers.0.weight",
               "label_emb.0.0.weight", "output_blocks.2.2.conv.weight", "input_blocks.1.1.transformer_blocks.1.norm1.weight"]

SDXL_SHAPES = {
    "label_emb.0.0.weight": [1280, 2816],
    "label_emb.0.2.weight": [1280, 1280],
    "input_blocks.4.1.proj_in.weight": [640, 640],
    "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": [640, 2048],
    "input_blocks.7.1.transformer_blocks.9.attn2.to_v.weight": [1280, 2048],
    "input_blocks.6.0.op.weight": [640, 640, 3, 3],
    "middle_block.1.transformer_blocks.9.ff.net.0.proj.weight": [10240, 1280],
    "output_blocks.2.2.conv.weight": [1280, 1280, 3, 3],
    "output_blocks.5.1.transformer_blocks.1.attn1.to_q.weight": [640, 640],
    "output_blocks.5.2.conv.weight": [640, 640, 3, 3],
    "output_blocks.8.0.skip_connection.weight": [320, 640, 1, 1],
    "out.2.weight": [4, 320, 3, 3],
}
ABSENT_SDXL = ["input_blocks.1.1.norm.weight", "input_blocks.9.0.in_layers.0.weight", "middle_block.1.transformer_blocks.10.norm1.weight",
               "output_blocks.9.0.in_layers.0.weight", "output_blocks.6.1.norm.weight"]


@pytest.mark.parametrize(
    "config, n_tensors, n_params",
    [(SD15_UNET, 686, 859_520_964), (SD2_UNET, 686, 865_910_724), (SDXL_UNET, 1680, 2_567_463_684),
     (SDXL_REFINER_UNET, None, 2_259_526_660)],
    ids=["sd15", "sd2", "sdxl", "sdxl_refiner"],
)
def test_published_config_sizes(config: UNetConfig, n_tensors: int | None, n_params: int) -> None:
    model = UNetModel(config, device="meta")
    assert sum(p.numel() for p in model.parameters()) == n_params
    if n_tensors is not None:
        assert len(model.state_dict()) == n_tensors


def test_sd15_keys_and_shapes() -> None:
    sd = meta_state_dict(SD15_UNET)
    for key, shape in SD15_SHAPES.items():
        assert list(sd[key].shape) == shape, key
    for key in ABSENT_SD15:
        assert key not in sd
    assert {k.split(".")[0] for k in sd} == {"time_embed", "input_blocks", "middle_block", "output_blocks", "out"}


def test_sd2_differs_from_sd1_only_in_context_and_projections() -> None:
    sd1, sd2 = meta_state_dict(SD15_UNET), meta_state_dict(SD2_UNET)
    assert sd1.keys() == sd2.keys()
    assert list(sd2["input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape) == [320, 1024]
    assert list(sd2["input_blocks.1.1.proj_in.weight"].shape) == [320, 320]
    changed = {k for k in sd1 if sd1[k].shape != sd2[k].shape}
    assert changed and all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight", "proj_in.weight", "proj_out.weight"))
                           for k in changed)


def test_sdxl_keys_and_shapes() -> None:
    sd = meta_state_dict(SDXL_UNET)
    for key, shape in SDXL_SHAPES.items():
        assert list(sd[key].shape) == shape, key
    for key in ABSENT_SDXL:
        assert key not in sd
    refiner = meta_state_dict(SDXL_REFINER_UNET)
    assert list(refiner["label_emb.0.0.weight"].shape) == [1536, 2560]
    assert list(refiner["input_blocks.4.1.transformer_blocks.3.attn2.to_k.weight"].shape) == [768, 1280]
    assert "input_blocks.10.1.norm.weight" not in refiner and "middle_block.1.transformer_blocks.3.norm1.weight" in refiner


class LazySlice:
    """Stands in for a safetensors slice: a shape through `get_shape()`, no `.shape`."""

    def __init__(self, shape: torch.Size) -> None:
        self._shape = list(shape)

    def get_shape(self) -> list[int]:
        return self._shape


@pytest.mark.parametrize("name", list(published_configs()))
def test_config_round_trips_from_shapes(name: str) -> None:
    config = published_configs()[name]
    sd = {PREFIX + k: v for k, v in meta_state_dict(config).items()}
    sd["cond_stage_model.unrelated.weight"] = torch.empty(3, device="meta")
    derived = unet_config_from_state_dict(sd)
    assert derived.num_heads == -1 and derived.num_head_channels == -1  # not visible in shapes
    assert replace(derived, num_heads=config.num_heads, num_head_channels=config.num_head_channels) == config
    lazy = {k: LazySlice(v.shape) for k, v in sd.items()}
    assert unet_config_from_state_dict(lazy) == derived


def test_config_from_shapes_handles_pruned_and_middle_less_layouts() -> None:
    pruned = tiny_unet_config("sd1", num_res_blocks=(2, 2), transformer_depth=(1, 0, 2, 1),
                              transformer_depth_middle=-1, transformer_depth_output=(0, 1, 0, 1, 1, 0))
    derived = unet_config_from_state_dict(UNetModel(pruned, device="meta").state_dict(), prefix="", num_heads=8)
    assert derived == pruned
    no_middle = tiny_unet_config("sdxl", transformer_depth_middle=-2)
    sd = UNetModel(no_middle, device="meta").state_dict()
    assert not any(k.startswith("middle_block") for k in sd)
    assert unet_config_from_state_dict(sd, prefix="", num_head_channels=64) == no_middle


def test_bad_layouts_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="head layout"):
        UNetModel(replace(tiny_unet_config("sd1"), num_heads=-1))
    with pytest.raises(ValueError, match="transformer_depth_output"):
        tiny_unet_config("sd1", transformer_depth_output=(1, 1))
    sd = UNetModel(tiny_unet_config("sd1"), device="meta").state_dict()
    sd["input_blocks.2.0.weird.weight"] = sd.pop("input_blocks.2.0.op.weight")
    with pytest.raises(ValueError, match="input_blocks.2"):
        unet_config_from_state_dict(sd, prefix="")


# ---- (b) block maths against reference formulas ---------------------------------------------------------

def test_timestep_embedding_formula() -> None:
    t = torch.tensor([0.0, 1.0, 999.0, 437.25])
    dim = 10
    emb = timestep_embedding(t, dim)
    expected = torch.zeros(4, dim)
    for b in range(4):
        for i in range(dim // 2):
            freq = math.exp(-math.log(10000) * i / (dim // 2))
            expected[b, i] = math.cos(t[b].item() * freq)
            expected[b, i + dim // 2] = math.sin(t[b].item() * freq)
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-5)
    assert timestep_embedding(t, 7).shape == (4, 7) and (timestep_embedding(t, 7)[:, -1] == 0).all()


def test_cross_attention_matches_softmax_formula() -> None:
    torch.manual_seed(0)
    heads, dim_head, dim, ctx_dim = 2, 8, 16, 12
    attn = CrossAttention(dim, ctx_dim, heads, dim_head)
    x, ctx = torch.randn(2, 5, dim), torch.randn(2, 7, ctx_dim)
    q, k, v = x @ attn.to_q.weight.T, ctx @ attn.to_k.weight.T, ctx @ attn.to_v.weight.T
    outs = []
    for h in range(heads):
        sl = slice(h * dim_head, (h + 1) * dim_head)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dim_head), dim=-1)
        outs.append(weights @ v[..., sl])
    expected = torch.cat(outs, dim=-1) @ attn.to_out[0].weight.T + attn.to_out[0].bias
    torch.testing.assert_close(attn(x, ctx), expected, rtol=1e-5, atol=1e-5)
    self_attn = CrossAttention(dim, None, heads, dim_head)  # attn1: no context means attend to itself
    torch.testing.assert_close(self_attn(x), self_attn(x, x))


def test_resblock_matches_formula() -> None:
    torch.manual_seed(0)
    block = randomize_(ResBlock(32, 24, 64), seed=1, std=0.1)
    x, emb = torch.randn(2, 32, 6, 5), torch.randn(2, 24)

    def gn_silu(t: torch.Tensor, norm: torch.nn.GroupNorm) -> torch.Tensor:
        return F.silu(F.group_norm(t, 32, norm.weight, norm.bias, 1e-5))

    h = F.conv2d(gn_silu(x, block.in_layers[0]), block.in_layers[2].weight, block.in_layers[2].bias, padding=1)
    h = h + (F.silu(emb) @ block.emb_layers[1].weight.T + block.emb_layers[1].bias)[:, :, None, None]
    h = F.conv2d(gn_silu(h, block.out_layers[0]), block.out_layers[3].weight, block.out_layers[3].bias, padding=1)
    skip = F.conv2d(x, block.skip_connection.weight, block.skip_connection.bias)
    torch.testing.assert_close(block(x, emb), skip + h, rtol=1e-5, atol=1e-5)


def test_groupnorm32_computes_in_float32_for_bf16() -> None:
    torch.manual_seed(0)
    norm = GroupNorm32(32, 64).to(torch.bfloat16)
    x = (torch.randn(1, 64, 8, 8) * 3 + 100).to(torch.bfloat16)  # large mean: bf16 statistics would fail
    expected = F.group_norm(x.float(), 32, norm.weight.float(), norm.bias.float()).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# ---- (c) tiny forwards ------------------------------------------------------------------------------

def tiny_model(family: str, dtype: torch.dtype = torch.float32) -> UNetModel:
    return randomize_(UNetModel(tiny_unet_config(family)), seed=3).to(dtype).eval()


def tiny_inputs(family: str, h: int = 8, w: int = 8) -> dict[str, torch.Tensor]:
    cfg = tiny_unet_config(family)
    gen = torch.Generator().manual_seed(0)
    inputs = {"x": torch.randn(2, 4, h, w, generator=gen), "timesteps": torch.tensor([999.0, 12.5]),
              "context": torch.randn(2, 5, cfg.context_dim, generator=gen)}
    if cfg.adm_in_channels:
        inputs["y"] = torch.randn(2, cfg.adm_in_channels, generator=gen)
    return inputs


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_tiny_forward_shape_and_bf16(family: str) -> None:
    model, inputs = tiny_model(family), tiny_inputs(family)
    with torch.inference_mode():
        out = model(**inputs)
        assert out.shape == (2, 4, 8, 8) and out.dtype == torch.float32 and torch.isfinite(out).all()
        out_bf16 = tiny_model(family, torch.bfloat16)(**inputs)
    assert out_bf16.dtype == torch.float32  # returned in the input's dtype
    rel = (out_bf16 - out).norm() / out.norm()
    assert rel < 0.05, rel


def test_sdxl_needs_y_and_y_matters() -> None:
    model, inputs = tiny_model("sdxl"), tiny_inputs("sdxl")
    with torch.inference_mode():
        base = model(**inputs)
        other = model(**{**inputs, "y": inputs["y"] + 1})
        with pytest.raises(ValueError, match="ADM"):
            model(**{k: v for k, v in inputs.items() if k != "y"})
    assert not torch.allclose(base, other)


def test_odd_latent_sizes_and_scalar_timestep() -> None:
    model, inputs = tiny_model("sd1"), tiny_inputs("sd1", h=9, w=7)
    with torch.inference_mode():
        out = model(inputs["x"], torch.tensor(500.0), inputs["context"])
    assert out.shape == (2, 4, 9, 7)


def test_batch_items_are_independent() -> None:
    model, inputs = tiny_model("sd1"), tiny_inputs("sd1")
    with torch.inference_mode():
        full = model(**inputs)
        first = model(inputs["x"][:1], inputs["timesteps"][:1], inputs["context"][:1])
    torch.testing.assert_close(full[:1], first, rtol=1e-4, atol=1e-5)


# ---- (e) control residuals ---------------------------------------------------------------------------

def test_control_residuals_change_the_output() -> None:
    model, inputs = tiny_model("sd1"), tiny_inputs("sd1")
    with torch.inference_mode():
        skips, h = [], inputs["x"]
        emb = model.time_embed(timestep_embedding(inputs["timesteps"], 32))
        for block in model.input_blocks:
            h = block(h, emb, inputs["context"])
            skips.append(h)
        base = model(**inputs)
        nothing = {"input": [None] * len(skips), "middle": [None], "output": [None] * len(skips)}
        torch.testing.assert_close(model(**inputs, control=nothing), base)
        outputs = {}
        for kind in ("input", "middle", "output"):
            residuals = [torch.ones_like(s) * 0.5 for s in (skips if kind != "middle" else skips[-1:])]
            outputs[kind] = model(**inputs, control={kind: residuals})
            assert outputs[kind].shape == base.shape
            assert not torch.allclose(outputs[kind], base), kind
        # a residual on the last skip only (the one the first output block reads) is enough to matter
        only_last = [None] * (len(skips) - 1) + [torch.ones_like(skips[-1])]
        assert not torch.allclose(model(**inputs, control={"output": only_last}), base)
    assert not torch.allclose(outputs["input"], outputs["output"])
