"""Infotext: exact A1111 layout, parsing of real A1111 strings, request round trips, image metadata."""
from __future__ import annotations

import io
import math
import threading

import pytest
from PIL import Image

from modules import infotext
from modules.types import GenerationRequest

# --- real A1111 infotexts (from published images / A1111's own docstring) ---------------------

A1111_DOCSTRING = """girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate
Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing
Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"""

V130_HIRES = """portrait of a woman, highly detailed; sharp focus; hyperrealistic; 8k; dramatic;
Negative prompt: man, male, ugly, tiling, poorly drawn hands, out of frame, extra limbs, blurry, draft, grainy
Steps: 150, Sampler: Euler a, CFG scale: 7, Seed: 1473491050, Face restoration: CodeFormer, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.7, Hires upscale: 1.5, Hires steps: 150, Hires upscaler: Latent, Version: v1.3.0"""

V132_FUSED = """masterpiece, best quality, 1girl
Negative prompt: (worst quality:2), (low quality:2)
Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 8, Seed: 1931785963, Size: 512x832, Model hash: cca17b08da, Model: MAADBD2fp16, Denoising strength: 0.5, Clip skip: 2, Wildcard negative prompt: "paintings, sketches, (worst quality:2)", Hires upscale: 2, Hires steps: 20, Hires upscaler: Latent, Version: v1.3.2"""

V160_DREAMSHAPER = """a castle on a hill, unreal engine, hyper detailed
Negative prompt: lowres, bad anatomy, text, error
Steps: 20, Sampler: Euler a, CFG scale: 10, Seed: 2892782840, Size: 896x512, Model hash: 879db523c3, Model: dreamshaper_8, VAE hash: 63aeecb90f,VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.6, Clip skip: 2, ENSD: 31337, Hires upscale: 2, Hires upscaler: Latent, Version: v1.6.0"""

V194_INPAINT = """product shoot in sand with beach elements, warm weather, studio lighting
Negative prompt: incomplete elements
Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 8, Seed: 1659960289, Size: 985x1266, Model hash: b513c6287d, Model: realism_engine, Denoising strength: 0.91, Masked content: fill, Version: v1.9.4"""

V1101_EMPTY_NEGATIVE = """cat portrait,
Negative prompt: 
Steps: 13, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4, Seed: 2535254266, Face restoration: CodeFormer, Size: 1216x832, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, FP8 weight: Enable for SDXL, Cache FP16 weight for LoRA: True, Version: v1.10.1"""

FORGE_LORA_HASHES = """score_9, glowing fumes, electric flames, neon, (mad-wsps:0.8)
<lora:zy_Realism_Enhancer_v2:0.9>
<lora:Wisps_of_Light_Pony:0.7>
Negative prompt: score_5, score_4, 3d, simple background, (angular face:1.3), pointy chin
Steps: 30, Sampler: DPM++ 3M SDE, Schedule type: Karras, CFG scale: 5, Seed: 2480865251, Size: 1152x896, Model hash: c379d154eb, Model: albedobaseXL_v31Large-mid_140737-vid_1041855, Lora hashes: "zy_Realism_Enhancer_v2: b46384abcc66, Wisps_of_Light_Pony: 95011c7288d0", dynthres_enabled: True, dynthres_mimic_mode: Linear Down, Version: f2.0.1v1.10.1-previous-669-gdfdcbab6"""


def test_parse_a1111_docstring_example():
    d = infotext.parse(A1111_DOCSTRING)
    assert d["Prompt"].startswith("girl with an artist's beret") and d["Prompt"].endswith("detailed, intricate")
    assert d["Negative prompt"].endswith("messy drawing")
    assert (d["Steps"], d["Sampler"], d["CFG scale"], d["Seed"]) == ("20", "Euler a", "7", "965400086")
    assert (d["Size-1"], d["Size-2"], d["Model hash"]) == ("512", "512", "45dee52b")
    # A1111's defaults for keys an old infotext does not have
    assert d["Clip skip"] == "1" and d["RNG"] == "GPU" and d["Schedule type"] == "Automatic"
    assert d["Hires resize-1"] == 0 and d["Hires sampler"] == "Use same sampler"
    assert d["Masked area padding"] == 32 and d["Mask mode"] == "Inpaint masked"


