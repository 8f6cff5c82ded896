"""JobQueue: one worker, FIFO, cancel/interrupt/skip, failure isolation, per-job progress."""
from __future__ import annotations

import threading

import pytest

from modules.queue import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobQueue, QueueFullError
from modules.types import GenerationRequest
from tests.ui_fixtures import FakeEngine


@pytest.fixture
def engine(tmp_path):
    return FakeEngine(tmp_path, slow_step=0.05)


@pytest.fixture
def queue(engine):
    q = JobQueue(engine, max_size=4)
    yield q
    q.shutdown()


def blocker(engine: FakeEngine) -> threading.Event:
    """Make the next generate() wait until the returned event is set (so jobs pile up)."""
    release = threading.Event()

    def hold(request: GenerationRequest) -> None:
        if request.prompt == "hold":
            release.wait(10)

    engine.on_generate = hold
    return release


def wait_running(job) -> None:
    state = job.snapshot()
    while state.status == QUEUED:
        state = job.wait_change(state.version, 5)


def test_fifo_and_one_worker_thread(queue, engine):
    release = blocker(engine)
    first = queue.submit(GenerationRequest(prompt="hold", steps=2))
    wait_running(first)
    jobs = [queue.submit(GenerationRequest(prompt=f"p{i}", steps=2)) for i in range(3)]
    assert [j.status for j in jobs] == [QUEUED] * 3
    assert queue.position(jobs[2]) == 2
    release.set()
    assert all(j.wait(10) for j in [first, *jobs])
    assert [r.prompt for r in engine.calls] == ["hold", "p0", "p1", "p2"]
    assert engine.threads == {"palette-worker"}
    assert all(j.status == DONE and len(j.result.images) == 1 for j in jobs)
    assert [j.id for j in queue.list_jobs()] == [first.id, *[j.id for j in jobs]]


def test_job_ids_are_unique_hex_and_requests_frozen(queue):
    a, b = queue.submit(GenerationRequest(steps=1)), queue.submit(GenerationRequest(steps=1))
    assert a.id != b.id and len(a.id) == 32 and int(a.id, 16) >= 0
    with pytest.raises(Exception):
        a.request.steps = 5  # type: ignore[misc]
    assert queue.get(b.id) is b


def test_bad_request_is_refused_at_submit(queue, engine):
    from modules.validation import RequestError

    with pytest.raises(RequestError, match="width"):
        queue.submit(GenerationRequest(width=500))
    with pytest.raises(RequestError, match="sampler_name"):
        queue.submit(GenerationRequest(sampler_name="No such sampler"))
    assert queue.list_jobs() == [] and engine.calls == []


def test_cancel_queued_job_never_runs(queue, engine):
    release = blocker(engine)
    first = queue.submit(GenerationRequest(prompt="hold", steps=1))
    second = queue.submit(GenerationRequest(prompt="second", steps=1))
    assert second.cancel()
    assert second.status == CANCELLED and "before it started" in second.error
    release.set()
    first.wait(10)
    assert [r.prompt for r in engine.calls] == ["hold"]
    assert second.cancel() is False


def test_interrupt_running_keeps_finished_images(queue, engine):
    job = queue.submit(GenerationRequest(prompt="slow", steps=200, n_iter=1))
    state = job.wait_change(job.snapshot().version, 10)
    while state.status != RUNNING or state.step < 2:
        state = job.wait_change(state.version, 10)
    job.interrupt()
    assert job.wait(10)
    assert job.status == DONE and job.result.interrupted
    assert job.snapshot().step < 200


def test_cancel_running_interrupts(queue):
    job = queue.submit(GenerationRequest(prompt="slow", steps=200))
    for state in job.updates():
        if state.step >= 1:
            break
    assert job.cancel()
    assert job.wait(10) and job.result.interrupted


