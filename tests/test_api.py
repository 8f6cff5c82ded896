"""REST API against a real uvicorn server on 127.0.0.1: every route, validation, auth, CSRF, queueing.

The fake engine (tests/ui_fixtures.py) drives queue behaviour (slow, failing, out-of-memory jobs); the
tiny real checkpoints drive txt2img/img2img end to end.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from modules.devices import DevicePlan
from modules.launch_options import LaunchOptions
from modules.paths import ModelPaths
from modules.queue import JobQueue
from tests.ui_fixtures import FakeEngine
from webui.api import create_api_app
from webui.api.serve import free_port, serve_in_thread

PLAN = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)
SMALL = {"steps": 2, "width": 64, "height": 64}


def launch_options(root: Path, *, api_auth: tuple = (), port: int = 7860, api: bool = True) -> LaunchOptions:
    return LaunchOptions(host="127.0.0.1", port=port, share=False, auth=(), api=api, api_auth=api_auth,
                         nowebui=False, skip_load_model_at_start=True, paths=ModelPaths.create(root),
                         data_dir=root, device_plan=PLAN)


def png_b64(image: Image.Image, *, data_url: bool = False, **info: str) -> str:
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    for key, value in info.items():
        meta.add_text(key, value)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta)
    text = base64.b64encode(buf.getvalue()).decode()
    return "data:image/png;base64," + text if data_url else text


def decode(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


class Served:
    def __init__(self, url: str, engine, queue) -> None:
        self.url, self.engine, self.queue = url, engine, queue
        self.client = httpx.Client(base_url=url, timeout=60)


@contextlib.contextmanager
def serving(engine, root, *, max_size: int = 8, api_auth=()):
    """The API app on `engine` behind a real HTTP server on 127.0.0.1, with its own job queue; the
    client, server and queue are closed afterwards."""
    queue = JobQueue(engine, max_size=max_size)
    try:
        with serve_in_thread(create_api_app(engine, queue, launch_options(root, api_auth=api_auth))) as url:
            served = Served(url, engine, queue)
            try:
                yield served
            finally:
                served.client.close()
    finally:
        queue.shutdown()


@pytest.fixture
def fake(tmp_path, request):
    """A server on the fake engine; `@pytest.mark.parametrize("fake", [{...}], indirect=True)` tunes it."""
    cfg = getattr(request, "param", {})
    engine = FakeEngine(tmp_path, step_time=cfg.get("step_time", 0.0), slow_step=0.05)
    with serving(engine, tmp_path, max_size=cfg.get("max_size", 8), api_auth=cfg.get("api_auth", ())) as served:
        yield served


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A server on the real Engine with two tiny SD1 checkpoints."""
    pytest.importorskip("modules.pipeline", reason="the engine's pipeline has not landed")
    from modules.engine import Engine
    from tests.tiny_models import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("api-real")
    write_tiny_checkpoint(root / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1", seed=1)
    write_tiny_checkpoint(root / "models" / "Stable-diffusion" / "other.safetensors", "sd1", seed=2)
    engine = Engine(ModelPaths.create(root), plan=PLAN, outputs_root=root, settings_path=root / "config.json")
    with serving(engine, root) as served:
        yield served


@pytest.mark.parametrize("extra, schedule", [({}, "Automatic"), ({"sampler_name": "DPM++ 2M"}, "Karras"),
                                             ({"sampler_name": "DDIM"}, "Automatic")])
def test_request_without_scheduler_writes_a1111s_schedule_type(real, extra, schedule):
    """A1111 1.10: the API leaves p.scheduler unset, process_images' fix_p_invalid_sampler_and_scheduler
    makes it "Automatic" (written as is: Euler, the API's default sampler, and DDIM), and a sampler with a
    default schedule writes that one (DPM++ 2M: Karras)."""
    r = real.client.post("/sdapi/v1/txt2img", json={"prompt": "a red fox", "seed": 1, **SMALL, "steps": 1, **extra})
    assert r.status_code == 200, r.text
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert f", Schedule type: {schedule}, " in text, text


def field_of(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    return response.json()["detail"][0]["loc"][1]


# ---- generation on the real engine -----------------------------------------------------------------

def test_txt2img_returns_png_with_parameters_and_a1111_info(real):
    body = {"prompt": "a red fox", "seed": 42, "sampler_name": "DPM++ 2M Karras", "batch_size": 2, **SMALL}
    r = real.client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    info = json.loads(data["info"])
    assert info["seed"] == 42 and info["all_seeds"] == [42, 43]
    assert info["all_prompts"] == ["a red fox"] * 2 and info["sd_model_name"] in ("tiny", "other")
    assert info["sampler_name"] == "DPM++ 2M" and info["scheduler"] == "Karras"
    assert data["parameters"]["prompt"] == "a red fox" and data["parameters"]["steps"] == 2
    image = decode(data["images"][0])
    assert image.size == (64, 64) and image.info["parameters"] == info["infotexts"][0]
    assert "Seed: 42" in image.info["parameters"]
    # png-info reads it back
    r = real.client.post("/sdapi/v1/png-info", json={"image": data["images"][1]})
    assert r.status_code == 200 and "Seed: 43" in r.json()["info"]
    assert r.json()["parameters"]["Seed"] in (43, "43")


def test_errors_raised_inside_the_engine_are_still_422(real):
    r = real.client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "<lora:missing:1> a cat"})
    assert field_of(r) == "prompt" and "LoRA" in r.json()["detail"][0]["msg"]
    assert real.client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a cat"}).status_code == 200


