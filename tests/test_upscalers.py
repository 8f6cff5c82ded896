"""Model upscalers: detection and scale from real key layouts, output sizes, tiled = untiled where the
receptive field fits in the tile margin, fp32 fallback on NaN, refusal of files that are no upscaler,
A1111's names and upscale rules, and hr_upscaler validation.

Tolerance for tiled vs untiled: 1e-5 on [0, 1] pixels (float32 convolutions over a different input size
may sum in another order; anything structural — a seam, a wrong weight — is orders of magnitude larger).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from modules.paths import ModelPaths
from modules.tiling import plan_tiles, run_tiled, spans
from modules.types import GenerationRequest
from modules.upscalers import UpscalerError, UpscalerRegistry, scale_from_name, to_tensor
from modules.validation import RequestError, validate_request
from tests import upscaler_models as um

TOL = 1e-5


def registry(root: Path, dtype: torch.dtype = torch.float32) -> UpscalerRegistry:
    return UpscalerRegistry(ModelPaths.create(root), device=torch.device("cpu"), dtype=dtype)


def put(root: Path, folder: str, name: str, sd: dict[str, torch.Tensor]) -> Path:
    path = root / "models" / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


def noise_image(width: int, height: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


# (folder, file, builder, architecture, scale, receptive-field radius in input pixels or None)
# RF: ESRGAN nb=1 has conv_first + 15 RDB convs + trunk conv at input resolution (17) plus four convs
# after ×2 upsamplings (< 2 input px) → 19 (the x2 unshuffle variant works at half resolution: 2·17+1
# → 36). Compact: 4 convs → 4. SwinIR window 4, two blocks (plain + shifted window) plus 4 convs: 16.
# Two ESRGAN files skip the (slowest) tiling check: same network as their neighbours, other key layout.
CASES = [
    ("ESRGAN", "4x-old.pth", lambda: um.esrgan_old(scale=4), "ESRGAN", 4, 19),
    ("ESRGAN", "2x_old.safetensors", lambda: um.esrgan_old(scale=2), "ESRGAN", 2, None),
    ("RealESRGAN", "RealESRGAN_x4plus.pth", lambda: um.esrgan_new(), "ESRGAN", 4, None),
    ("RealESRGAN", "RealESRGAN_x2plus.safetensors", lambda: um.esrgan_new(unshuffle=2), "ESRGAN", 2, 36),
    ("RealESRGAN", "realesr-general-x4v3.pth", lambda: um.compact(scale=4), "RealESRGAN Compact", 4, 4),
    ("SwinIR", "swinir_x2.safetensors", lambda: um.swinir(scale=2), "SwinIR", 2, 16),
    ("HAT", "HAT_tiny_x2.safetensors", lambda: um.hat(scale=2), "HAT", 2, None),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("upscalers")
    for folder, name, build, *_ in CASES:
        put(root, folder, name, build())
    return root, registry(root)


def name_of(reg: UpscalerRegistry, file: str) -> str:
    return next(i.name for i in reg.list() if i.path is not None and i.path.name == file)


@pytest.mark.parametrize("case", CASES, ids=[c[1] for c in CASES])
def test_detects_architecture_and_scale_and_upscales_to_size(models, case):
    folder, file, _, arch, scale, _ = case
    root, reg = models
    loaded = reg.load(name_of(reg, file))
    assert (loaded.architecture, loaded.scale) == (arch, scale)
    out = reg.run_model(loaded, noise_image(20, 16), tile=0)
    assert out.shape == (1, 3, 16 * scale, 20 * scale)
    assert torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    # A1111's rule: scale 2 with a 4x model runs it once, then Lanczos down to the target (multiple of 8)
    picture = Image.new("RGB", (36, 20), (200, 30, 90))
    assert reg.upscale(picture, name_of(reg, file), 2).size == (72, 40)
    assert reg.upscale(picture, name_of(reg, file), 2.5).size == (88, 48)


@pytest.mark.parametrize("case", [c for c in CASES if c[5] is not None], ids=[c[1] for c in CASES if c[5] is not None])
def test_tiled_equals_untiled_where_the_receptive_field_fits(models, case):
    """Overlap 4·RF → margin ≥ RF: every blended pixel comes from tiles that saw its whole receptive field."""
    folder, file, _, arch, scale, rf = case
    _, reg = models
    loaded = reg.load(name_of(reg, file))
    overlap = 4 * rf
    tile = 2 * overlap
    image = noise_image(tile + overlap + 8, tile + 8, seed=3)  # three tiles across, two down
    whole = reg.run_model(loaded, image, tile=0)
    tiles = []
    tiled = reg.run_model(loaded, image, tile=tile, overlap=overlap, on_tile=lambda i, n: tiles.append(n))
    assert tiles and tiles[-1] > 1, "the image must really be split into tiles"
    assert (tiled - whole).abs().max().item() < TOL


def test_hat_tiles_are_close_but_not_exact(models):
    """HAT's channel-attention blocks pool over the whole input, so no margin makes tiles exact; the
    feathered blend still keeps tiled output close to untiled and free of hard seams."""
    _, reg = models
    loaded = reg.load(name_of(reg, "HAT_tiny_x2.safetensors"))
    image = noise_image(64, 48, seed=5)
    whole = reg.run_model(loaded, image, tile=0)
    tiled = reg.run_model(loaded, image, tile=32, overlap=16)
    assert tiled.shape == whole.shape
    diff = (tiled - whole).abs()
    assert diff.mean().item() < 1e-3 and diff.max().item() < 0.01  # measured: 3e-5 mean, 9e-4 max


def test_blending_is_exact_for_a_pointwise_network():
    """Nearest ×3 upsampling has no context at all, so any tiling must reproduce it bit for bit, and the
    normalised weights must sum to one everywhere (a wrong weight would darken or brighten a band)."""
    image = noise_image(97, 61, seed=1)
    up = lambda t: torch.nn.functional.interpolate(t, scale_factor=3, mode="nearest")  # noqa: E731
    for tile, overlap, align in ((16, 8, 1), (20, 12, 4), (33, 5, 8), (8, 4, 1)):
        assert torch.allclose(run_tiled(up, image, 3, tile=tile, overlap=overlap, align=align), up(image), atol=1e-6)


@pytest.mark.parametrize("size,tile,overlap,align", [(100, 32, 8, 1), (97, 32, 16, 8), (64, 64, 8, 1), (500, 48, 24, 4), (33, 16, 31, 1)])
def test_tile_spans_cover_align_and_overlap(size, tile, overlap, align):
    parts = spans(size, tile, overlap, align)
    assert parts[0][0] == 0 and parts[-1][1] == size
    effective = min(overlap, tile // 2)
    for (a0, a1), (b0, b1) in zip(parts, parts[1:]):
        assert b0 % align == 0 and b0 > a0
        assert a1 - b0 >= effective  # neighbours overlap at least as asked
        assert a1 - a0 == tile
    assert size - parts[-1][0] >= min(tile, size)
    assert plan_tiles(size, size, tile, overlap, align).count == len(parts) ** 2


def test_half_precision_nans_fall_back_to_fp32(tmp_path):
    """Weights that overflow fp16 (activations > 65504) give NaNs in half precision; the registry must
    notice, switch the model to fp32 and return the fp32 result."""
    put(tmp_path, "RealESRGAN", "huge.safetensors", um.compact(scale=2, gain=3000.0))
    half = registry(tmp_path, torch.float16)
    model = half.load("huge")
    assert model.dtype == torch.float16
    image = noise_image(16, 16)
    out = half.run_model(model, image, tile=0)
    assert model.dtype == torch.float32 and torch.isfinite(out).all()
    reference = registry(tmp_path).run_model(registry(tmp_path).load("huge"), image, tile=0)
    assert torch.allclose(out, reference, atol=1e-6)


def test_architectures_without_half_support_stay_in_fp32(models):
    root, _ = models
    reg = registry(root, torch.float16)
    assert reg.load(name_of(reg, "swinir_x2.safetensors")).dtype == torch.float32  # spandrel: no fp16 for SwinIR
    assert reg.load(name_of(reg, "4x-old.pth")).dtype == torch.float16


@pytest.mark.parametrize("keys,what", [
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3)}, "Stable Diffusion checkpoint"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 8)}, "LoRA"),
    ({"encoder.down.0.block.0.conv1.weight": (8, 8, 3, 3), "decoder.up.0.block.0.conv1.weight": (8, 8, 3, 3)}, "VAE"),
    ({"clip_l": (2, 768), "clip_g": (2, 1280)}, "embedding"),
])
def test_files_that_are_no_upscaler_are_refused_naming_the_file(tmp_path, keys, what):
    put(tmp_path, "ESRGAN", "dropped-here.safetensors", {k: torch.zeros(s) for k, s in keys.items()})
    with pytest.raises(UpscalerError, match=rf"dropped-here\.safetensors: not an upscaler; .*{what}"):
        registry(tmp_path).load("dropped-here")


def test_unknown_architecture_and_unsafe_pickle_are_refused(tmp_path):
    put(tmp_path, "ESRGAN", "mystery.safetensors", {"foo.weight": torch.zeros(3, 3)})
    with pytest.raises(UpscalerError, match=r"mystery\.safetensors: not an upscaler architecture"):
        registry(tmp_path).load("mystery")
    path = tmp_path / "models" / "ESRGAN" / "evil.pth"
    torch.save({"model.0.weight": torch.zeros(1), "payload": Path("x")}, path)  # a non-tensor global
    with pytest.raises(UpscalerError, match=r"evil\.pth: refused"):
        registry(tmp_path).load("evil")
    with pytest.raises(UpscalerError, match=r"unknown upscaler 'nope'; available: None, Lanczos"):
        registry(tmp_path).find("nope")


def test_names_as_a1111_shows_them(models):
    root, reg = models
    names = reg.names()
    assert names[:4] == ["None", "Lanczos", "Nearest", "Bicubic"]
    assert {"R-ESRGAN 4x+", "R-ESRGAN 2x+", "R-ESRGAN General 4xV3", "4x-old", "2x_old"} <= set(names)
    info = reg.find("R-ESRGAN 4x+")
    assert info.kind == "model" and info.folder == "RealESRGAN" and info.scale == 4
    assert reg.find("RealESRGAN_x4plus.pth").name == "R-ESRGAN 4x+"  # the file name works too
    assert [scale_from_name(n) for n in ("4x-UltraSharp", "RealESRGAN_x2plus", "DAT x3", "2xNomos", "foo")] == [4, 2, 3, 2, None]


def test_pil_upscalers_and_alpha(tmp_path):
    reg = registry(tmp_path)
    image = Image.new("RGBA", (30, 18), (10, 20, 30, 128))
    out = reg.upscale(image, "Nearest", 2)
    assert out.size == (56, 32) and out.mode == "RGBA" and out.getpixel((5, 5)) == (10, 20, 30, 128)
    assert reg.resize(Image.new("RGB", (10, 10)), "Lanczos", 24, 16).size == (24, 16)


def test_hr_upscaler_validation_accepts_engine_names_and_names_the_field(models):
    _, reg = models
    names = ["Latent", *reg.names()]
    request = GenerationRequest(enable_hr=True, hr_upscaler="R-ESRGAN 4x+")
    validate_request(request, upscalers=names)
    with pytest.raises(RequestError) as err:
        validate_request(request.replace(hr_upscaler="4x-NotThere"), upscalers=names)
    assert err.value.field == "hr_upscaler" and "4x-NotThere" in err.value.message
    with pytest.raises(RequestError):  # without the engine's list only the built-in names pass
        validate_request(request)


def test_hires_resize_uses_the_model(models):
    """A1111's resize_image with an upscaler: model pass, then Lanczos to the exact size."""
    _, reg = models
    picture = Image.effect_noise((24, 16), 60).convert("RGB")
    out = reg.resize(picture, "R-ESRGAN 4x+", 48, 40)
    assert out.size == (48, 40)
    model = reg.load("R-ESRGAN 4x+")
    direct = reg.run_model(model, to_tensor(picture), tile=0)  # 96x64, then Lanczos to 48x40
    assert direct.shape[-2:] == (64, 96)


