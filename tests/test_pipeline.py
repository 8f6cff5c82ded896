"""Generation end to end on tiny random models with the real key layouts: every mode, reproducibility,
seeds per batch position, request validation before model work."""
from pathlib import Path

import pytest
import torch
from PIL import Image

from modules.engine import CancelToken, Engine
from modules.devices import DevicePlan
from modules.paths import ModelPaths
from modules.types import GenerationRequest
from modules.validation import RequestError
from tests.tiny_models import write_tiny_checkpoint

PLAN = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("palette")
    for family in ("sd1", "sdxl"):
        write_tiny_checkpoint(root / "models" / "Stable-diffusion" / f"tiny-{family}.safetensors", family)
    return Engine(ModelPaths.create(root), plan=PLAN, outputs_root=root)


def _req(**kw):
    base = dict(prompt="a red circle", negative_prompt="blue", steps=3, width=64, height=64, seed=42,
                sampler_name="Euler", cfg_scale=5.0)
    return GenerationRequest(**{**base, **kw})


def _pixels(image):
    return torch.tensor(list(image.getdata()), dtype=torch.float32)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_txt2img_img2img_and_hires_produce_images_with_parseable_infotext(engine, family):
    from modules import infotext

    ckpt = f"tiny-{family}.safetensors"
    res = engine.generate(_req(checkpoint=ckpt, batch_size=2))
    assert len(res.images) == 2 and res.images[0].size == (64, 64)
    params = infotext.parse(res.infotexts[0])
    assert params["Seed"] in (42, "42") and params["Sampler"] == "Euler" and params["Size-1"] in (64, "64")
    assert res.seeds == (42, 43)
    grid = Image.open(res.info["grid_path"])
    assert grid.size == (128, 64) and "txt2img-grids" in res.info["grid_path"]
    for path in res.paths:
        assert Path(path).is_file() and infotext.read_infotext(Image.open(path)) == res.infotexts[res.paths.index(path)]

    init = Image.new("RGB", (80, 48), (200, 30, 30))
    res = engine.generate(_req(checkpoint=ckpt, init_images=(init,), denoising_strength=0.5, width=64, height=64))
    assert res.images[0].size == (64, 64)
    assert "Denoising strength: 0.5" in res.infotexts[0]

    res = engine.generate(_req(checkpoint=ckpt, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2,
                               hr_upscaler="Latent (nearest-exact)", hr_denoising_strength=0.6))
    assert res.images[0].size == (96, 96)
    assert "Hires upscale: 1.5" in res.infotexts[0]


def test_grid_layout_follows_a1111():
    from modules.outputs import grid_rows, make_grid

    assert [grid_rows(n) for n in (1, 2, 3, 4, 5, 6, 9)] == [1, 1, 2, 2, 2, 2, 3]
    tiles = [Image.new("RGB", (8, 4), (i * 40, 0, 0)) for i in range(5)]
    grid = make_grid(tiles)
    assert grid.size == (24, 8) and grid.getpixel((9, 1)) == (40, 0, 0) and grid.getpixel((20, 6)) == (0, 0, 0)


def test_same_seed_is_bit_identical_and_batch_position_equals_seed_alone(engine):
    a = engine.generate(_req(checkpoint="tiny-sd1.safetensors", seed=7, batch_size=3, do_not_save=True))
    b = engine.generate(_req(checkpoint="tiny-sd1.safetensors", seed=7, batch_size=3, do_not_save=True))
    assert all(torch.equal(_pixels(x), _pixels(y)) for x, y in zip(a.images, b.images))
    alone = engine.generate(_req(checkpoint="tiny-sd1.safetensors", seed=9, do_not_save=True))
    assert a.seeds == (7, 8, 9)
    assert torch.allclose(_pixels(a.images[2]), _pixels(alone.images[0]), atol=2)  # same noise, batched maths


def test_ancestral_and_sde_samplers_are_reproducible(engine):
    for sampler in ("Euler a", "DPM++ SDE", "DPM++ 2M Karras"):
        a = engine.generate(_req(checkpoint="tiny-sd1.safetensors", sampler_name=sampler, do_not_save=True))
        b = engine.generate(_req(checkpoint="tiny-sd1.safetensors", sampler_name=sampler, do_not_save=True))
        assert torch.equal(_pixels(a.images[0]), _pixels(b.images[0])), sampler


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 10000}, "steps"),
        ({"width": 7}, "width"),
        ({"width": 100}, "width"),
        ({"sampler_name": "Euler z"}, "sampler_name"),
        ({"cfg_scale": float("nan")}, "cfg_scale"),
        ({"denoising_strength": 1.5}, "denoising_strength"),
        ({"scheduler": "Wobbly"}, "scheduler"),
    ],
)
def test_bad_requests_name_the_field_before_any_model_work(tmp_path, changes, field):
    engine = Engine(ModelPaths.create(tmp_path), plan=PLAN)  # no checkpoint at all: must not get that far
    with pytest.raises(RequestError) as err:
        engine.generate(_req(**changes))
    assert err.value.field == field