def test_restore_faces_without_a_face_model_is_422_naming_it_and_says_where_to_put_one(real):
    r = real.client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a face", "restore_faces": True})
    assert field_of(r) == "restore_faces"
    assert "GFPGAN" in r.json()["detail"][0]["msg"] and str(Path("models") / "GFPGAN") in r.json()["detail"][0]["msg"]
    r = real.client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a face", "restore_faces": False})
    assert r.status_code == 200 and json.loads(r.json()["info"])["restore_faces"] is False


def test_img2img_accepts_data_urls_base64_and_a_mask(real):
    picture = Image.new("RGB", (80, 48), (200, 30, 30))
    body = {"prompt": "red", "seed": 3, "init_images": [png_b64(picture, data_url=True), png_b64(picture)],
            "mask": png_b64(Image.new("L", (80, 48), 255)), "inpainting_fill": 1, "denoising_strength": 0.5,
            **SMALL}
    r = real.client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    # A1111's API defaults to inpaint_full_res (Only masked): the result keeps the input's size
    assert decode(r.json()["images"][0]).size == (80, 48)
    assert r.json()["parameters"]["init_images"] is None  # echoed without the images, as A1111
    assert json.loads(r.json()["info"])["denoising_strength"] == 0.5


def test_options_switch_the_model_and_validate(real):
    r = real.client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "other.safetensors",
                                                    "CLIP_stop_at_last_layers": 2, "unknown_key": 1})
    assert r.status_code == 200, r.text
    assert real.engine.current_checkpoint.name == "other.safetensors"
    options = real.client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"].startswith("other.safetensors") and options["CLIP_stop_at_last_layers"] == 2
    assert json.loads(Path(real.engine.settings_path).read_text())["CLIP_stop_at_last_layers"] == 2
    assert field_of(real.client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"})) == "sd_model_checkpoint"
    assert field_of(real.client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 99})) == "CLIP_stop_at_last_layers"
    real.client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})
    titles = [m["title"] for m in real.client.get("/sdapi/v1/sd-models").json()]
    assert any(t.startswith("tiny.safetensors") for t in titles)
    # refresh-loras/-embeddings call Engine.refresh_networks (issue 4): tests/test_api_networks.py
    for route in ("unload-checkpoint", "reload-checkpoint", "refresh-checkpoints", "refresh-vae"):
        assert real.client.post(f"/sdapi/v1/{route}").status_code == 200, route
    assert real.engine.current_checkpoint is not None  # reload brought it back


# ---- validation ---------------------------------------------------------------------------------------