# ---- hires fix and SD upscale on the real engine (tiny SD1 checkpoint + tiny Real-ESRGAN) -------------

@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from modules.devices import DevicePlan
    from modules.engine import Engine
    from tests.tiny_models import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("upscale-engine")
    write_tiny_checkpoint(root / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1")
    put(root, "RealESRGAN", "RealESRGAN_x4plus.safetensors", um.esrgan_new(seed=4))
    plan = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)
    return Engine(ModelPaths.create(root), plan=plan, outputs_root=root)


def test_hires_fix_with_a_model_upscaler(engine):
    request = GenerationRequest(prompt="a red circle", steps=2, width=64, height=64, seed=1, sampler_name="Euler",
                                enable_hr=True, hr_scale=2, hr_upscaler="R-ESRGAN 4x+", hr_second_pass_steps=1,
                                hr_denoising_strength=0.5, do_not_save=True)
    result = engine.generate(request)
    assert result.images[0].size == (128, 128)
    assert "Hires upscaler: R-ESRGAN 4x+" in result.infotexts[0]
    with pytest.raises(RequestError) as err:
        engine.generate(request.replace(hr_upscaler="4x-Missing"))
    assert err.value.field == "hr_upscaler"


def test_sd_upscale_tiles_positions_and_blend():
    from modules.sd_upscale import combine, positions

    assert positions(192, 64, 16) == [0, 42, 85, 128]  # A1111 split_grid: ceil((192-16)/48) = 4, evenly
    assert positions(64, 64, 16) == [0]
    # identical tiles cut from one picture must paste back to that picture (ramps blend equal pixels)
    picture = Image.effect_noise((150, 100), 80).convert("RGB")
    xs, ys = positions(150, 64, 16), positions(100, 64, 16)
    tiles = [[picture.crop((x, y, x + 64, y + 64)) for x in xs] for y in ys]
    assert list(combine(picture.size, xs, ys, tiles, 16).getdata()) == list(picture.getdata())
    # different tiles: inside an overlap the result fades from the left tile to the right one
    left, right = Image.new("RGB", (64, 64), (0, 0, 0)), Image.new("RGB", (64, 64), (200, 200, 200))
    out = combine((112, 64), [0, 48], [0], [[left, right]], 16)
    row = [out.getpixel((x, 10))[0] for x in range(112)]
    assert row[:48] == [0] * 48 and row[64:] == [200] * 48
    assert row[48:64] == sorted(row[48:64]) and 0 <= row[48] < 20 and 180 < row[63] <= 200


def test_sd_upscale_runs_img2img_per_tile(engine):
    from modules import sd_upscale

    init = Image.effect_noise((48, 40), 60).convert("RGB")
    request = GenerationRequest(prompt="a red circle", steps=2, width=64, height=64, seed=5, sampler_name="Euler",
                                init_images=(init,), denoising_strength=0.3)
    result = sd_upscale.run(engine, request, sd_upscale.SDUpscaleOptions("R-ESRGAN 4x+", scale=2, overlap=16))
    assert result.images[0].size == (96, 80) and result.info["tiles"] == 4
    assert result.infotexts[0].endswith("SD upscale overlap: 16, SD upscale upscaler: R-ESRGAN 4x+")
    assert result.paths and Path(result.paths[0]).is_file()
    with pytest.raises(RequestError, match="smaller than one tile"):
        sd_upscale.run(engine, request, sd_upscale.SDUpscaleOptions("Lanczos", scale=1, overlap=16))
