"""Full-size random-weight checkpoints through the real code path (slow: minutes, GBs of memory)."""
from pathlib import Path

import pytest
import torch

from bench.full_size import write_full_size
from modules.engine import Engine
from modules.paths import ModelPaths
from modules.types import GenerationRequest

pytestmark = pytest.mark.slow
CACHE = Path(__file__).resolve().parents[1] / "tmp" / "bench" / "root"


@pytest.fixture(scope="module")
def engine():
    write_full_size(CACHE / "models" / "Stable-diffusion" / "sd15-random.safetensors", "sd15", torch.float16)
    return Engine(ModelPaths.create(CACHE), outputs_root=CACHE)


def test_sd15_512_txt2img_on_cpu(engine):
    res = engine.generate(GenerationRequest(prompt="a fox", negative_prompt="blurry", steps=2, width=512, height=512,
                                            seed=3, sampler_name="DPM++ 2M", scheduler="Karras", do_not_save=True))
    assert res.images[0].size == (512, 512)
    assert "Steps: 2, Sampler: DPM++ 2M, Schedule type: Karras" in res.infotexts[0]
    bundle = engine.current_bundle()
    assert bundle.report.missing == () and bundle.report.unexpected == ()
    assert bundle.detection.unet_config.model_channels == 320


def test_a_full_sd15_lora_costs_a_job_less_than_half_a_sampling_step():
    """bench/lora_apply.py: a kohya SD1.5 LoRA over every transformer module covers 192 UNet modules (16
    transformer blocks x 12, the count kohya's trainer reports); patching them in and restoring them, which
    every job with a LoRA does, stays under half of one 512x512 CFG step (~0.1 measured in fp32 on 2 cores,
    docs/benchmarks.md)."""
    from bench.lora_apply import main

    result = main(["--rounds", "1"])
    assert result["modules"] == 192
    assert result["patch_over_step"] < 0.5, result