def test_parse_v130_hires_and_backcompat():
    d = infotext.parse(V130_HIRES)
    assert d["Prompt"] == "portrait of a woman, highly detailed; sharp focus; hyperrealistic; 8k; dramatic;"
    assert d["Face restoration"] == "CodeFormer"
    assert (d["Denoising strength"], d["Hires upscale"], d["Hires steps"]) == ("0.7", "1.5", "150")
    assert d["Downcast alphas_cumprod"] is True  # < v1.7.0-225
    assert "Old prompt editing timelines" not in d  # no "[" in the prompt
    r = infotext.request_from_params(d)
    assert r.enable_hr and r.hr_scale == 1.5 and r.hr_second_pass_steps == 150 and r.hr_upscaler == "Latent"
    assert r.hr_denoising_strength == 0.7 and r.steps == 150 and r.checkpoint == "v1-5-pruned-emaonly"


def test_parse_fused_sampler_and_quoted_extension_value():
    d = infotext.parse(V132_FUSED)
    assert d["Sampler"] == "DPM++ 2M" and d["Schedule type"] == "Karras"
    assert d["Wildcard negative prompt"] == "paintings, sketches, (worst quality:2)"
    assert "Old prompt editing timelines" not in d  # v1.3.2, but no "[" in the prompt
    r = infotext.request_from_params(d)
    assert (r.sampler_name, r.scheduler, r.clip_skip, r.width, r.height) == ("DPM++ 2M", "Karras", 2, 512, 832)


def test_parse_missing_space_after_comma_and_vae():
    d = infotext.parse(V160_DREAMSHAPER)
    assert d["VAE hash"] == "63aeecb90f" and d["VAE"] == "vae-ft-mse-840000-ema-pruned.safetensors"
    assert d["ENSD"] == "31337" and d["Clip skip"] == "2"
    r = infotext.request_from_params(d)
    assert r.vae == "vae-ft-mse-840000-ema-pruned.safetensors" and r.cfg_scale == 10.0 and r.seed == 2892782840


def test_parse_inpaint_into_img2img_request():
    d = infotext.parse(V194_INPAINT)
    base = GenerationRequest(init_images=(Image.new("RGB", (8, 8)),), mask=Image.new("L", (8, 8)))
    r = infotext.request_from_params(d, base)
    assert r.denoising_strength == 0.91 and r.inpainting_fill == 0 and not r.enable_hr
    assert (r.sampler_name, r.scheduler) == ("DPM++ 2M", "Karras")
    assert r.inpaint_full_res is False and r.inpainting_mask_invert == 0 and r.inpaint_full_res_padding == 32


def test_parse_empty_negative_and_fp8_keys():
    d = infotext.parse(V1101_EMPTY_NEGATIVE)
    assert d["Prompt"] == "cat portrait," and d["Negative prompt"] == ""
    assert d["FP8 weight"] == "Enable for SDXL" and d["Cache FP16 weight for LoRA"] == "True"
    assert "Downcast alphas_cumprod" not in d


def test_parse_lora_hashes_and_multiline_prompt():
    d = infotext.parse(FORGE_LORA_HASHES)
    assert d["Prompt"].splitlines() == [
        "score_9, glowing fumes, electric flames, neon, (mad-wsps:0.8)",
        "<lora:zy_Realism_Enhancer_v2:0.9>",
        "<lora:Wisps_of_Light_Pony:0.7>",
    ]
    assert infotext.parse_hashes(d["Lora hashes"]) == {
        "zy_Realism_Enhancer_v2": "b46384abcc66", "Wisps_of_Light_Pony": "95011c7288d0"}
    assert d["dynthres_mimic_mode"] == "Linear Down" and d["Sampler"] == "DPM++ 3M SDE"
    assert d["Version"] == "f2.0.1v1.10.1-previous-669-gdfdcbab6"


def test_parse_old_version_with_editing_sets_old_timelines():
    d = infotext.parse("a [cat:dog:0.5]\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 1, Version: v1.5.1")
    assert d["Old prompt editing timelines"] is True and d["Pad conds v0"] is True


def test_parse_old_first_pass_size():
    d = infotext.parse("x\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 1024x1024, First pass size: 0x0")
    assert (d["Size-1"], d["Size-2"], d["Hires resize-1"], d["Hires resize-2"]) == (512, 512, 1024, 1024)