BAD_TXT2IMG = [
    ({"steps": 0}, "steps"), ({"width": 65}, "width"), ({"height": 100000}, "height"),
    ({"cfg_scale": 1000}, "cfg_scale"), ({"seed": 2**33}, "seed"), ({"sampler_name": "Nope"}, "sampler_name"),
    ({"scheduler": "Nope"}, "scheduler"), ({"prompt": "x" * 20_001}, "prompt"), ({"steps": "abc"}, "steps"),
    ({"override_settings": {"sd_model_checkpoint": "missing.safetensors"}}, "override_settings"),
    ({"override_settings": {"CLIP_stop_at_last_layers": "many"}}, "override_settings"),
    ({"enable_hr": True, "hr_upscaler": "ESRGAN 9x"}, "hr_upscaler"),
]


@pytest.mark.parametrize("change,field", BAD_TXT2IMG)
def test_bad_txt2img_fields_are_422_naming_the_field(fake, change, field):
    assert field_of(fake.client.post("/sdapi/v1/txt2img", json={**SMALL, **change})) == field
    assert fake.engine.calls == []


def test_bad_images_are_422_and_urls_are_never_fetched(fake):
    big = png_b64(Image.new("1", (8200, 8200)))
    cases = [("not base64!!", "init_images"), (base64.b64encode(b"plain text, not an image").decode(), "init_images"),
             ("https://example.com/cat.png", "init_images"), ("http://127.0.0.1:1/x.png", "init_images"), (big, "init_images")]
    for value, field in cases:
        r = fake.client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [value]})
        assert field_of(r) == field, value[:40]
    assert field_of(fake.client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": []})) == "init_images"
    ok = png_b64(Image.new("RGB", (64, 64)))
    assert field_of(fake.client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [ok], "mask": "http://x/m.png"})) == "mask"
    assert field_of(fake.client.post("/sdapi/v1/png-info", json={"image": "data:text/plain,hello"})) == "image"


# ---- queue behaviour (fake engine) --------------------------------------------------------------------

def test_failed_jobs_are_500_with_their_cause_and_the_next_succeeds(fake):
    r = fake.client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "please raise"})
    assert r.status_code == 500 and "asked to fail" in r.json()["detail"]
    r = fake.client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "oom"})
    assert r.status_code == 500 and r.json()["detail"].startswith("Out of memory")
    r = fake.client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "fine", "seed": 5})
    assert r.status_code == 200 and json.loads(r.json()["info"])["seed"] == 5


@pytest.mark.parametrize("fake", [{"max_size": 3, "step_time": 0.01}], indirect=True)
def test_twenty_concurrent_requests_complete_or_get_429_and_never_mix(fake):
    results: dict[int, httpx.Response] = {}

    def call(i: int) -> None:
        body = {**SMALL, "steps": 3, "prompt": f"request {i}", "seed": 1000 + i}
        results[i] = fake.client.post("/sdapi/v1/txt2img", json=body)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 20
    codes = sorted(r.status_code for r in results.values())
    assert set(codes) <= {200, 429} and 200 in codes and 429 in codes, codes
    for i, r in results.items():
        if r.status_code == 200:
            info = json.loads(r.json()["info"])
            assert info["seed"] == 1000 + i and info["all_prompts"] == [f"request {i}"]
            assert f"Seed: {1000 + i}" in decode(r.json()["images"][0]).info["parameters"]
    assert len(fake.engine.calls) == codes.count(200)


