"""Palette's own job API (beyond A1111): submit without waiting, look, cancel, stream progress.

`POST /palette/v1/jobs` answers at once with an id; `GET /palette/v1/jobs/{id}` gives that job's own
progress and result, and `/events` streams it as server-sent events, so two clients' progress never
mixes (A1111's /progress only shows whatever runs now).
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import StreamingResponse

from modules.queue import CANCELLED, DONE, FAILED
from webui.api import convert
from webui.api.context import ApiContext, info_json
from webui.api.models import JobCreated, JobInfo, JobRequest
from webui.api.routes_generate import owner_of

KEEPALIVE_S = 10.0


def job_info(ctx: ApiContext, job: Any, *, with_result: bool = False, images: bool = False) -> JobInfo:
    state = job.snapshot()
    out = JobInfo(
        id=state.id, label=state.label, owner=state.owner, status=state.status, position=ctx.queue.position(job),
        progress=round(state.fraction, 4), step=state.step, total_steps=state.total_steps,
        job_index=state.job_index, job_count=state.job_count,
        eta_relative=None if state.eta is None else round(state.eta, 3), error=state.error,
    )
    if with_result and job.request is not None and state.status in (DONE, CANCELLED):
        info = convert.build_info(ctx, job.request, state.result, ctx.meta(job.id), cancelled=state.status == CANCELLED)
        info["job_id"] = job.id
        out.info = info_json(info)
        if images:
            out.images = convert.encode_result(state.result)
    return out


def _event(name: str, data: JobInfo) -> str:
    return f"event: {name}\ndata: {json.dumps(data.model_dump(exclude_none=True))}\n\n"


def build(ctx: ApiContext, auth: Callable[..., Any]) -> APIRouter:
    router = APIRouter(prefix="/palette/v1", tags=["Palette jobs"])

    def find(job_id: str) -> Any:
        job = ctx.queue.get(job_id)
        if job is None:
            raise HTTPException(404, detail=f"no job {job_id!r} (finished jobs are kept for a while, then dropped)")
        return job

    @router.post("/jobs", response_model=JobCreated, status_code=202)
    async def create_job(body: JobRequest, user: str | None = Depends(auth)) -> JobCreated:
        """Queue a txt2img job (img2img when `init_images` is given; A1111 field names) and answer at
        once with its id. 422 names a bad field; 429 when the queue is full."""
        request, meta = await ctx.run(convert.to_request, ctx, body, img2img=bool(body.init_images))
        job = ctx.submit(request, owner_of(user), meta)
        return JobCreated(id=job.id, status=job.status, position=ctx.queue.position(job))

    @router.get("/jobs", response_model=list[JobInfo])
    async def list_jobs() -> list[JobInfo]:
        """Finished jobs (oldest first), the running one, then the waiting ones in order."""
        return [job_info(ctx, job) for job in ctx.queue.list_jobs()]

    @router.get("/jobs/{job_id}", response_model=JobInfo, response_model_exclude_none=True)
    async def get_job(job_id: str, images: bool = Query(False, description="include base64 PNGs")) -> JobInfo:
        """One job: status and progress; once done, `info` (A1111's JSON string) and optionally images."""
        job = find(job_id)
        return await ctx.run(job_info, ctx, job, with_result=True, images=images)

    @router.delete("/jobs/{job_id}")
    async def cancel_job(job_id: str, user: str | None = Depends(auth)) -> dict[str, Any]:
        """Cancel a waiting job, or interrupt the running one (its finished images are kept)."""
        job = find(job_id)
        if user is not None and (job.owner or "").startswith("api:") and job.owner != owner_of(user):
            raise HTTPException(403, detail="this job belongs to another API user")
        cancelled = job.cancel()
        return {"id": job.id, "cancelled": cancelled, "status": job.status}

    @router.get("/jobs/{job_id}/events", response_class=StreamingResponse,
                responses={200: {"content": {"text/event-stream": {}},
                                 "description": "`event: progress` after each change (JobInfo as JSON), "
                                                "then one `event: done|failed|cancelled`"}})
    async def job_events(job_id: str) -> StreamingResponse:
        """Server-sent events of one job's progress until it finishes."""
        job = find(job_id)

        async def stream() -> AsyncIterator[str]:
            state = job.snapshot()
            yield _event("progress", job_info(ctx, job))
            while not state.finished:
                new = await ctx.run(job.wait_change, state.version, KEEPALIVE_S)
                if new.version == state.version and not new.finished:
                    yield ": keepalive\n\n"
                    continue
                state = new
                if not state.finished:
                    yield _event("progress", job_info(ctx, job))
            final = await ctx.run(job_info, ctx, job, with_result=True)
            yield _event({DONE: "done", FAILED: "failed"}.get(state.status, "cancelled"), final)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    return router
