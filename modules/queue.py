"""The job queue: one worker thread owns every call into the Engine that touches the model.

The UI and the REST API never call `engine.generate` themselves; they `submit` a frozen request and
get a `Job` back. The job records its progress (step, ETA, latest preview), its result or a readable
error, and can be cancelled, interrupted or skipped from any thread. Waiters block on conditions,
never poll. A failing job (exception, NaN, out of memory) is reported and the worker goes on.
"""
from __future__ import annotations

import functools
import gc
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from modules.engine import CancelToken
from modules.types import GenerationRequest, ProgressEvent, Result

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
HISTORY = 100  # finished jobs kept for list_jobs()


class QueueFullError(RuntimeError):
    """Too many jobs are waiting; the API answers HTTP 429."""


@dataclass(frozen=True)
class JobState:
    """A consistent snapshot of a job, safe to hand to another thread."""

    id: str
    label: str
    owner: str | None
    status: str
    step: int
    total_steps: int
    job_index: int
    job_count: int
    fraction: float  # 0..1 over the whole job (all batches)
    eta: float | None  # seconds left, once a step has been timed
    preview: Any | None  # latest PIL preview, if the pipeline made one
    result: Result | None
    error: str | None
    version: int  # bumps on every change; pass it back to `wait_change`
    queued_at: float
    started_at: float | None
    finished_at: float | None
    images: tuple[Any, ...] = ()  # PIL images finished so far (the final list is in `result`)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def describe_error(exc: BaseException) -> str:
    """A message that names the cause and what to try, for the UI and the API."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return (
            f"Out of memory: {str(exc).splitlines()[0] if str(exc) else 'the device ran out of memory'}. "
            "Try a smaller width/height or batch size, or enable tiled VAE decoding."
        )
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, FloatingPointError) or "nan" in type(exc).__name__.lower() or " nan" in str(exc).lower():
        return f"{text}. The model produced NaNs: try precision fp32 or 'Keep the VAE in fp32' (--no-half-vae)."
    return text


def free_memory() -> None:
    """After an OOM: drop Python garbage and the allocator caches so the next job can fit."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        mps.empty_cache()