def test_skip_moves_to_next_image(queue):
    job = queue.submit(GenerationRequest(prompt="slow", steps=40, n_iter=2))
    for state in job.updates():
        if state.step >= 1:
            break
    job.skip()
    assert job.wait(10)
    assert job.status == DONE and not job.result.interrupted
    assert len(job.result.images) == 1  # the first image was skipped, the second made


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("raise", "RuntimeError: the fake engine was asked to fail"),
        ("oom", "Out of memory"),
        ("nan", "NaNs"),
    ],
)
def test_failures_are_reported_and_worker_goes_on(queue, prompt, expected):
    bad = queue.submit(GenerationRequest(prompt=prompt, steps=1))
    good = queue.submit(GenerationRequest(prompt="fine", steps=1))
    assert bad.wait(10) and good.wait(10)
    assert bad.status == FAILED and expected in bad.error
    assert bad.result is None
    assert good.status == DONE and good.result.images


def test_oom_message_suggests_smaller_size():
    import torch

    from modules.queue import describe_error

    text = describe_error(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert "smaller width/height or batch size" in text and "Tried to allocate" in text


def test_max_size_raises_queue_full(queue, engine):
    release = blocker(engine)
    running = queue.submit(GenerationRequest(prompt="hold", steps=1))
    wait_running(running)  # the worker holds it, so exactly max_size can wait
    waiting = [queue.submit(GenerationRequest(steps=1)) for _ in range(4)]
    with pytest.raises(QueueFullError, match="full"):
        queue.submit(GenerationRequest(steps=1))
    release.set()
    assert all(j.wait(10) for j in waiting)
    queue.submit(GenerationRequest(steps=1)).wait(10)  # room again


def test_concurrent_submitters_get_their_own_results(tmp_path):
    engine = FakeEngine(tmp_path)
    queue = JobQueue(engine, max_size=64)
    results: dict[int, tuple] = {}
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            job = queue.submit(GenerationRequest(prompt=f"client {n}", seed=1000 + n, steps=3), owner=f"s{n}")
            events = []
            for state in job.updates():
                assert state.id == job.id and state.owner == f"s{n}"
                events.append(state.step)
            results[n] = (job.result.seeds, job.result.infotexts[0], events)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    queue.shutdown()
    assert not errors
    for n, (seeds, infotext, events) in results.items():
        assert seeds == (1000 + n,)
        assert infotext.startswith(f"client {n}\n")
        assert max(events) <= 3
    assert len(results) == 8


def test_progress_events_belong_to_their_job(queue, engine):
    engine.settings = engine.settings.with_overrides({"live_preview_every": 2})
    release = blocker(engine)
    first = queue.submit(GenerationRequest(prompt="hold", steps=4, seed=1))
    second = queue.submit(GenerationRequest(prompt="other", steps=6, seed=2))
    assert second.snapshot().step == 0
    release.set()
    first_states = list(first.updates())
    assert {s.total_steps for s in first_states if s.total_steps} == {4}
    assert first_states[-1].status == DONE and first_states[-1].fraction == 1.0
    assert first_states[-1].preview is not None
    second.wait(10)
    assert second.snapshot().total_steps == 6


def test_preload_and_tasks_run_on_worker(queue, engine):
    job = queue.preload()
    assert job.wait(10) and job.status == DONE
    assert engine.current_checkpoint is not None
    seen = []
    queue.submit_task(lambda: seen.append(threading.current_thread().name), label="t").wait(10)
    assert seen == ["palette-worker"]


def test_shutdown_cancels_waiting_jobs(engine):
    queue = JobQueue(engine, max_size=8)
    release = blocker(engine)
    running = queue.submit(GenerationRequest(prompt="hold", steps=1))
    waiting = queue.submit(GenerationRequest(steps=1))
    release.set()
    queue.shutdown()
    assert waiting.status in (CANCELLED, DONE)
    assert running.wait(10)
    with pytest.raises(RuntimeError, match="shut down"):
        queue.submit(GenerationRequest())
