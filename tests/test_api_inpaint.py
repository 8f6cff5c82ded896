"""/sdapi/v1/img2img with A1111's inpainting fields, on a real server with tiny 4- and 9-channel SD1 models."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.test_api import PLAN, decode, field_of, png_b64, serving
from tests.test_pipeline_inpaint import REACH, far_from, picture, square_mask

SMALL = {"steps": 2, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from modules.engine import Engine
    from modules.paths import ModelPaths
    from tests.tiny_models import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("api-inpaint")
    write_tiny_checkpoint(root / "models" / "Stable-diffusion" / "plain.safetensors", "sd1", seed=1)
    write_tiny_checkpoint(root / "models" / "Stable-diffusion" / "inpainting.safetensors", "sd1", in_channels=9, seed=2)
    engine = Engine(ModelPaths.create(root), plan=PLAN, outputs_root=root, settings_path=root / "config.json")
    with serving(engine, root) as served:
        yield served


@pytest.mark.parametrize("model", ["plain", "inpainting"])
def test_img2img_inpaint_fields_reach_the_engine(server, model):
    image, box = picture(), (16, 16, 40, 40)
    body = {"prompt": "red", "init_images": [png_b64(image)], "mask": png_b64(square_mask(box)), "mask_blur": 4,
            "inpainting_fill": 2, "inpaint_full_res": False, "inpaint_full_res_padding": 8, "denoising_strength": 0.9,
            "override_settings": {"sd_model_checkpoint": f"{model}.safetensors"}, **SMALL}
    r = server.client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    out = np.asarray(decode(r.json()["images"][0]).convert("RGB"), dtype=np.int16)
    outside = far_from(box, image.size, REACH)
    assert np.array_equal(out[outside], np.asarray(image, dtype=np.int16)[outside])
    info = json.loads(r.json()["info"])
    text = info["infotexts"][0]
    assert "Mask blur: 4" in text and "Masked content: latent noise" in text and "Inpaint area" not in text
    assert info["is_using_inpainting_conditioning"] is (model == "inpainting")
    assert r.json()["parameters"]["mask"] is None  # not echoed without include_init_images, as A1111


def test_outpaint_and_soft_inpainting_through_the_api(server):
    image = picture()
    body = {"prompt": "red", "init_images": [png_b64(image)], "outpaint_pad": [0, 32, 0, 0], "width": 96,
            "inpaint_full_res": False, "alwayson_scripts": {"soft inpainting": {"args": [True, 1.5, 0.5, 4]}},
            **{**SMALL, "width": 96}}
    r = server.client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0]).size == (96, 64)
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Outpaint padding: 0 32 0 0" in text and "Soft inpainting schedule bias: 1.5" in text
    assert "notes" not in json.loads(r.json()["info"])


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"mask": png_b64(Image.new("L", (64, 64), 0))}, "mask"),
        ({"mask": png_b64(Image.new("L", (80, 48), 255))}, "mask"),
        ({"outpaint_pad": [1, 2, 3]}, "outpaint_pad"),
        ({"mask_blur": 500}, "mask_blur"),
        ({"inpainting_fill": 7}, "inpainting_fill"),
    ],
)
def test_bad_inpaint_fields_are_422_naming_the_field(server, changes, field):
    body = {"prompt": "red", "init_images": [png_b64(picture())], "mask": png_b64(square_mask()), **SMALL, **changes}
    assert field_of(server.client.post("/sdapi/v1/img2img", json=body)) == field
