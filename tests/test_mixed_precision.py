"""The CPU's mixed plan: an fp32 UNet whose transformer blocks compute their matmuls in bf16.

What a user would notice: which plan a machine gets (and how to turn it off), that the weights really
are stored that way after loading a real key layout, that LoRAs still patch them, and that pictures stay
what fp32 draws (the quality check the speed-up is conditional on; docs/benchmarks.md has the speed).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modules.checkpoints import load_checkpoint
from modules.devices import DevicePlan, cpu_has_native_bf16, plan_devices
from modules.engine import Engine
from modules.paths import ModelPaths
from modules.types import GenerationRequest
from tests.tiny_models import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "Stable-diffusion" / "palette-demo.safetensors"
FP32 = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)
MIXED = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32, transformer_dtype=torch.bfloat16)


@pytest.fixture
def narrow_models_mixed(monkeypatch):
    """Let the tiny test models (and the 32-channel demo) take the mixed plan, which Palette keeps for
    models of SD's width, so the bf16 path is exercised here on the real key layout."""
    from modules import checkpoints

    monkeypatch.setattr(checkpoints, "MIXED_MIN_CHANNELS", 0)


@pytest.mark.parametrize("flags,native", [
    ("flags\t\t: fpu sse avx512f avx512bw avx512_bf16 avx512_vnni\n", True),
    ("flags\t\t: fpu sse amx_bf16 amx_tile\n", True),
    ("flags\t\t: fpu sse avx512f avx512bw avx512_vnni\n", False),  # bf16 only emulated: slower than fp32
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\n" + flags)
    assert cpu_has_native_bf16(cpuinfo) is native
    assert cpu_has_native_bf16(tmp_path / "missing") is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU plan")
def test_the_cpu_plan_is_mixed_only_where_bf16_is_native_and_fp32_turns_it_off():
    auto = plan_devices()
    assert auto.unet_dtype == torch.float32
    assert auto.transformer_dtype == (torch.bfloat16 if cpu_has_native_bf16() else None)
    for forced in (plan_devices(precision="fp32"), plan_devices(no_half=True)):
        assert forced.transformer_dtype is None and forced.unet_dtype == torch.float32
    whole = plan_devices(precision="bf16")
    assert whole.unet_dtype == torch.bfloat16 and whole.transformer_dtype is None
    if auto.transformer_dtype is not None:
        assert "transformer blocks bfloat16" in auto.description


def test_a_real_key_layout_loads_with_bf16_matmuls_in_the_transformer_blocks_only(tmp_path, narrow_models_mixed):
    path = write_tiny_checkpoint(tmp_path / "tiny.safetensors", "sd1")
    unet = load_checkpoint(path, MIXED).unet.model
    dtypes = {name: p.dtype for name, p in unet.state_dict().items()}
    bf16 = {name for name, dtype in dtypes.items() if dtype == torch.bfloat16}
    # published SD1 key names: attention projections and feed-forward of every transformer block
    assert "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" in bf16
    assert "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in bf16
    assert "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight" in bf16
    assert "input_blocks.1.1.transformer_blocks.0.ff.net.2.bias" in bf16
    assert all(".transformer_blocks." in name and (".attn" in name or ".ff." in name) for name in bf16)
    # norms, convolutions, the time embedding and the 1x1 projections around the blocks stay fp32
    for name in ("input_blocks.1.1.transformer_blocks.0.norm1.weight", "input_blocks.1.1.proj_in.weight",
                 "input_blocks.1.0.in_layers.2.weight", "time_embed.0.weight", "out.2.weight"):
        assert dtypes[name] == torch.float32, name


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_full_size_models_take_the_mixed_plan(family):
    """The published SD1.5 / SDXL layouts (on the meta device: shapes only) get bf16 transformer matmuls."""
    from modules.checkpoints import build_bundle
    from tests.test_checkpoints import full_size_state_dict

    meta = DevicePlan(torch.device("meta"), torch.float32, torch.float32, torch.float32, transformer_dtype=torch.bfloat16)
    bundle = build_bundle(full_size_state_dict(family), Path(f"{family}.safetensors"), meta)
    dtypes = {name: p.dtype for name, p in bundle.unet.model.state_dict().items()}
    assert dtypes["input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert dtypes["input_blocks.4.1.transformer_blocks.0.norm1.weight"] == torch.float32
    assert bundle.plan.transformer_dtype == torch.bfloat16


def test_narrow_models_stay_fp32_and_the_infotext_says_what_ran(tmp_path):
    """Below SD's width the casts cost more than bf16 saves (the demo model ran slower), so such a model
    loads all fp32 even under the mixed plan, and its pictures say so."""
    from modules import infotext

    bundle = load_checkpoint(write_tiny_checkpoint(tmp_path / "tiny.safetensors", "sd1"), MIXED)
    assert {p.dtype for p in bundle.unet.model.parameters()} == {torch.float32}
    assert bundle.plan.transformer_dtype is None
    assert infotext.precision_value(bundle.plan) == "unet fp32 / text fp32 / vae fp32 / cpu"


def test_unet_output_stays_within_bf16_rounding_of_fp32(tmp_path, narrow_models_mixed):
    path = write_tiny_checkpoint(tmp_path / "tiny.safetensors", "sd1", dtype=torch.float32)
    exact, mixed = load_checkpoint(path, FP32).unet.model, load_checkpoint(path, MIXED).unet.model
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=gen)
    context = torch.randn(2, 77, exact.config.context_dim, generator=gen)
    t = torch.tensor([900.0, 100.0])
    with torch.inference_mode():
        want, got = exact(x, t, context), mixed(x, t, context)
    assert got.dtype == torch.float32
    rel = ((got - want).norm() / want.norm()).item()
    assert 0 < rel < 1e-2, f"relative difference {rel:.2e}"  # 0 would mean the bf16 path never ran


def _pictures(plan: DevicePlan, root: Path, checkpoint: str, prompts: list[str], **kw) -> list[np.ndarray]:
    engine = Engine(ModelPaths.create(ROOT, ckpt_dir=root), plan=plan, outputs_root=root / "out")
    return [np.asarray(image, dtype=np.float32) / 255
            for prompt in prompts
            for image in engine.generate(GenerationRequest(prompt=prompt, checkpoint=checkpoint, do_not_save=True,
                                                           **kw)).images]


def test_loras_patch_the_bf16_weights_and_take_them_off_again(tmp_path, narrow_models_mixed):
    from tests import test_lora as lora_tests  # the kohya key layout and helpers of the LoRA tests

    bundle = load_checkpoint(write_tiny_checkpoint(tmp_path / "tiny.safetensors", "sd1"), MIXED)
    stem = lora_tests.KOHYA[lora_tests.TO_Q]
    tensors = {f"{stem}.lora_down.weight": torch.randn(4, 32) * 0.1, f"{stem}.lora_up.weight": torch.randn(32, 4) * 0.1}
    before = lora_tests.weight(bundle, lora_tests.TO_Q)
    assert before.dtype == torch.bfloat16
    applied = lora_tests.apply(bundle, lora_tests.write(tmp_path, "l.safetensors", tensors), unet=0.8)
    got = lora_tests.patched_weights(applied, lora_tests.TO_Q)[lora_tests.TO_Q]
    delta = 0.8 * tensors[f"{stem}.lora_up.weight"] @ tensors[f"{stem}.lora_down.weight"]
    # patched in fp32, stored in the weight's own dtype (one bf16 rounding, not one per step)
    assert got.dtype == torch.bfloat16 and torch.equal(got, (before.float() + delta).to(torch.bfloat16))
    assert torch.equal(lora_tests.weight(bundle, lora_tests.TO_Q), before)


@pytest.mark.skipif(not DEMO.is_file(), reason="the demo model is not in models/Stable-diffusion")
def test_demo_pictures_look_the_same_in_the_mixed_plan(tmp_path, narrow_models_mixed):
    """The quality check: a trained model's pictures drawn both ways, same seeds. bf16 rounding may move
    an edge pixel, never the colours or the layout a user asked for."""
    sys.path.insert(0, str(ROOT / "tools"))
    import demo_data

    prompts = ["a red circle on a blue background, top left", "a green square on a white background, center"]
    kw = dict(steps=20, width=256, height=256, seed=3, batch_size=2, cfg_scale=4.0)
    exact = _pictures(FP32, DEMO.parent, DEMO.name, prompts, **kw)
    mixed = _pictures(MIXED, DEMO.parent, DEMO.name, prompts, **kw)
    for a, b in zip(exact, mixed):
        assert np.abs(a - b).mean() < 0.005, f"mean pixel difference {np.abs(a - b).mean():.4f}"
        ma, mb = demo_data.measure(a * 255), demo_data.measure(b * 255)
        assert (ma.shape_color, ma.background, ma.position()) == (mb.shape_color, mb.background, mb.position())
