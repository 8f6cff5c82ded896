"""Loading checkpoints: every family detected from shapes, zero missing / unexpected keys, clear errors."""
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from modules.checkpoints import build_bundle, load_checkpoint
from modules.detection import UnknownModelError, detect, guess_sd2_prediction
from modules.devices import DevicePlan
from modules.nn.unet import SD2_UNET, SD15_UNET, SDXL_REFINER_UNET, SDXL_UNET, UNetModel
from modules.nn.vae import SD_VAE, AutoencoderKL
from modules.weights_io import WeightFileError
from tests.test_clip import hf_layout, open_clip_layout
from tests.tiny_models import tiny_state_dict, write_tiny_checkpoint

CPU_FP32 = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)


def _meta_state(module_cls, config, prefix):
    with torch.device("meta"):
        module = module_cls(config)
    return {prefix + k: v for k, v in module.state_dict().items()}


def full_size_state_dict(family: str, in_channels: int = 4) -> dict:
    """Full published shapes and key names, on the meta device (no memory)."""
    unet_cfg = {"sd1": SD15_UNET, "sd2": SD2_UNET, "sdxl": SDXL_UNET, "refiner": SDXL_REFINER_UNET}[family]
    sd = _meta_state(UNetModel, replace(unet_cfg, in_channels=in_channels), "model.diffusion_model.")
    sd |= _meta_state(AutoencoderKL, SD_VAE, "first_stage_model.")
    if family == "sd1":
        sd |= hf_layout("cond_stage_model.transformer.", 768, 12, 3072)
    elif family == "sd2":
        sd |= open_clip_layout("cond_stage_model.model.", 1024, 24, 4096, 1024)
    elif family == "sdxl":
        sd |= hf_layout("conditioner.embedders.0.transformer.", 768, 12, 3072)
        sd |= open_clip_layout("conditioner.embedders.1.model.", 1280, 32, 5120, 1280)
    else:
        sd |= open_clip_layout("conditioner.embedders.0.model.", 1280, 32, 5120, 1280)
    for name in ("betas", "alphas_cumprod", "posterior_variance", "model_ema.decay"):
        sd[name] = torch.empty(1000, device="meta")
    return sd


FULL_CASES = [
    ("sd1", 4, "SD1", ""),
    ("sd1", 9, "SD1", "inpaint"),
    ("sd1", 8, "SD1", "instruct-pix2pix"),
    ("sd2", 4, "SD2", ""),
    ("sd2", 9, "SD2", "inpaint"),
    ("sdxl", 4, "SDXL", ""),
    ("sdxl", 9, "SDXL", "inpaint"),
    ("refiner", 4, "SDXL Refiner", ""),
]


@pytest.mark.parametrize(("family", "in_channels", "name", "variant"), FULL_CASES)
def test_full_size_layouts_detect_and_load_with_no_missing_or_unexpected_keys(family, in_channels, name, variant):
    sd = full_size_state_dict(family, in_channels)
    meta_plan = DevicePlan(torch.device("meta"), torch.float16, torch.float16, torch.float16)
    bundle = build_bundle(sd, Path(f"{family}.safetensors"), meta_plan)
    assert (bundle.detection.family.name, bundle.detection.variant) == (name, variant)
    assert bundle.report.missing == () and bundle.report.unexpected == ()
    assert set(bundle.report.ignored) == {"betas", "alphas_cumprod", "posterior_variance", "model_ema.decay"} | {
        k for k in sd if k.endswith(("position_ids", "logit_scale"))
    }


def test_full_size_sd15_config_is_derived_from_shapes():
    det = detect(full_size_state_dict("sd1"), Path("x.safetensors"))
    assert det.unet_config == SD15_UNET
    assert det.family.vae_scaling == 0.18215 and det.family.default_resolution == 512
    det = detect(full_size_state_dict("sdxl"), Path("x.safetensors"))
    assert det.unet_config == SDXL_UNET and det.family.vae_scaling == 0.13025


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_tiny_files_load_and_run(tmp_path, family):
    path = write_tiny_checkpoint(tmp_path / f"{family}.safetensors", family)
    bundle = load_checkpoint(path, CPU_FP32)
    assert bundle.report.missing == () and bundle.report.unexpected == ()
    cfg = bundle.detection.unet_config
    x = torch.randn(1, 4, 8, 8)
    cond = bundle.text.encode([("a red circle", 1.0)])
    y = None
    if cfg.adm_in_channels:
        y = torch.zeros(1, cfg.adm_in_channels)
    out = bundle.unet.model(x, torch.tensor([500.0]), cond.cross_attn, y=y)
    assert out.shape == x.shape and torch.isfinite(out).all()
    images = bundle.vae.decode(torch.randn(1, 4, 8, 8))
    assert images.shape == (1, 3, 64, 64) and 0 <= images.min() and images.max() <= 1


