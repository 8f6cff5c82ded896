"""The extras routes with a model upscaler, against a real uvicorn server on the real Engine.

The upscaler is a tiny random-weight Real-ESRGAN (BasicSR RRDBNet layout) in models/RealESRGAN/; the
expected pixels come from spandrel run directly on the same state dict, not from Palette's code path.
"""
from __future__ import annotations

import base64
from pathlib import Path
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from modules.devices import DevicePlan
from modules.launch_options import LaunchOptions
from modules.paths import ModelPaths
from modules.queue import JobQueue
from tests import upscaler_models as um
from webui.api import create_api_app
from webui.api.serve import serve_in_thread

PLAN = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)


def png_b64(image: Image.Image, **chunks: str) -> str:
    meta = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        meta.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta)
    return base64.b64encode(buf.getvalue()).decode()


def decode(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from modules.engine import Engine

    root = tmp_path_factory.mktemp("upscale-api")
    sd = um.esrgan_new(seed=7)
    folder = root / "models" / "RealESRGAN"
    folder.mkdir(parents=True)
    save_file(sd, str(folder / "RealESRGAN_x4plus.safetensors"))
    bad = root / "models" / "ESRGAN"
    bad.mkdir(parents=True)
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 8, 3, 3)}, str(bad / "sd-by-mistake.safetensors"))
    engine = Engine(ModelPaths.create(root), plan=PLAN, outputs_root=root)
    queue = JobQueue(engine, max_size=8)
    options = LaunchOptions(host="127.0.0.1", port=7860, share=False, auth=(), api=True, api_auth=(), nowebui=False,
                            skip_load_model_at_start=True, paths=ModelPaths.create(root), data_dir=root, device_plan=PLAN)
    with serve_in_thread(create_api_app(engine, queue, options)) as url:
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client, sd
    queue.shutdown()


def test_upscalers_route_lists_model_files(served):
    client, _ = served
    items = {u["name"]: u for u in client.get("/sdapi/v1/upscalers").json()}
    assert list(items)[:4] == ["None", "Lanczos", "Nearest", "Bicubic"]
    model = items["R-ESRGAN 4x+"]
    assert model["model_name"] == "RealESRGAN" and model["scale"] == 4
    assert model["model_path"].endswith("RealESRGAN_x4plus.safetensors")