def test_jobs_api_submit_list_get_cancel_and_events(fake):
    slow = fake.client.post("/palette/v1/jobs", json={**SMALL, "steps": 40, "prompt": "slow one", "seed": 1})
    assert slow.status_code == 202, slow.text
    waiting = fake.client.post("/palette/v1/jobs", json={**SMALL, "prompt": "second", "seed": 2}).json()
    assert waiting["status"] == "queued"
    listed = [j["id"] for j in fake.client.get("/palette/v1/jobs").json()]
    assert slow.json()["id"] in listed and waiting["id"] in listed
    r = fake.client.delete(f"/palette/v1/jobs/{waiting['id']}")
    assert r.json() == {"id": waiting["id"], "cancelled": True, "status": "cancelled"}
    events = []
    with fake.client.stream("GET", f"/palette/v1/jobs/{slow.json()['id']}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
                if len(events) == 3:
                    fake.client.post("/sdapi/v1/skip")  # the slow job skips its only image → done, no images
            if events and events[-1] in ("done", "failed", "cancelled") and not line:
                break
    assert events[0] == "progress" and events.count("progress") >= 3 and events[-1] == "done"
    done = fake.client.get(f"/palette/v1/jobs/{slow.json()['id']}", params={"images": True}).json()
    assert done["status"] == "done" and json.loads(done["info"])["all_seeds"] == []
    quick = fake.client.post("/palette/v1/jobs", json={**SMALL, "prompt": "quick", "seed": 9}).json()
    for _ in range(200):
        state = fake.client.get(f"/palette/v1/jobs/{quick['id']}", params={"images": True}).json()
        if state["status"] == "done":
            break
        time.sleep(0.02)
    assert json.loads(state["info"])["seed"] == 9 and len(state["images"]) == 1
    assert fake.client.get("/palette/v1/jobs/nope").status_code == 404


def test_progress_interrupt_and_skip(fake):
    box: dict[str, httpx.Response] = {}
    worker = threading.Thread(target=lambda: box.update(r=fake.client.post(
        "/sdapi/v1/txt2img", json={**SMALL, "steps": 200, "n_iter": 2, "prompt": "slow", "seed": 4})))
    worker.start()
    for _ in range(500):
        progress = fake.client.get("/sdapi/v1/progress").json()
        if progress["state"]["sampling_step"] >= 2:
            break
        time.sleep(0.02)
    assert progress["state"]["sampling_steps"] == 200 and 0 < progress["progress"] < 1
    assert progress["state"]["job_count"] == 2 and progress["eta_relative"] > 0
    assert fake.client.post("/sdapi/v1/skip").json() == {}
    for _ in range(500):
        if fake.client.get("/sdapi/v1/progress").json()["state"]["job_no"] == 1:
            break
        time.sleep(0.02)
    assert fake.client.post("/sdapi/v1/interrupt").json() == {}
    worker.join(20)
    assert box["r"].status_code == 200
    info = json.loads(box["r"].json()["info"])
    assert info["interrupted"] is True and box["r"].json()["images"] == []
    assert fake.client.get("/sdapi/v1/progress").json()["progress"] == 0


def test_override_settings_apply_to_that_job_only_and_scripts_are_noted(fake):
    body = {**SMALL, "override_settings": {"CLIP_stop_at_last_layers": "2", "eta_noise_seed_delta": 31337},
            "alwayson_scripts": {"ControlNet": {"args": []}}, "sampler_name": "k_dpmpp_2m_ka", "scheduler": "karras"}
    r = fake.client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    request = fake.engine.calls[-1]
    assert dict(request.override_settings) == {"CLIP_stop_at_last_layers": 2} and request.scheduler == "Karras"
    assert fake.engine.settings.CLIP_stop_at_last_layers == 1
    notes = " ".join(json.loads(r.json()["info"])["notes"])
    assert "ControlNet" in notes and "eta_noise_seed_delta" in notes


# ---- listings, extras, security -----------------------------------------------------------------------

def test_listing_routes(fake):
    get = lambda path: fake.client.get(f"/sdapi/v1/{path}")  # noqa: E731
    assert {"sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers"} <= set(get("options").json())
    model = get("sd-models").json()[0]
    assert set(model) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert get("sd-vae").json()[0]["model_name"] == "fake-vae.safetensors"
    samplers = {s["name"]: s for s in get("samplers").json()}
    assert "k_euler_a" in samplers["Euler a"]["aliases"] and samplers["DPM++ 2M"]["options"]["scheduler"] == "Karras"
    karras = next(s for s in get("schedulers").json() if s["label"] == "Karras")
    assert karras == {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False}
    assert [u["name"] for u in get("upscalers").json()] == ["None", "Lanczos", "Nearest", "Bicubic"]
    assert get("latent-upscale-modes").json()[0] == {"name": "Latent"}
    assert get("loras").json() == [] and get("extensions").json() == []
    assert get("embeddings").json() == {"loaded": {}, "skipped": {}}
    assert get("scripts").json() == {"txt2img": [], "img2img": []}
    (fake.engine.root / "styles.csv").write_text("name,prompt,negative_prompt\nNoir,\"{prompt}, noir\",color\n")
    assert get("prompt-styles").json() == [{"name": "Noir", "prompt": "{prompt}, noir", "negative_prompt": "color"}]
    flags = get("cmd-flags").json()
    assert flags["api"] is True and flags["server_name"] == "127.0.0.1"
    assert get("memory").json()["ram"]["total"] > 0
    r = fake.client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "cat", "styles": ["Noir"]})
    assert json.loads(r.json()["info"])["all_prompts"] == ["cat, noir"]
    paths = fake.client.get("/palette/v1/openapi.json").json()["paths"]
    assert {"/palette/v1/jobs", "/palette/v1/jobs/{job_id}/events", "/sdapi/v1/txt2img"} <= set(paths)


