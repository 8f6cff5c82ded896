"""What every route needs: the engine, the queue, off-loop waiting, and error → HTTP status mapping.

Waiting for a job (or decoding a large image) must never block the event loop, and must not use up
the shared thread pool either (20 clients waiting would starve every other route), so those calls go
through a limiter of their own.
"""
from __future__ import annotations

import functools
import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import anyio
from fastapi import HTTPException

from modules.queue import FAILED, QueueFullError
from modules.validation import RequestError
from webui.styles import StyleDatabase

T = TypeVar("T")
WAITERS = 512  # concurrent off-loop waits (queue waits, image decoding)
META_KEPT = 512  # per-job API metadata (request echo, notes) kept for /palette/v1/jobs


def unprocessable(field_name: str, message: str) -> HTTPException:
    """FastAPI's own 422 shape, so clients parse Palette's validation errors like pydantic's."""
    return HTTPException(422, detail=[{"loc": ["body", field_name], "msg": message, "type": "value_error"}])


def failed_job(error: str | None) -> HTTPException:
    """A job's failure: a RequestError raised inside the engine is still the client's 422."""
    text = error or "the job failed"
    name, _, rest = text.partition(": ")
    if name == "RequestError" and ": " in rest:
        field_name, _, message = rest.partition(": ")
        return unprocessable(field_name, message)
    return HTTPException(500, detail=text)


def jsonable(value: Any) -> Any:
    """JSON-safe copy: tuples → lists, non-finite floats → None, unknown objects → str."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


@dataclass
class JobMeta:
    """What the API knew when it submitted a job: the echoed request and notes for `info`."""

    parameters: dict[str, Any]
    notes: list[str]
    restore_checkpoint: bool = False  # override_settings.sd_model_checkpoint, restored afterwards


@dataclass
class ApiContext:
    engine: Any
    queue: Any
    options: Any
    data_dir: Path
    styles: StyleDatabase
    _limiter: anyio.CapacityLimiter | None = None
    _meta: OrderedDict[str, JobMeta] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, engine: Any, queue: Any, options: Any) -> "ApiContext":
        data_dir = Path(getattr(options, "data_dir", None) or getattr(engine, "outputs_root", "."))
        return cls(engine, queue, options, data_dir, StyleDatabase(data_dir / "styles.csv"))

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking work in a worker thread; RequestError becomes a 422 naming the field."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(WAITERS)
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._limiter)
        except RequestError as exc:
            raise unprocessable(exc.field, exc.message) from None

    def submit(self, request: Any, owner: str | None, meta: JobMeta) -> Any:
        try:
            job = self.queue.submit(request, owner=owner, restore_checkpoint=meta.restore_checkpoint)
        except QueueFullError as exc:
            raise HTTPException(429, detail=str(exc)) from None
        with self._lock:
            self._meta[job.id] = meta
            while len(self._meta) > META_KEPT:
                self._meta.popitem(last=False)
        return job

    def meta(self, job_id: str) -> JobMeta | None:
        with self._lock:
            return self._meta.get(job_id)

    async def run_task(self, fn: Callable[..., T], label: str, owner: str | None, *, pass_job: bool = False,
                       restore_checkpoint: bool = False) -> T:
        """Model loads/unloads and scripts go through the worker so they never race a generation
        (`pass_job`, `restore_checkpoint`: see `JobQueue.submit_task`)."""
        try:
            job = self.queue.submit_task(fn, label=label, owner=owner, pass_job=pass_job,
                                         restore_checkpoint=restore_checkpoint)
        except QueueFullError as exc:
            raise HTTPException(429, detail=str(exc)) from None
        await self.run(job.wait)
        if job.status == FAILED:
            raise failed_job(job.error)
        return job.value


def info_json(info: dict[str, Any]) -> str:
    return json.dumps(jsonable(info), ensure_ascii=False)