@pytest.mark.parametrize("name,sampler,schedule", [
    ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
    ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
    ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
    ("Euler SGMUniform", "Euler", "SGM Uniform"),
    ("Euler a", "Euler a", None),
    ("DDIM", "DDIM", None),
    ("DPM++ 2M SDE Heun", "DPM++ 2M SDE Heun", None),
])
def test_split_sampler_name(name, sampler, schedule):
    assert infotext.split_sampler_name(name) == (sampler, schedule)


def test_parse_hires_fused_sampler():
    d = infotext.parse("x\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Denoising strength: 0.5, "
                       "Hires upscale: 2, Hires sampler: DPM++ 2M Karras, Hires upscaler: Latent")
    assert d["Hires sampler"] == "DPM++ 2M" and d["Hires schedule type"] == "Karras"
    r = infotext.request_from_params(d)
    assert r.hr_sampler_name == "DPM++ 2M" and r.hr_scheduler == "Karras"


def test_parse_escaped_quotes_and_newlines_in_values():
    text = ('p\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Denoising strength: 0.5, Hires upscale: 2, '
            'Hires prompt: "a \\"quoted\\" word, b:\\nline two", Hires upscaler: Latent')
    d = infotext.parse(text)
    assert d["Hires prompt"] == 'a "quoted" word, b:\nline two'


def test_text_without_params_line_is_all_prompt():
    d = infotext.parse("just a prompt\nsecond line")
    assert d["Prompt"] == "just a prompt\nsecond line" and d["Negative prompt"] == ""


# --- building --------------------------------------------------------------------------------


def test_build_exact_layout():
    r = GenerationRequest(prompt="a cat", negative_prompt="ugly", scheduler="Karras", clip_skip=2)
    text = infotext.build(r, seed=123, subseed=0, model_name="name", model_hash="abcdef1234")
    assert text == ("a cat\nNegative prompt: ugly\n"
                    "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x512, "
                    "Model hash: abcdef1234, Model: name, Clip skip: 2, RNG: CPU, Version: Palette 0.1")


def test_build_omits_empty_negative_and_none_values():
    text = infotext.build({"Steps": 20, "Sampler": "Euler", "Model": None}, "p", "")
    assert text == "p\nSteps: 20, Sampler: Euler"
    assert infotext.build({"Flag": "Flag", "Steps": 4}, "p") == "p\nFlag, Steps: 4"  # A1111: k == v → key only


def test_build_quotes_like_a1111():
    assert infotext.quote("Latent") == "Latent"
    assert infotext.quote("a, b") == '"a, b"'
    assert infotext.quote("a: b") == '"a: b"'
    assert infotext.quote("line\nbreak") == '"line\\nbreak"'
    assert infotext.quote('say "hi"') == '"say \\"hi\\""'
    assert infotext.quote("日本, 語") == '"日本, 語"'  # ensure_ascii=False
    assert infotext.unquote('"a, b"') == "a, b" and infotext.unquote('"broken') == '"broken'


@pytest.mark.parametrize("value,text", [(7.0, "7"), (7.5, "7.5"), (0.1, "0.1"), (2, "2"), (True, "True"),
                                        (1e-05, "1e-05"), (math.inf, "inf"), ("x", "x")])
def test_format_value(value, text):
    assert infotext.format_value(value) == text


def test_params_order_and_conditional_keys():
    r = GenerationRequest(prompt="p", subseed_strength=0.3, seed_resize_from_w=256, seed_resize_from_h=320,
                          enable_hr=True, hr_resize_x=1024, hr_resize_y=768, hr_sampler_name="Euler a")
    p = infotext.params_for(r, seed=5, subseed=6, model_name="m", model_hash="h",
                            extra={"Lora hashes": "x: 1", "ENSD": 31337, "Face restoration": "CodeFormer"})
    assert list(p) == ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Face restoration", "Size",
                       "Model hash", "Model", "Variation seed", "Variation seed strength", "Seed resize from",
                       "Denoising strength", "ENSD", "RNG", "Hires resize", "Hires upscaler", "Lora hashes",
                       "Version"]
    assert p["Variation seed"] == 6 and p["Seed resize from"] == "256x320" and p["Hires resize"] == "1024x768"
    assert "Hires sampler" not in p  # same as the first pass
    assert "Clip skip" not in p and "Hires upscale" not in p