def test_extras_upscale_with_pil_upscalers(fake):
    source = png_b64(Image.new("RGB", (40, 24), (9, 99, 199)), parameters="a prompt\nSteps: 2")
    r = fake.client.post("/sdapi/v1/extra-single-image", json={"image": source, "upscaler_1": "Lanczos"})
    assert r.status_code == 200, r.text
    image = decode(r.json()["image"])
    assert image.size == (80, 48) and image.info["parameters"] == "a prompt\nSteps: 2"
    body = {"image": source, "upscaler_1": "Nearest", "resize_mode": 1, "upscaling_resize_w": 64,
            "upscaling_resize_h": 64, "upscaling_crop": True}
    assert decode(fake.client.post("/sdapi/v1/extra-single-image", json=body).json()["image"]).size == (64, 64)
    body = {"imageList": [{"data": source, "name": "a"}, {"data": source, "name": "b"}], "upscaler_1": "Bicubic",
            "upscaling_resize": 1.5}
    images = fake.client.post("/sdapi/v1/extra-batch-images", json=body).json()["images"]
    assert [decode(i).size for i in images] == [(56, 32)] * 2  # A1111 rounds down to a multiple of 8
    assert field_of(fake.client.post("/sdapi/v1/extra-single-image",
                                     json={"image": source, "upscaler_1": "R-ESRGAN 4x+"})) == "upscaler_1"


@pytest.mark.parametrize("fake", [{"api_auth": (("alice", "s3cret"),)}], indirect=True)
def test_api_auth_protects_every_route(fake):
    for method, path in (("GET", "/sdapi/v1/options"), ("POST", "/sdapi/v1/txt2img"), ("GET", "/palette/v1/jobs"),
                         ("GET", "/palette/v1/openapi.json"), ("GET", "/docs"), ("POST", "/sdapi/v1/interrupt")):
        r = fake.client.request(method, path, json=SMALL if method == "POST" else None)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Basic", path
        r = fake.client.request(method, path, json=SMALL if method == "POST" else None, auth=("alice", "wrong"))
        assert r.status_code == 401, path
    r = fake.client.post("/sdapi/v1/txt2img", json=SMALL, auth=("alice", "s3cret"))
    assert r.status_code == 200
    assert fake.engine.calls[-1] and fake.queue.list_jobs()[-1].owner == "api:alice"


def test_cross_origin_posts_are_refused(fake):
    url = fake.url
    refused = [{"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
               {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1"}]
    for headers in refused:
        r = fake.client.post("/sdapi/v1/txt2img", json=SMALL, headers=headers)
        assert r.status_code == 403, headers
    assert fake.client.post("/sdapi/v1/interrupt", headers={"Origin": "http://evil.example"}).status_code == 403
    assert fake.engine.calls == []
    r = fake.client.post("/sdapi/v1/txt2img", json=SMALL, headers={"Origin": url, "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 200
    r = fake.client.get("/sdapi/v1/options", headers={"Host": "attacker.example:80"})  # DNS rebinding
    assert r.status_code == 403


def test_mounted_beside_the_gradio_ui(tmp_path):
    from webui.server import launch_ui

    engine = FakeEngine(tmp_path)
    queue = JobQueue(engine, max_size=4)
    port = free_port()
    demo = launch_ui(engine, queue, launch_options(tmp_path, port=port), prevent_thread_lock=True, quiet=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            assert client.get("/").status_code == 200
            r = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": 11})
            assert r.status_code == 200 and json.loads(r.json()["info"])["seed"] == 11
            assert client.get("/palette/v1/jobs").status_code == 200
            assert field_of(client.post("/sdapi/v1/txt2img", json={"steps": -1})) == "steps"
    finally:
        demo.close()
        queue.shutdown()
