"""Images reach the job as each batch is decoded (the UI's gallery fills per image, not at the end)."""
from __future__ import annotations

import pytest
import torch

from modules.devices import DevicePlan
from modules.engine import Engine
from modules.paths import ModelPaths
from modules.queue import DONE, JobQueue
from modules.types import GenerationRequest
from tests.tiny_models import write_tiny_checkpoint
from tests.ui_fixtures import FakeEngine

PLAN = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)


def test_pipeline_sends_each_decoded_batch_before_the_next_starts(tmp_path):
    write_tiny_checkpoint(tmp_path / "models" / "Stable-diffusion" / "a.safetensors", "sd1", seed=1)
    engine = Engine(ModelPaths.create(tmp_path), plan=PLAN, outputs_root=tmp_path)
    events = []
    request = GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=5, n_iter=2, batch_size=2,
                                do_not_save=True)
    result = engine.generate(request, progress=events.append)
    with_images = [i for i, e in enumerate(events) if e.images]
    assert [len(events[i].images) for i in with_images] == [2, 2]
    assert [events[i].job_index for i in with_images] == [0, 1]
    assert all(events[i].total_steps == 0 for i in with_images)
    first_step_of_second = next(i for i, e in enumerate(events) if e.job_index == 1 and e.total_steps)
    assert with_images[0] < first_step_of_second
    sent = [im for i in with_images for im in events[i].images]
    assert [im.tobytes() for im in sent] == [im.tobytes() for im in result.images]


@pytest.fixture
def queue(tmp_path):
    q = JobQueue(FakeEngine(tmp_path, slow_step=0.05), max_size=4)
    yield q
    q.shutdown()


def test_job_state_holds_finished_images_while_running_and_keeps_its_step_counts(queue):
    job = queue.submit(GenerationRequest(prompt="slow", steps=4, n_iter=3, width=64, height=64, seed=1))
    state = job.snapshot()
    while len(state.images) == 0 and not state.finished:
        state = job.wait_change(state.version, 5)
    assert not state.finished and len(state.images) == 1
    assert state.total_steps == 4 and 0.3 <= state.fraction < 1  # the images event did not reset progress
    assert job.wait(10) and job.status == DONE
    final = job.snapshot()
    assert [im.tobytes() for im in final.images] == [im.tobytes() for im in final.result.images]