def test_params_for_txt2img_without_hires_has_no_denoising():
    p = infotext.params_for(GenerationRequest(), seed=1)
    assert "Denoising strength" not in p and not any(k.startswith("Hires") for k in p)
    assert infotext.params_for(GenerationRequest(), seed=1, version=None, rng=None).keys() >= {"Steps", "Seed"}
    assert "Version" not in infotext.params_for(GenerationRequest(), seed=1, version=None)


def test_lora_hash_helpers():
    value = infotext.format_hashes({"add:detail": "aaa", "b,c": "bbb"})
    assert value == "adddetail: aaa, bc: bbb"
    assert infotext.parse_hashes(value) == {"adddetail": "aaa", "bc": "bbb"}


# --- round trips -------------------------------------------------------------------------------

IMG = Image.new("RGB", (8, 8), (10, 20, 30))
MASK = Image.new("L", (8, 8), 255)
ROUND_TRIP = [
    GenerationRequest(prompt="a cat", seed=1),
    GenerationRequest(prompt="a (cat:1.2), [dog:fox:0.5]\nsecond line: with colon", negative_prompt="ugly, \"bad\"",
                      seed=4294967295, checkpoint="model, v2"),
    GenerationRequest(prompt="日本語のプロンプト <lora:x:0.5> AND b:0.3", steps=30, sampler_name="DPM++ 2M",
                      scheduler="Karras", cfg_scale=7.5, width=768, height=512, seed=42, checkpoint="sd15"),
    GenerationRequest(prompt="p", cfg_scale=0.1 + 0.2, seed=3, clip_skip=2, checkpoint="sd15"),
    GenerationRequest(prompt="p", seed=7, subseed=99, subseed_strength=0.25, seed_resize_from_w=256,
                      seed_resize_from_h=320, checkpoint="sd15"),
    GenerationRequest(prompt="p", seed=8, enable_hr=True, hr_scale=1.5, hr_upscaler="R-ESRGAN 4x+",
                      hr_second_pass_steps=12, hr_denoising_strength=0.45, hr_sampler_name="Euler",
                      hr_scheduler="Exponential", hr_prompt="detailed, sharp: yes", hr_negative_prompt="blurry",
                      checkpoint="sd15"),
    GenerationRequest(prompt="p", seed=9, enable_hr=True, hr_resize_x=1024, hr_resize_y=768, checkpoint="sd15"),
    GenerationRequest(prompt="p", seed=10, enable_hr=True, hr_resize_x=1024, checkpoint="sd15"),
    GenerationRequest(prompt="p", seed=11, init_images=(IMG,), denoising_strength=0.55, checkpoint="sd15"),
    GenerationRequest(prompt="p", seed=12, init_images=(IMG,), mask=MASK, mask_blur=8, inpainting_fill=0,
                      inpaint_full_res=True, inpaint_full_res_padding=48, inpainting_mask_invert=1,
                      initial_noise_multiplier=0.9, checkpoint="sd15"),
    GenerationRequest(prompt="p", seed=13, init_images=(IMG,), mask=MASK, inpainting_fill=3, checkpoint="sd15"),
    GenerationRequest(prompt="p", seed=17, init_images=(IMG,), mask=MASK, soft_inpainting=True,
                      soft_inpainting_schedule_bias=1.5, soft_inpainting_preservation=0.25, soft_inpainting_contrast=3.0,
                      outpaint_pad=(64, 0, 8, 16), inpainting_fill=2, checkpoint="sd15"),
    GenerationRequest(prompt="p", seed=18, init_images=(IMG,), outpaint_pad=(0, 32, 0, 0), checkpoint="sd15"),
    GenerationRequest(prompt="p", seed=14, eta=0.5, s_churn=0.3, s_tmin=0.1, s_tmax=10.0, s_noise=1.003,
                      checkpoint="sd15", vae="vae-ft-mse.safetensors"),
    GenerationRequest(prompt="p", seed=15, override_settings={"emphasis": "No norm"}, checkpoint="sd15"),
    GenerationRequest(prompt="p BREAK q", negative_prompt="n\nsecond", seed=16, steps=1, cfg_scale=1.0,
                      sampler_name="DPM++ 2M SDE", scheduler="Align Your Steps", checkpoint="sd15"),
]