def test_interrupt_keeps_the_image_made_so_far(engine):
    cancel = CancelToken()
    seen = []

    def progress(event):
        seen.append(event.step)
        if event.step == 2:
            cancel.interrupt()

    res = engine.generate(_req(checkpoint="tiny-sd1.safetensors", steps=6, n_iter=2, do_not_save=True),
                          progress=progress, cancel=cancel)
    assert res.interrupted and len(res.images) == 1 and seen == [1, 2]


def test_unknown_lora_is_a_named_request_error(engine):
    with pytest.raises(RequestError, match="prompt: unknown LoRA 'foo'; no LoRA files found in"):
        engine.generate(_req(checkpoint="tiny-sd1.safetensors", prompt="a cat <lora:foo:0.8>"))


def test_request_error_passes_through_context_managers_unchanged():
    """A bad field found inside `with model.applied():` must reach the user as the same RequestError
    (a frozen exception turned into FrozenInstanceError there)."""
    import contextlib

    from modules.validation import RequestError

    @contextlib.contextmanager
    def applied():
        yield

    with pytest.raises(RequestError) as err:
        with applied():
            raise RequestError("prompt", "unknown LoRA 'x'")
    assert str(err.value) == "prompt: unknown LoRA 'x'" and err.value.field == "prompt"


@pytest.fixture(scope="module")
def sd1_bundle():
    from modules.checkpoints import build_bundle
    from tests.tiny_models import tiny_state_dict

    return build_bundle(tiny_state_dict("sd1"), Path("tiny-sd1.safetensors"), PLAN)


def _texts_per_call(bundle, request, texts):
    """Which of `texts` the positive conditioning is, at each UNet call of `request`."""
    from modules import pipeline
    from modules.conditioning import EncodeOptions, encode_text
    from modules.config import Settings

    refs = {t: encode_text(bundle.text, t, EncodeOptions()).cross_attn[0] for t in texts}
    seen = []

    def hook(module, args, kwargs):
        context = args[2][0]
        seen.append(next((t for t, ref in refs.items() if torch.allclose(context, ref, atol=1e-5)), "?"))

    handle = bundle.unet.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pipeline.generate(None, bundle, request, settings=Settings(), checkpoint=None, progress=None,
                          cancel=CancelToken())
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("sampler, when, red_calls, calls", [
    ("Euler", "0.5", 11, 11),  # schedule over 20 steps: red until call 10, i.e. the whole 11-call tail
    ("Heun", "0.5", 21, 21),  # over 40 calls: red until call 20; Heun's tail makes 10·2 + 1 = 21 calls
    ("Euler", "0.25", 6, 11),  # int(0.25·20) = 5: calls 0..5 red, then blue
    ("Heun", "0.25", 11, 21),  # int(0.25·40) = 10: calls 0..10 red, then blue
    ("Euler", "7", 8, 11),  # an integer step: calls 0..7 red
])
def test_img2img_prompt_editing_counts_like_a1111(sd1_bundle, sampler, when, red_calls, calls):
    """A1111 builds the prompt schedule over the requested steps (×2 for second-order samplers), not
    over the shorter img2img tail, and its denoiser counts calls from 0 at the tail's first call."""
    image = Image.new("RGB", (64, 64), (120, 60, 200))
    request = GenerationRequest(prompt=f"a [red:blue:{when}] circle", steps=20, width=64, height=64, seed=1,
                                sampler_name=sampler, cfg_scale=5.0, init_images=(image,), denoising_strength=0.5,
                                do_not_save=True)
    seen = _texts_per_call(sd1_bundle, request, ("a red circle", "a blue circle"))
    assert seen == ["a red circle"] * red_calls + ["a blue circle"] * (calls - red_calls)


def test_ddim_prompt_schedule_is_as_long_as_the_requested_steps(sd1_bundle):
    """DDIM at 36 steps visits 38 timesteps (37 calls); A1111 still schedules over 36: int(0.5·36) = 18."""
    request = GenerationRequest(prompt="a [red:blue:0.5] circle", steps=36, width=64, height=64, seed=1,
                                sampler_name="DDIM", cfg_scale=5.0, do_not_save=True)
    seen = _texts_per_call(sd1_bundle, request, ("a red circle", "a blue circle"))
    assert seen == ["a red circle"] * 19 + ["a blue circle"] * 18
