"""Inpainting / outpainting end to end on tiny random models (a 4-channel and a 9-channel SD1).

What a user would notice: pixels outside the mask (beyond the blur's reach) come back unchanged, the
masked area is redrawn, outpainting returns the larger canvas with the original in place, bad masks
give a clear error naming `mask`; and the 9-channel UNet is handed [noisy latent, mask, masked-image
latent] in channels 0–3, 4, 5–8.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules.devices import DevicePlan
from modules.engine import Engine
from modules.paths import ModelPaths
from modules.types import GenerationRequest
from modules.validation import RequestError
from tests.tiny_models import write_tiny_checkpoint

PLAN = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)
MODELS = {"4ch": "tiny-sd1.safetensors", "9ch": "tiny-sd1-inpainting.safetensors"}
BLUR = 4
REACH = int(2.5 * BLUR + 0.5)  # half the Gaussian kernel (2·int(2.5·r+0.5)+1 wide): where the blur stops


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("palette-inpaint")
    folder = root / "models" / "Stable-diffusion"
    write_tiny_checkpoint(folder / MODELS["4ch"], "sd1")
    write_tiny_checkpoint(folder / MODELS["9ch"], "sd1", in_channels=9, seed=3)
    return Engine(ModelPaths.create(root), plan=PLAN, outputs_root=root)


def picture(width: int = 64, height: int = 64) -> Image.Image:
    """A smooth colourful image, so 'unchanged' is a real check."""
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) * 127 // (width + height)], -1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def square_mask(box=(16, 16, 40, 40), size=(64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def far_from(box, size, reach):
    """Boolean [H, W]: pixels more than `reach` away (per axis) from the box."""
    x1, y1, x2, y2 = box
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    return (xx < x1 - reach) | (xx >= x2 + reach) | (yy < y1 - reach) | (yy >= y2 + reach)


def _req(**kw) -> GenerationRequest:
    base = dict(prompt="a red circle", negative_prompt="blue", steps=2, width=64, height=64, seed=5,
                sampler_name="Euler", cfg_scale=5.0, denoising_strength=0.9, mask_blur=BLUR, do_not_save=True)
    return GenerationRequest(**{**base, **kw})


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("model", ["4ch", "9ch"])
@pytest.mark.parametrize("fill", [0, 1, 2, 3], ids=["fill", "original", "latent-noise", "latent-nothing"])
@pytest.mark.parametrize("only_masked", [False, True], ids=["whole", "only-masked"])
def test_outside_unchanged_inside_redrawn(engine, model, fill, only_masked):
    image, box = picture(), (16, 16, 40, 40)
    res = engine.generate(_req(checkpoint=MODELS[model], init_images=(image,), mask=square_mask(box),
                               inpainting_fill=fill, inpaint_full_res=only_masked, inpaint_full_res_padding=8))
    out = res.images[0]
    assert out.size == image.size
    outside = far_from(box, image.size, REACH)
    assert np.array_equal(arr(out)[outside], arr(image)[outside])
    inner = ~far_from((box[0] + REACH, box[1] + REACH, box[2] - REACH, box[3] - REACH), image.size, 0)
    assert np.abs(arr(out)[inner] - arr(image)[inner]).mean() > 8
    text = res.infotexts[0]
    assert "Mask blur: 4" in text
    assert ("Inpaint area: Only masked" in text and "Masked area padding: 8" in text) == only_masked
    content = ("fill", None, "latent noise", "latent nothing")[fill]
    assert (f"Masked content: {content}" in text) if content else "Masked content" not in text
    assert ("Conditional mask weight: 1" in text) == (model == "9ch")


def test_latent_mask_holds_the_unmasked_latent_at_every_step(engine):
    from modules.pipeline import pil_to_tensor

    image, box = picture(), (16, 16, 40, 40)
    bundle = engine.select_checkpoint(MODELS["4ch"])
    init = bundle.vae.encode(pil_to_tensor([image]))[0]
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[2:5, 2:5] = False  # the mask at latent size, blur 0
    latents = []
    engine.generate(_req(checkpoint=MODELS["4ch"], init_images=(image,), mask=square_mask(box), mask_blur=0, steps=4,
                         sampler_name="DPM++ 2M"), progress=lambda event: event.latent is not None and latents.append(event.latent[0].clone()))
    assert len(latents) >= 3
    for latent in latents:
        assert torch.allclose(latent[:, keep], init[:, keep], atol=1e-5)
        assert not torch.allclose(latent[:, ~keep], init[:, ~keep], atol=1e-2)


def test_mask_mode_not_masked_keeps_the_painted_area(engine):
    image, box = picture(), (8, 8, 56, 56)
    res = engine.generate(_req(checkpoint=MODELS["4ch"], init_images=(image,), mask=square_mask(box),
                               inpainting_mask_invert=1))
    out, kept = arr(res.images[0]), ~far_from((box[0] + REACH, box[1] + REACH, box[2] - REACH, box[3] - REACH),
                                              image.size, 0)
    assert np.array_equal(out[kept], arr(image)[kept])
    assert np.abs(out[:4] - arr(image)[:4]).mean() > 8  # the border (unpainted) is redrawn
    assert "Mask mode: Inpaint not masked" in res.infotexts[0]


def test_soft_inpainting_keeps_the_outside_and_writes_its_keys(engine):
    image, box = picture(), (16, 16, 40, 40)
    res = engine.generate(_req(checkpoint=MODELS["4ch"], init_images=(image,), mask=square_mask(box),
                               soft_inpainting=True, steps=3))
    out = arr(res.images[0])
    outside = far_from(box, image.size, REACH)
    assert np.array_equal(out[outside], arr(image)[outside])
    assert np.abs(out[24:32, 24:32] - arr(image)[24:32, 24:32]).mean() > 8
    assert "Soft inpainting enabled: True" in res.infotexts[0]


def _capture_unet_inputs(engine, name):
    bundle = engine.select_checkpoint(name)
    seen = []
    handle = bundle.unet.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    return bundle, seen, handle


def test_nine_channel_unet_gets_noisy_latent_mask_and_masked_image_latent(engine):
    from modules.pipeline import pil_to_tensor, plan_pass
    from modules.sampling.denoiser import DiscreteSchedule
    from modules.sampling.noise import ImageRNG

    image, box = picture(), (16, 16, 40, 40)  # on the 8-pixel grid: latent rows/cols 2..4
    bundle, seen, handle = _capture_unet_inputs(engine, MODELS["9ch"])
    try:
        engine.generate(_req(checkpoint=MODELS["9ch"], init_images=(image,), mask=square_mask(box), mask_blur=0,
                             denoising_strength=0.6, steps=3))
    finally:
        handle.remove()
    x_in = seen[0]
    assert x_in.shape == (2, 9, 8, 8)  # cond and uncond rows in one batch
    # channels 0–3: (init latent + noise·σ0)·c_in, recomputed here from the seed
    sigma = plan_pass(DiscreteSchedule.sd_default(family="sd1"), "Euler", "Automatic", 3, 0.6).sigmas[0]
    init = bundle.vae.encode(pil_to_tensor([image]))
    noisy = (init + ImageRNG((4, 8, 8), [5]).first() * sigma) / (sigma**2 + 1) ** 0.5
    assert torch.allclose(x_in[0, :4], noisy[0], atol=1e-4) and torch.allclose(x_in[1, :4], noisy[0], atol=1e-4)
    # channel 4: the mask at latent size
    expected_mask = torch.zeros(8, 8)
    expected_mask[2:5, 2:5] = 1
    assert torch.equal(x_in[0, 4], expected_mask) and torch.equal(x_in[1, 4], expected_mask)
    # channels 5–8: the latent of the picture with the masked part grey (0 in [-1, 1])
    grey = pil_to_tensor([image])
    grey[:, :, 16:40, 16:40] = 0.5
    masked_latent = bundle.vae.encode(grey)[0]
    assert torch.allclose(x_in[0, 5:], masked_latent, atol=1e-4)
    assert not torch.allclose(masked_latent, init[0], atol=1e-2)  # the mask really changed the picture


def test_conditional_mask_weight_setting_blends_the_masked_picture(engine):
    from modules.pipeline import pil_to_tensor

    image = picture()
    bundle, seen, handle = _capture_unet_inputs(engine, MODELS["9ch"])
    try:
        res = engine.generate(_req(checkpoint=MODELS["9ch"], init_images=(image,), mask=square_mask(), mask_blur=0,
                                   steps=1, override_settings={"inpainting_mask_weight": 0.0}))
    finally:
        handle.remove()
    # weight 0: the conditioning picture is the unmasked original
    assert torch.allclose(seen[0][0, 5:], bundle.vae.encode(pil_to_tensor([image]))[0], atol=1e-4)
    assert "Conditional mask weight: 0" in res.infotexts[0]


def test_nine_channel_txt2img_and_four_channel_inputs(engine):
    bundle, seen, handle = _capture_unet_inputs(engine, MODELS["9ch"])
    try:
        res = engine.generate(_req(checkpoint=MODELS["9ch"], steps=1))
    finally:
        handle.remove()
    assert res.images[0].size == (64, 64) and seen[0].shape[1] == 9
    assert torch.equal(seen[0][:, 4], torch.ones_like(seen[0][:, 4]))  # txt2img: everything is "masked"
    # A1111 sets is_using_inpainting_conditioning in txt2img too, so the key is written (weight unused)
    assert "Conditional mask weight: 1," in res.infotexts[0]
    _, seen4, handle = _capture_unet_inputs(engine, MODELS["4ch"])
    try:
        engine.generate(_req(checkpoint=MODELS["4ch"], init_images=(picture(),), mask=square_mask(), steps=1))
    finally:
        handle.remove()
    assert seen4[0].shape[1] == 4


@pytest.mark.parametrize("only_masked", [False, True], ids=["whole", "only-masked"])
@pytest.mark.parametrize("model", ["4ch", "9ch"])
def test_outpaint_pad_returns_the_larger_canvas_with_the_original_in_place(engine, model, only_masked):
    image = picture(64, 64)
    res = engine.generate(_req(checkpoint=MODELS[model], init_images=(image,), outpaint_pad=(0, 32, 8, 0),
                               width=96, height=72, inpaint_full_res=only_masked, inpainting_fill=2))
    out = arr(res.images[0])
    assert res.images[0].size == (96, 72)
    # the original sits at (0, 8); unchanged beyond the blur's reach from the new area
    assert np.array_equal(out[8 + REACH:, :64 - REACH], arr(image)[REACH:, :64 - REACH])
    stretched = np.repeat(arr(image)[:, -1:], 32 - REACH, axis=1)
    assert np.abs(out[8:, 64 + REACH:] - stretched).mean() > 8  # the new area is drawn, not just stretched
    assert "Outpaint padding: 0 32 8 0" in res.infotexts[0]


def test_resize_and_fill_outpaints_the_added_bands(engine):
    image = picture(64, 32)
    res = engine.generate(_req(checkpoint=MODELS["4ch"], init_images=(image,), resize_mode=2, inpainting_fill=2,
                               mask=Image.new("L", image.size, 0)))
    out = arr(res.images[0])
    assert res.images[0].size == (64, 64)
    # the picture is pasted at rows 16..47; rows more than REACH from the bands are the original's
    assert np.array_equal(out[16 + REACH:48 - REACH], arr(image)[REACH:32 - REACH])
    stretched = np.repeat(arr(image)[:1], 16, axis=0)
    assert np.abs(out[:16 - REACH] - stretched[:16 - REACH]).mean() > 8  # the band is redrawn


def test_all_white_mask_redraws_everything(engine):
    image = picture()
    for only_masked in (False, True):
        res = engine.generate(_req(checkpoint=MODELS["4ch"], init_images=(image,), mask=Image.new("L", (64, 64), 255),
                                   inpaint_full_res=only_masked))
        assert res.images[0].size == (64, 64)
        assert np.abs(arr(res.images[0]) - arr(image)).mean() > 8


def test_mask_of_the_same_shape_is_resized(engine):
    image = picture(64, 64)
    res = engine.generate(_req(checkpoint=MODELS["4ch"], init_images=(image,), mask=square_mask((8, 8, 20, 20), (32, 32))))
    outside = far_from((16, 16, 40, 40), (64, 64), REACH)
    assert np.array_equal(arr(res.images[0])[outside], arr(image)[outside])


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"mask": Image.new("L", (64, 64), 0)}, "mask", "empty"),
        ({"mask": Image.new("L", (64, 64), 255), "inpainting_mask_invert": 1}, "mask", "Inpaint not masked"),
        ({"mask": Image.new("L", (80, 48), 255)}, "mask", "80×48 but the image is 64×64"),
        ({"mask": "not an image"}, "mask", "must be an image"),
        ({"mask_blur": -1}, "mask_blur", "between"),
        ({"inpainting_fill": 4}, "inpainting_fill", "between"),
        ({"outpaint_pad": (0, -8, 0, 0)}, "outpaint_pad", "right"),
        ({"init_images": (picture(), picture(32, 32))}, "init_images", "one size"),
    ],
)
def test_bad_masks_are_clear_errors(tmp_path, changes, field, words):
    engine = Engine(ModelPaths.create(tmp_path), plan=PLAN)  # no model: refused before loading one
    request = _req(init_images=(picture(),), mask=square_mask()).replace(**changes)
    with pytest.raises(RequestError) as err:
        engine.generate(request)
    assert err.value.field == field and words in err.value.message


def test_mask_without_init_image_is_refused(tmp_path):
    engine = Engine(ModelPaths.create(tmp_path), plan=PLAN)
    with pytest.raises(RequestError, match="needs an init image"):
        engine.generate(_req(mask=square_mask()))


def test_batches_counts_and_several_init_images_keep_each_picture_outside_the_mask(engine):
    first, second = picture(), picture().transpose(Image.FLIP_LEFT_RIGHT)
    box = (16, 16, 40, 40)
    res = engine.generate(_req(checkpoint=MODELS["9ch"], init_images=(first, second), mask=square_mask(box),
                               batch_size=3, n_iter=2, inpaint_full_res=True))
    assert len(res.images) == 6 and res.seeds == (5, 6, 7, 8, 9, 10)
    outside = far_from(box, (64, 64), REACH)
    for index, out in enumerate(res.images):
        source = (first, second)[index % 3 % 2]  # batch positions cycle through the init images
        assert np.array_equal(arr(out)[outside], arr(source)[outside]), index
    with pytest.raises(RequestError, match="AND prompts"):
        engine.generate(_req(checkpoint=MODELS["9ch"], init_images=(first, second), mask=square_mask(box),
                             prompt="a cat AND a dog"))


@pytest.mark.parametrize("masked", [False, True], ids=["txt2img", "inpaint"])
def test_four_channel_model_never_writes_conditional_mask_weight(engine, masked):
    """A1111 writes it only for a model that takes inpainting conditioning, whatever the setting says."""
    extra = {"init_images": (picture(),), "mask": square_mask()} if masked else {}
    res = engine.generate(_req(checkpoint=MODELS["4ch"], steps=1, override_settings={"inpainting_mask_weight": 0.5},
                               **extra))
    assert "Conditional mask weight" not in res.infotexts[0]


def test_nine_channel_model_runs_img2img_and_hires_fix(engine):
    res = engine.generate(_req(checkpoint=MODELS["9ch"], init_images=(picture(),), denoising_strength=0.5))
    assert res.images[0].size == (64, 64) and "Conditional mask weight: 1" in res.infotexts[0]
    res = engine.generate(_req(checkpoint=MODELS["9ch"], enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1,
                               hr_upscaler="Latent"))
    assert res.images[0].size == (96, 96)


def test_interrupted_inpaint_still_keeps_the_outside(engine):
    from modules.engine import CancelToken

    cancel = CancelToken()
    image, box = picture(), (16, 16, 40, 40)

    def progress(event):
        cancel.interrupt()

    res = engine.generate(_req(checkpoint=MODELS["4ch"], init_images=(image,), mask=square_mask(box), steps=6),
                          progress=progress, cancel=cancel)
    assert res.interrupted and len(res.images) == 1
    outside = far_from(box, image.size, REACH)
    assert np.array_equal(arr(res.images[0])[outside], arr(image)[outside])