@pytest.mark.parametrize("request_", ROUND_TRIP, ids=range(len(ROUND_TRIP)))
def test_round_trip(request_):
    text = infotext.build(request_, seed=request_.seed, subseed=request_.subseed, model_name=request_.checkpoint,
                          model_hash="0123456789" if request_.checkpoint else None, vae_name=request_.vae)
    base = GenerationRequest(init_images=request_.init_images, mask=request_.mask)
    back = infotext.request_from_params(infotext.parse(text), base)
    assert back == request_, text
    # params_for output (native types, "WxH" strings) maps back the same way
    params = infotext.params_for(request_, seed=request_.seed, subseed=request_.subseed,
                                 model_name=request_.checkpoint, vae_name=request_.vae)
    params.update(Prompt=request_.prompt, **{"Negative prompt": request_.negative_prompt})
    assert infotext.request_from_params(params, base) == request_


def test_conditional_mask_weight_only_when_the_model_takes_inpainting_conditioning():
    """A1111 writes the key only when `p.is_using_inpainting_conditioning` (a 9-channel model, whose
    weight the pipeline passes in `extra`); the setting alone (a 4-channel model) writes nothing."""
    request = GenerationRequest(prompt="p", seed=1, init_images=(IMG,), mask=MASK,
                                override_settings={"inpainting_mask_weight": 0.5}, checkpoint="sd15")
    four = infotext.build(request, seed=1, model_name="sd15")
    assert "Conditional mask weight" not in four
    nine = infotext.build(request, seed=1, model_name="sd15", extra={"Conditional mask weight": 0.5})
    assert "Denoising strength: 0.75, Conditional mask weight: 0.5, RNG: CPU" in nine  # A1111's position
    back = infotext.request_from_params(infotext.parse(nine), GenerationRequest(init_images=(IMG,), mask=MASK))
    assert back == request


def test_request_from_infotext_keeps_base_fields():
    base = GenerationRequest(batch_size=4, styles=("s",))
    r = infotext.request_from_infotext(A1111_DOCSTRING, base)
    assert r.batch_size == 4 and r.styles == ("s",) and r.checkpoint == "45dee52b"


def test_bad_size_explains_itself():
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        infotext.request_from_params({"Size": "big"})


# --- image files -------------------------------------------------------------------------------

LONG_TEXT = ("(masterpiece:1.2), 日本語, émoji ✨, quote \" and comma, colon: yes\n"
             "Negative prompt: bad\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 8x8")


def test_png_parameters_chunk(tmp_path):
    path = infotext.save_with_infotext(Image.new("RGB", (8, 8)), tmp_path / "a.png", LONG_TEXT)
    with Image.open(path) as im:
        assert im.text["parameters"] == LONG_TEXT
        assert infotext.read_infotext(im) == LONG_TEXT
    latin = tmp_path / "b.png"
    infotext.save_with_infotext(Image.new("RGB", (8, 8)), latin, "plain text")
    assert b"tEXtparameters\x00plain text" in latin.read_bytes()


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".webp"])
def test_exif_user_comment(tmp_path, ext):
    path = infotext.save_with_infotext(Image.new("RGBA", (8, 8)), tmp_path / f"a{ext}", LONG_TEXT)
    with Image.open(path) as im:
        raw = im.getexif().get_ifd(infotext.EXIF_IFD)[infotext.USER_COMMENT]
        assert raw == b"UNICODE\x00" + LONG_TEXT.encode("utf-16-be")
        assert infotext.read_infotext(im) == LONG_TEXT


def test_no_infotext(tmp_path):
    path = infotext.save_with_infotext(Image.new("RGB", (8, 8)), tmp_path / "a.jpg", None)
    with Image.open(path) as im:
        assert infotext.read_infotext(im) is None
    with pytest.raises(ValueError, match="png"):
        infotext.save_with_infotext(Image.new("RGB", (8, 8)), tmp_path / "a.gif", "x")


def test_embed_in_png_keeps_existing_chunks(tmp_path):
    info = infotext.embed_in_png("params", {"extras": "upscaled"})
    Image.new("RGB", (4, 4)).save(tmp_path / "x.png", pnginfo=info)
    with Image.open(tmp_path / "x.png") as im:
        assert im.text == {"extras": "upscaled", "parameters": "params"}