class Job:
    """One unit of work for the worker: a generation request, or a task such as loading a model."""

    def __init__(
        self,
        request: GenerationRequest | None,
        *,
        owner: str | None = None,
        task: Callable[..., Any] | None = None,
        label: str = "",
        restore_checkpoint: bool = False,
        pass_job: bool = False,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.request = request  # frozen dataclass: nobody can change it after submit
        self.owner = owner
        self.restore_checkpoint = restore_checkpoint  # A1111's override_settings_restore_afterwards
        self.label = label or (request.prompt[:80] if request else "task")
        self.token = CancelToken()
        self._task = task
        self._pass_job = pass_job  # the task takes progress= and cancel=, as engine.generate does
        self._cond = threading.Condition()
        self._status = QUEUED
        self._event: ProgressEvent | None = None
        self._preview: Any | None = None
        self._images: list[Any] = []
        self._result: Result | None = None
        self._value: Any = None
        self._error: str | None = None
        self._version = 0
        self._queued_at = time.monotonic()
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._queue: JobQueue | None = None

    # ---- reading --------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        with self._cond:
            return self._status

    @property
    def result(self) -> Result | None:
        with self._cond:
            return self._result

    @property
    def value(self) -> Any:
        """What a task returned (generation jobs: the Result)."""
        with self._cond:
            return self._value

    @property
    def error(self) -> str | None:
        with self._cond:
            return self._error

    def snapshot(self) -> JobState:
        with self._cond:
            ev = self._event
            step, total = (ev.step, ev.total_steps) if ev else (0, 0)
            index, count = (ev.job_index, ev.job_count) if ev else (0, 1)
            fraction = 1.0 if self._status == DONE else 0.0
            if ev and total:
                fraction = min(1.0, (index + step / total) / max(count, 1))
            eta = None
            if self._status == RUNNING and self._started_at and 0 < fraction < 1:
                elapsed = time.monotonic() - self._started_at
                eta = elapsed / fraction * (1 - fraction)
            return JobState(
                self.id, self.label, self.owner, self._status, step, total, index, count, fraction, eta,
                self._preview, self._result, self._error, self._version,
                self._queued_at, self._started_at, self._finished_at, tuple(self._images),
            )

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job is done, failed or cancelled; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._status in FINISHED, timeout)

    def wait_change(self, version: int, timeout: float | None = None) -> JobState:
        """Block until the job's version moves past `version` (or it finishes, or the timeout)."""
        with self._cond:
            self._cond.wait_for(lambda: self._version != version or self._status in FINISHED, timeout)
        return self.snapshot()

    def updates(self, *, min_interval: float = 0.0, timeout: float = 1.0) -> Iterator[JobState]:
        """Yield a snapshot after each change until the job finishes (the last one is final)."""
        state = self.snapshot()
        yield state
        while not state.finished:
            if min_interval:
                time.sleep(min_interval)  # throttle: at most one update per interval
            state = self.wait_change(state.version, timeout)
            yield state

    # ---- control --------------------------------------------------------------------------------
    def cancel(self) -> bool:
        """Queued: drop it. Running: interrupt it (finished images are kept). False if already finished."""
        queue = self._queue
        if queue is not None and queue._remove_pending(self):
            self._finish(CANCELLED, error="cancelled before it started")
            return True
        with self._cond:
            if self._status in FINISHED:
                return False
        self.interrupt()
        return True

    def interrupt(self) -> None:
        self.token.interrupt()
        self._touch()

    def skip(self) -> None:
        """Skip the current image of a batch; the rest of the job goes on."""
        self.token.skip()
        self._touch()

    # ---- worker side ----------------------------------------------------------------------------
    def _touch(self) -> None:
        with self._cond:
            self._version += 1
            self._cond.notify_all()

    def _progress(self, event: ProgressEvent) -> None:
        with self._cond:
            if event.total_steps:  # an images-only event keeps the step counts
                self._event = event
            self._images.extend(event.images)
            if event.preview is not None:
                self._preview = event.preview
            self._version += 1
            self._cond.notify_all()

    def _start(self) -> bool:
        with self._cond:
            if self._status != QUEUED:
                return False
            self._status, self._started_at = RUNNING, time.monotonic()
            self._version += 1
            self._cond.notify_all()
            return True

    def _finish(self, status: str, *, value: Any = None, error: str | None = None) -> None:
        with self._cond:
            if self._status in FINISHED:
                return
            self._status, self._error, self._value = status, error, value
            self._result = value if isinstance(value, Result) else None
            self._finished_at = time.monotonic()
            self._version += 1
            self._cond.notify_all()

    def _run(self, engine: Any) -> Any:
        if self._task is None:
            work = functools.partial(engine.generate, self.request, progress=self._progress, cancel=self.token)
        elif self._pass_job:
            work = functools.partial(self._task, progress=self._progress, cancel=self.token)
        else:
            work = self._task
        if not (self.restore_checkpoint and (self.request is None or self.request.checkpoint)):
            return work()
        previous, setting = engine.current_checkpoint, engine.settings.sd_model_checkpoint
        try:
            return work()
        finally:
            reselect_previous_model(engine, previous, setting)


def reselect_previous_model(engine: Any, previous: Any, setting: str) -> None:
    """After a job that ran on another model: select the one that was current before, as A1111 does
    with `override_settings_restore_afterwards`. Runs on the worker, so the next job sees it. If no
    model was loaded before, the job's model is unloaded unless it is the one the settings name. A
    failure here is logged: the job's images are kept."""
    try:
        current = engine.current_checkpoint
        if previous is not None:
            if current is None or current.path != previous.path:
                engine.select_checkpoint(previous.name)
        elif current is not None and current.name != setting:
            engine.unload()
    except Exception:  # noqa: BLE001 - the job itself succeeded; the next job reloads as needed
        log.exception("could not select %s again after the job", previous.name if previous else setting)
    engine.update_settings(sd_model_checkpoint=setting)


