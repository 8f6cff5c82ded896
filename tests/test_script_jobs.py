"""Scripts that run as queue tasks (SD upscale over the API, Extras) behave like generation jobs:
/progress shows their steps, /interrupt stops them, n_iter repeats SD upscale with seed + n, and a
model chosen by override_settings is put back afterwards. A real server on the fake engine."""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from PIL import Image

from modules import extras
from modules.queue import DONE, JobQueue
from tests.test_api import Served, launch_options, png_b64
from tests.ui_fixtures import FakeEngine
from webui.api import create_api_app
from webui.api.serve import serve_in_thread

# 64x48 → Lanczos x2 → 128x96: 3 x 2 tiles of 64x64 overlapping by 16
SD_UPSCALE = {"steps": 2, "width": 64, "height": 64, "seed": 10, "denoising_strength": 0.3,
              "script_name": "SD upscale", "script_args": ["", 16, "Lanczos", 2]}
TILES = 6


@pytest.fixture
def served(tmp_path):
    engine = FakeEngine(tmp_path, slow_step=0.05)
    queue = JobQueue(engine, max_size=8)
    with serve_in_thread(create_api_app(engine, queue, launch_options(tmp_path))) as url:
        s = Served(url, engine, queue)
        yield s
        s.client.close()
    queue.shutdown()


def body(**changes):
    return {**SD_UPSCALE, "init_images": [png_b64(Image.new("RGB", (64, 48), (90, 30, 30)))], **changes}


def test_sd_upscale_shows_progress_and_stops_on_interrupt(served):
    box: dict[str, httpx.Response] = {}
    request = body(prompt="slow", steps=40)  # 40 x 0.05 s per tile: 12 s if nothing stops it
    worker = threading.Thread(target=lambda: box.update(r=served.client.post("/sdapi/v1/img2img", json=request)))
    worker.start()
    progress = {}
    for _ in range(500):
        progress = served.client.get("/sdapi/v1/progress").json()
        if progress["state"]["sampling_step"] >= 2:
            break
        time.sleep(0.02)
    assert progress["state"]["sampling_steps"] == 40 and progress["state"]["job_count"] == TILES
    assert 0 < progress["progress"] < 1 / TILES
    started = time.monotonic()
    assert served.client.post("/sdapi/v1/interrupt").json() == {}
    worker.join(20)
    assert time.monotonic() - started < 3
    assert box["r"].status_code == 200, box["r"].text
    assert json.loads(box["r"].json()["info"])["interrupted"] is True
    assert len(served.engine.calls) == 1  # no tile after the interrupted one was started


def test_sd_upscale_n_iter_makes_one_picture_per_iteration_from_seed_plus_n(served):
    r = served.client.post("/sdapi/v1/img2img", json=body(prompt="a house", n_iter=2))
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 2
    info = json.loads(r.json()["info"])
    assert info["all_seeds"] == [10, 11]
    # A1111: iteration n's tiles start at seed + n
    assert [c.seed for c in served.engine.calls] == [10 + i for i in range(TILES)] + [11 + i for i in range(TILES)]
    assert "Seed: 11," in info["infotexts"][1]


def test_sd_upscale_restores_the_model_after_an_override(served):
    assert served.client.post("/sdapi/v1/txt2img", json={"steps": 1, "width": 64, "height": 64}).status_code == 200
    assert served.engine.current_checkpoint.name == "alpha.safetensors"
    r = served.client.post("/sdapi/v1/img2img", json=body(
        prompt="a house", override_settings={"sd_model_checkpoint": "beta.safetensors"}))
    assert r.status_code == 200, r.text
    assert {c.checkpoint for c in served.engine.calls[1:]} == {"beta.safetensors"}
    assert served.engine.current_checkpoint.name == "alpha.safetensors"


class _InterruptingUpscalers:
    """Upscales with PIL; interrupts the job while the first image is being upscaled."""

    def __init__(self, job_box: dict) -> None:
        self.job_box, self.calls = job_box, 0

    def names(self) -> list[str]:
        return ["None", "Lanczos"]

    def upscale(self, image, name, scale, on_tile=None):
        self.calls += 1
        self.job_box["job"].interrupt()
        return image.resize((int(image.width * scale), int(image.height * scale)))


def test_extras_batch_stops_between_images_on_interrupt(tmp_path):
    engine = FakeEngine(tmp_path)
    job_box: dict = {}
    engine.upscalers = _InterruptingUpscalers(job_box)
    queue = JobQueue(engine)
    try:
        release = threading.Event()
        queue.submit_task(lambda: release.wait(10), label="hold the worker")  # so job_box is set before it runs
        sources = [(Image.new("RGB", (8, 8), (i * 40, 0, 0)), f"{i}.png") for i in range(3)]
        opts = extras.ExtrasOptions(upscaler_1="Lanczos", upscaling_resize=2)
        job = queue.submit_task(lambda **kw: extras.run(engine, sources, opts, save_output=False, **kw),
                                label="extras", pass_job=True)
        job_box["job"] = job
        release.set()
        assert job.wait(10) and job.status == DONE
        assert engine.upscalers.calls == 1 and len(job.value.images) == 1
        assert job.snapshot().step == 1 and job.snapshot().total_steps == 3
    finally:
        queue.shutdown()