def test_extra_single_image_with_a_model_upscaler(served):
    import spandrel

    client, sd = served
    source = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    body = {"image": png_b64(source, parameters="a fox\nSteps: 2"), "upscaler_1": "R-ESRGAN 4x+", "upscaling_resize": 4}
    r = client.post("/sdapi/v1/extra-single-image", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["html_info"] == "Postprocess upscale by: 4, Postprocess upscaler: R-ESRGAN 4x+"
    image = decode(data["image"])
    assert image.size == (128, 96) and image.info["parameters"] == "a fox\nSteps: 2"
    # the same weights through spandrel directly (24x32 fits in one tile: no blending involved)
    x = torch.from_numpy(np.asarray(source, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    expected = spandrel.ModelLoader().load_from_state_dict(dict(sd))(x)[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(np.asarray(image, dtype=np.float32) - expected).max() <= 0.51


def test_two_upscalers_blend_and_scale_to_with_crop(served):
    client, _ = served
    source = png_b64(Image.new("RGB", (40, 20), (200, 40, 10)))
    body = {"image": source, "upscaler_1": "R-ESRGAN 4x+", "upscaler_2": "Nearest", "extras_upscaler_2_visibility": 0.5,
            "resize_mode": 1, "upscaling_resize_w": 64, "upscaling_resize_h": 64, "upscaling_crop": True}
    data = client.post("/sdapi/v1/extra-single-image", json=body).json()
    assert decode(data["image"]).size == (64, 64)
    assert data["html_info"] == ("Postprocess upscale to: 64x64, Postprocess crop to: 64x64, "
                                 "Postprocess upscaler: R-ESRGAN 4x+, Postprocess upscaler 2: Nearest")
    batch = {"imageList": [{"data": source, "name": "a.png"}] * 2, "upscaler_1": "R-ESRGAN 4x+", "upscaling_resize": 2}
    assert [decode(i).size for i in client.post("/sdapi/v1/extra-batch-images", json=batch).json()["images"]] == [(80, 40)] * 2


@pytest.mark.parametrize("change,field", [
    ({"upscaler_1": "4x-NotHere"}, "upscaler_1"),
    ({"upscaler_2": "Latent"}, "upscaler_2"),
    ({"gfpgan_visibility": 0.5}, "gfpgan_visibility"),  # no model file in models/GFPGAN
    ({"gfpgan_visibility": 1.5}, "gfpgan_visibility"),
    ({"codeformer_weight": -0.5}, "codeformer_weight"),
    ({"upscaling_resize": 0}, "upscaling_resize"),
])
def test_bad_extras_fields_are_422_naming_the_field(served, change, field):
    client, _ = served
    body = {"image": png_b64(Image.new("RGB", (16, 16))), "upscaler_1": "Lanczos", **change}
    r = client.post("/sdapi/v1/extra-single-image", json=body)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][1] == field, r.text


def test_face_restorers_route_and_gfpgan_through_extra_single_image(served):
    """No model: a 422 naming the folder; with a (tiny RestoreFormer) model in models/GFPGAN: 200 and
    A1111's infotext. The folder is read on every request, so the file can come and go."""
    from tests import face_models as fm

    client, _ = served
    restorers = {r["name"]: r for r in client.get("/sdapi/v1/face-restorers").json()}
    assert list(restorers) == ["GFPGAN", "CodeFormer"]
    folder = Path(restorers["GFPGAN"]["cmd_dir"])
    assert folder.name == "GFPGAN" and folder.parent.name == "models" and restorers["GFPGAN"]["model_path"] is None
    body = {"image": png_b64(fm.drawn_face(size=360), parameters="a face"), "upscaling_resize": 1,
            "upscaler_1": "Lanczos", "gfpgan_visibility": 1}
    missing = client.post("/sdapi/v1/extra-single-image", json=body)
    assert missing.status_code == 422, missing.text
    detail = missing.json()["detail"][0]
    assert detail["loc"][1] == "gfpgan_visibility" and str(folder) in detail["msg"]
    model = fm.save_pth(fm.restoreformer_tiny(seed=5), folder / "RestoreFormer.pth")
    try:
        assert client.get("/sdapi/v1/face-restorers").json()[0]["model_path"] == str(model)
        r = client.post("/sdapi/v1/extra-single-image", json=body)
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["html_info"] == "Postprocess upscale by: 1, Postprocess upscaler: Lanczos, GFPGAN visibility: 1"
        image = decode(data["image"])
        assert image.size == (360, 360) and image.info["parameters"] == "a face"
        assert not np.array_equal(np.asarray(image.convert("RGB")), np.asarray(fm.drawn_face(size=360)))
        batch = {"imageList": [{"data": body["image"], "name": "a.png"}], "upscaler_1": "None", "upscaling_resize": 1,
                 "gfpgan_visibility": 0.5}
        r = client.post("/sdapi/v1/extra-batch-images", json=batch)
        # upscaler 1 "None" leaves the upscale step out: no Postprocess keys (A1111)
        assert r.status_code == 200 and r.json()["html_info"] == "GFPGAN visibility: 0.5", r.text
    finally:
        model.unlink()


def test_upscaler_none_leaves_the_picture_as_it_is(served):
    client, _ = served
    source = Image.new("RGB", (24, 16), (200, 30, 40))
    body = {"image": png_b64(source), "upscaler_1": "None", "upscaler_2": "Nearest",
            "extras_upscaler_2_visibility": 0.5, "upscaling_resize": 3}
    r = client.post("/sdapi/v1/extra-single-image", json=body)
    assert r.status_code == 200, r.text
    image = decode(r.json()["image"])
    assert image.size == (24, 16) and r.json()["html_info"] == ""
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(source))


def test_a_checkpoint_in_the_upscaler_folder_fails_naming_the_file_and_the_server_goes_on(served):
    client, _ = served
    body = {"image": png_b64(Image.new("RGB", (16, 16))), "upscaler_1": "sd-by-mistake"}
    r = client.post("/sdapi/v1/extra-single-image", json=body)
    assert r.status_code == 500
    assert "sd-by-mistake.safetensors: not an upscaler" in r.json()["detail"]
    assert "Stable Diffusion checkpoint" in r.json()["detail"]
    ok = client.post("/sdapi/v1/extra-single-image", json={**body, "upscaler_1": "Lanczos"})
    assert ok.status_code == 200


def test_img2img_sd_upscale_script(served, tmp_path_factory):
    """A1111's script call: script_name "SD upscale", script_args [info, overlap, upscaler, scale]."""
    from tests.tiny_models import write_tiny_checkpoint

    client, _ = served
    root = client.get("/sdapi/v1/upscalers").json()[4]["model_path"].split("/models/")[0]
    write_tiny_checkpoint(Path(root) / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1")
    source = png_b64(Image.effect_noise((48, 40), 60).convert("RGB"))
    body = {"init_images": [source], "prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 3,
            "denoising_strength": 0.3, "script_name": "SD upscale", "script_args": ["", 16, "R-ESRGAN 4x+", 2]}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0]).size == (96, 80)
    info = r.json()["info"]
    assert "SD upscale upscaler: R-ESRGAN 4x+" in info and "script_name" not in info
    bad = client.post("/sdapi/v1/img2img", json={**body, "script_args": ["", 16, 99, 2]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][1] == "script_args"