class JobQueue:
    """FIFO of jobs run one at a time by a single worker thread."""

    def __init__(self, engine: Any, max_size: int = 64) -> None:
        self.engine = engine
        self.max_size = max_size
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._running: Job | None = None
        self._history: deque[Job] = deque(maxlen=HISTORY)
        self._stopping = False
        self._worker = threading.Thread(target=self._loop, name="palette-worker", daemon=True)
        self._worker.start()

    # ---- submitting -----------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, *, owner: str | None = None,
               restore_checkpoint: bool = False) -> Job:
        """Queue a generation. A bad field raises `RequestError` (HTTP 422) now, not after the wait.

        `request.checkpoint` switches the model for good (the UI's model picker), unless
        `restore_checkpoint`: then the model current before the job is selected again afterwards."""
        if not isinstance(request, GenerationRequest):
            raise TypeError(f"submit() takes a GenerationRequest, got {type(request).__name__}")
        self.engine.validate(request)
        return self._enqueue(Job(request, owner=owner, restore_checkpoint=restore_checkpoint))

    def submit_task(self, fn: Callable[..., Any], *, label: str, owner: str | None = None, pass_job: bool = False,
                    restore_checkpoint: bool = False) -> Job:
        """Run `fn` on the worker thread (model loads go here so they never race a generation).

        `pass_job`: call `fn(progress=..., cancel=...)` with the job's progress callback and CancelToken,
        so a long task (SD upscale, extras) shows in /progress and stops on interrupt. `restore_checkpoint`:
        select the model current before the task again afterwards (a task that generates with
        `request.checkpoint`, as `submit` does for a generation)."""
        return self._enqueue(Job(None, owner=owner, task=fn, label=label, pass_job=pass_job,
                                 restore_checkpoint=restore_checkpoint))

    def preload(self) -> Job | None:
        """Load the default model on the worker without blocking the caller (launch.py calls this)."""
        load = getattr(self.engine, "current_bundle", None)
        return self.submit_task(load, label="Loading the default model") if load else None

    def _enqueue(self, job: Job) -> Job:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the job queue is shut down")
            if len(self._pending) >= self.max_size:
                raise QueueFullError(f"the queue is full ({self.max_size} jobs waiting); try again later")
            job._queue = self
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def _remove_pending(self, job: Job) -> bool:
        with self._cond:
            try:
                self._pending.remove(job)
            except ValueError:
                return False
            self._history.append(job)
            return True

    # ---- looking ----------------------------------------------------------------------------------
    def list_jobs(self) -> list[Job]:
        """Finished (oldest first), then the running job, then the waiting ones in order."""
        with self._cond:
            running = [self._running] if self._running else []
            return [*self._history, *running, *self._pending]

    def get(self, job_id: str) -> Job | None:
        return next((j for j in self.list_jobs() if j.id == job_id), None)

    @property
    def current(self) -> Job | None:
        with self._cond:
            return self._running

    def pending_count(self) -> int:
        with self._cond:
            return len(self._pending)

    def position(self, job: Job) -> int | None:
        """0-based place among the waiting jobs, or None when not waiting."""
        with self._cond:
            try:
                return self._pending.index(job)
            except ValueError:
                return None

    # ---- worker -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stopping)
                if self._stopping:
                    return
                job = self._pending.popleft()
                self._running = job
            try:
                if job._start():
                    self._execute(job)
            finally:
                with self._cond:
                    self._running = None
                    self._history.append(job)
                    self._cond.notify_all()

    def _execute(self, job: Job) -> None:
        import torch

        try:
            value = job._run(self.engine)
        except torch.OutOfMemoryError as exc:
            job._finish(FAILED, error=describe_error(exc))
            log.error("job %s: %s", job.id, job.error)
            del exc
            free_memory()
        except BaseException as exc:  # noqa: BLE001 - one bad job must not stop the worker
            job._finish(FAILED, error=describe_error(exc))
            log.exception("job %s failed", job.id)
        else:
            job._finish(DONE, value=value)

    def shutdown(self, *, timeout: float | None = 10.0) -> None:
        """Cancel waiting jobs, interrupt the running one and stop the worker."""
        with self._cond:
            self._stopping = True
            pending, self._pending = list(self._pending), deque()
            running = self._running
            self._cond.notify_all()
        for job in pending:
            job._finish(CANCELLED, error="the server is shutting down")
        if running:
            running.interrupt()
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)
