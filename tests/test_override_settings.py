"""A1111's `override_settings.sd_model_checkpoint` with `override_settings_restore_afterwards`, on the
real Engine with two tiny SD1 checkpoints: the job runs on the override model and, by default, the
model that was current before is selected again afterwards (also after a failed job)."""
from __future__ import annotations

import json

import pytest
import torch

from modules.devices import DevicePlan
from modules.engine import Engine
from modules.paths import ModelPaths
from modules.queue import DONE, FAILED, JobQueue
from modules.types import GenerationRequest
from tests.test_api import SMALL, launch_options
from tests.tiny_models import write_tiny_checkpoint
from webui.api import create_api_app
from webui.api.serve import serve_in_thread

PLAN = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("override")
    folder = root / "models" / "Stable-diffusion"
    write_tiny_checkpoint(folder / "a.safetensors", "sd1", seed=1)
    write_tiny_checkpoint(folder / "b.safetensors", "sd1", seed=2)
    engine = Engine(ModelPaths.create(root), plan=PLAN, outputs_root=root, settings_path=root / "config.json")
    queue = JobQueue(engine, max_size=4)
    yield root, engine, queue
    queue.shutdown()


def request(**kw) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "x", "steps": 1, "width": 64, "height": 64, "seed": 3, "do_not_save": True, **kw})


def run(queue: JobQueue, req: GenerationRequest, **kw):
    job = queue.submit(req, **kw)
    assert job.wait(120)
    return job


def test_job_runs_on_the_override_model_and_the_previous_one_comes_back(setup):
    _, engine, queue = setup
    engine.select_checkpoint("a.safetensors")
    job = run(queue, request(checkpoint="b.safetensors"), restore_checkpoint=True)
    assert job.status == DONE, job.error
    assert "Model: b," in job.result.infotexts[0]
    assert engine.current_checkpoint.name == "a.safetensors"
    assert engine.settings.sd_model_checkpoint == "a.safetensors"
    plain = run(queue, request())
    assert "Model: a," in plain.result.infotexts[0]
    # the override model's image is the one b makes when selected for good (UI model picker behaviour)
    kept = run(queue, request(checkpoint="b.safetensors"))
    assert engine.current_checkpoint.name == "b.safetensors"
    assert kept.result.images[0].tobytes() == job.result.images[0].tobytes()
    engine.select_checkpoint("a.safetensors")


def test_a_failed_job_also_restores(setup):
    _, engine, queue = setup
    engine.select_checkpoint("a.safetensors")
    broken = engine.paths.folder("esrgan") / "broken.pth"  # passes validation (the name exists), fails to load
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"not a pickle")
    job = run(queue, request(checkpoint="b.safetensors", enable_hr=True, hr_upscaler="broken"), restore_checkpoint=True)
    assert job.status == FAILED and "broken.pth" in job.error
    assert engine.current_checkpoint.name == "a.safetensors"


def test_api_honours_restore_afterwards(setup):
    root, engine, queue = setup
    engine.select_checkpoint("a.safetensors")
    with serve_in_thread(create_api_app(engine, queue, launch_options(root))) as url:
        import httpx

        with httpx.Client(base_url=url, timeout=120) as client:
            body = {**SMALL, "steps": 1, "prompt": "x", "override_settings": {"sd_model_checkpoint": "b"}}
            r = client.post("/sdapi/v1/txt2img", json=body)
            assert r.status_code == 200, r.text
            assert "Model: b," in json.loads(r.json()["info"])["infotexts"][0]
            assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("a.safetensors")
            r = client.post("/sdapi/v1/txt2img", json={**body, "override_settings_restore_afterwards": False})
            assert r.status_code == 200, r.text
            assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("b.safetensors")
    engine.select_checkpoint("a.safetensors")