def test_same_dtype_weights_stay_memory_mapped(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m.safetensors", "sd1", dtype=torch.float32)
    bundle = load_checkpoint(path, CPU_FP32)
    w = bundle.unet.model.input_blocks[0][0].weight
    assert w.untyped_storage().nbytes() < 1_000_000 or not w.untyped_storage().resizable()


def test_ckpt_pickle_of_plain_tensors_loads(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "m.ckpt", "sd1")
    assert load_checkpoint(path, CPU_FP32).detection.family.name == "SD1"


def test_v_prediction_sources(tmp_path):
    sd = tiny_state_dict("sd2")
    assert detect(sd, tmp_path / "a.safetensors").prediction == "eps"
    assert detect(tiny_state_dict("sd2", v_pred=True), tmp_path / "a.safetensors").prediction_source == "v_pred key"
    (tmp_path / "b.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    det = detect(sd, tmp_path / "b.safetensors")
    assert (det.prediction, det.prediction_source) == ("v", "yaml")
    det = detect(sd, tmp_path / "b.safetensors", prediction_override="eps")
    assert (det.prediction, det.prediction_source) == ("eps", "setting")
    key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    gen = torch.Generator().manual_seed(0)
    assert guess_sd2_prediction({key: torch.randn(320, generator=gen) * 0.5}) == "v"
    assert guess_sd2_prediction({key: torch.randn(320, generator=gen) * 0.02}) == "eps"
    assert guess_sd2_prediction({}) == "eps"


def test_sdxl_file_with_sd1_override_is_refused():
    with pytest.raises(UnknownModelError, match=r"xl\.safetensors: family override SD1 does not fit .*looks like SDXL"):
        detect(full_size_state_dict("sdxl"), Path("xl.safetensors"), family_override="SD1")


def test_unknown_file_names_what_was_checked(tmp_path):
    sd = {"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 4)}
    with pytest.raises(UnknownModelError, match=r"l\.safetensors: not a Stable Diffusion checkpoint.*looks like a LoRA"):
        detect(sd, tmp_path / "l.safetensors")
    sd = tiny_state_dict("sd1")
    del sd["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    with pytest.raises(UnknownModelError, match="unknown model family.*checked SD1"):
        detect(sd, tmp_path / "odd.safetensors")


def test_missing_weights_are_an_error_naming_them(tmp_path):
    sd = tiny_state_dict("sd1")
    del sd["model.diffusion_model.input_blocks.1.0.emb_layers.1.bias"]
    with pytest.raises(WeightFileError, match=r"m\.safetensors: incomplete SD1 checkpoint.*emb_layers\.1\.bias"):
        build_bundle(sd, tmp_path / "m.safetensors", CPU_FP32)


def test_unexpected_keys_are_reported(tmp_path):
    sd = tiny_state_dict("sd1")
    sd["model.diffusion_model.extra_thing.weight"] = torch.zeros(3)
    bundle = build_bundle(sd, tmp_path / "m.safetensors", CPU_FP32)
    assert bundle.report.unexpected == ("model.diffusion_model.extra_thing.weight",)


def test_ema_only_file_is_read_through_its_ema_names():
    from modules.checkpoints import ema_only_view

    sd = full_size_state_dict("sd1")
    ema = {}
    for key, value in sd.items():
        if key.startswith("model.diffusion_model."):
            ema["model_ema." + key[len("model."):].replace(".", "")] = value
        else:
            ema[key] = value
    ema["model_ema.num_updates"] = torch.empty((), device="meta")
    meta_plan = DevicePlan(torch.device("meta"), torch.float16, torch.float16, torch.float16)
    bundle = build_bundle(ema_only_view(ema), Path("ema.ckpt"), meta_plan)
    assert bundle.detection.unet_config == SD15_UNET
    assert bundle.report.missing == () and bundle.report.unexpected == ()
