"""The `webuiapi` package (a real third-party A1111 client, unchanged) against Palette's API.

txt2img, img2img, png-info, options get/set, model listing and interrupt run on a real server on
127.0.0.1: the tiny real checkpoints for generation, the fake engine for a job slow enough to interrupt.
"""
from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import pytest
from PIL import Image

from modules.paths import ModelPaths
from modules.queue import JobQueue
from tests.test_api import PLAN, launch_options
from tests.ui_fixtures import FakeEngine
from webui.api import create_api_app
from webui.api.serve import serve_in_thread

webuiapi = pytest.importorskip("webuiapi")


def client_for(url: str, **kw) -> "webuiapi.WebUIApi":
    parts = urlsplit(url)
    return webuiapi.WebUIApi(host=parts.hostname, port=parts.port, steps=2, **kw)


@pytest.fixture(scope="module")
def real_api(tmp_path_factory):
    pytest.importorskip("modules.pipeline", reason="the engine's pipeline has not landed")
    from modules.engine import Engine
    from tests.tiny_models import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("webuiapi")
    for name, seed in (("tiny.safetensors", 1), ("other.safetensors", 2)):
        write_tiny_checkpoint(root / "models" / "Stable-diffusion" / name, "sd1", seed=seed)
    engine = Engine(ModelPaths.create(root), plan=PLAN, outputs_root=root, settings_path=root / "config.json")
    queue = JobQueue(engine, max_size=8)
    with serve_in_thread(create_api_app(engine, queue, launch_options(root))) as url:
        yield client_for(url), engine
    queue.shutdown()


def test_txt2img_img2img_and_png_info(real_api):
    api, _ = real_api
    result = api.txt2img(prompt="a lighthouse", negative_prompt="fog", seed=1234, width=64, height=64,
                         sampler_name="DPM++ 2M", scheduler="karras", cfg_scale=5)
    assert result.image.size == (64, 64)
    assert result.info["seed"] == 1234 and result.info["all_prompts"] == ["a lighthouse"]
    assert result.parameters["negative_prompt"] == "fog"
    assert "Schedule type: Karras" in result.info["infotexts"][0]

    again = api.img2img(images=[result.image], prompt="a lighthouse at night", seed=99, width=64, height=64,
                        denoising_strength=0.6, mask_image=Image.new("L", (64, 64), 255))
    assert again.image.size == (64, 64) and again.info["seed"] == 99

    info = api.png_info(result.image)
    assert "Seed: 1234" in info.info and "Negative prompt: fog" in info.info


def test_options_and_model_listing(real_api):
    api, engine = real_api
    names = api.util_get_model_names()
    assert len(names) == 2 and any(n.startswith("tiny.safetensors") for n in names)
    assert {s for s in api.util_get_sampler_names()} >= {"Euler a", "DPM++ 2M", "DDIM"}
    assert "karras" in api.util_get_scheduler_names()
    api.util_set_model("tiny")  # webuiapi picks the closest title and posts it to /options
    assert engine.current_checkpoint.name == "tiny.safetensors"
    assert api.util_get_current_model().startswith("tiny.safetensors")
    api.set_options({"sd_vae": "None"})
    assert api.get_options()["sd_vae"] == "None" and engine.settings.sd_vae == "None"
    api.set_options({"sd_vae": "Automatic"})
    assert api.get_progress()["state"]["job_count"] == 0
    assert api.get_cmd_flags()["api"] is True


def test_interrupt_stops_a_running_job(tmp_path):
    engine = FakeEngine(tmp_path, slow_step=0.05)
    queue = JobQueue(engine, max_size=4)
    with serve_in_thread(create_api_app(engine, queue, launch_options(tmp_path))) as url:
        api = client_for(url)
        box = {}
        worker = threading.Thread(target=lambda: box.update(r=api.txt2img(prompt="slow", steps=400, width=64,
                                                                        height=64, seed=5)))
        started = time.monotonic()
        worker.start()
        while api.get_progress()["state"]["sampling_step"] < 2:
            assert time.monotonic() - started < 10, "the job never started"
            time.sleep(0.02)
        api.interrupt()
        worker.join(20)
        assert time.monotonic() - started < 15  # 400 slow steps would take 20 s
        assert box["r"].images == [] and box["r"].info["interrupted"] is True
    queue.shutdown()