class _HeldWrite(io.BytesIO):
    """A file whose first write says so and then waits: a save held in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight, self.release = threading.Event(), threading.Event()

    def write(self, data):  # noqa: ANN001, ANN201 - io.BytesIO's signature
        if not self.in_flight.is_set():
            self.in_flight.set()
            assert self.release.wait(10)
        return super().write(data)


def test_a_picture_the_gallery_is_encoding_keeps_its_parameters_when_saved():
    """The UI shows each picture as soon as it is decoded: Gradio encodes it as PNG with its own (empty)
    `pnginfo` on its thread while the worker writes the same object to outputs. PIL keeps a save's
    options on the image, and an in-flight save's options win over a new save's, so the saved file lost
    its `parameters` chunk (seen as a flaky first-run test)."""
    from PIL import PngImagePlugin

    shared = Image.new("RGB", (16, 16), (200, 30, 30))
    gallery_file = _HeldWrite()
    gallery = threading.Thread(target=shared.save, args=(gallery_file,),
                               kwargs={"format": "PNG", "pnginfo": PngImagePlugin.PngInfo()})
    gallery.start()
    try:
        assert gallery_file.in_flight.wait(10)
        out = io.BytesIO()
        infotext.write_image(shared, out, format="PNG", pnginfo=infotext.embed_in_png("a red square"))
    finally:
        gallery_file.release.set()
        gallery.join(10)
    out.seek(0)
    with Image.open(out) as im:
        assert im.text.get("parameters") == "a red square"


def test_every_writer_leaves_the_shared_picture_untouched(tmp_path):
    from modules import outputs
    from webui.api.images import encode_png

    picture = Image.new("RGB", (8, 8))
    before = dict(vars(picture))
    infotext.save_with_infotext(picture, tmp_path / "a.png", "x")
    infotext.save_with_infotext(picture, tmp_path / "a.webp", "x")
    outputs.save_image(picture, tmp_path, outputs.NameContext(seed=1), infotext="x", per_date_folder=False)
    outputs.save_image(picture, tmp_path, outputs.NameContext(seed=1), infotext="x", per_date_folder=False,
                       chunks={"extras": "y"})
    encode_png(picture, "x")
    assert vars(picture) == before  # PIL keeps a save's options on the object it saves


@pytest.mark.parametrize("data,text", [
    (b"UNICODE\x00" + "héllo".encode("utf-16-be"), "héllo"),
    (b"UNICODE\x00" + "hello there".encode("utf-16-le"), "hello there"),  # written by other tools
    (b"ASCII\x00\x00\x00hello", "hello"),
    (b"\x00" * 8 + b"hello\x00", "hello"),
    (b"hello", "hello"),
    ("already text", "already text"),
])
def test_decode_user_comment(data, text):
    assert infotext.decode_user_comment(data) == text


def test_sampler_options_and_precision_keys():
    from modules.devices import DevicePlan
    import torch

    r = GenerationRequest(prompt="p", sampler_name="DDIM", eta=0.3, s_noise=1.0)
    p = infotext.params_for(r, seed=1, extra={"Eta DDIM": 0.3, "Sigma noise": 0.95,
                                              infotext.PRECISION_KEY: "unet fp16 / text fp16 / vae bf16 / cuda"})
    assert p["Eta DDIM"] == 0.3 and "Eta" not in p and p["Sigma noise"] == 0.95  # extra wins over the request
    text = infotext.build(p, "p")
    assert "Palette precision: unet fp16 / text fp16 / vae bf16 / cuda" in text and "RNG: CPU" in text
    parsed = infotext.parse(text)
    assert parsed["Palette precision"] == "unet fp16 / text fp16 / vae bf16 / cuda"
    back = infotext.request_from_params(parsed)
    assert back.eta == 0.3 and back.s_noise == 0.95 and back.sampler_name == "DDIM"
    plan = DevicePlan(torch.device("cuda"), torch.float16, torch.float16, torch.bfloat16)
    assert infotext.precision_value(plan) == "unet fp16 / text fp16 / vae bf16 / cuda"
    mixed = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32, torch.bfloat16)
    assert infotext.precision_value(mixed) == "unet fp32+bf16 / text fp32 / vae fp32 / cpu"
    # an A1111 DDIM infotext with its own key
    a1111 = "a cat\nSteps: 20, Sampler: DDIM, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, Eta DDIM: 0.5"
    assert infotext.request_from_infotext(a1111).eta == 0.5
