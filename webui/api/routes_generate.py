"""A1111's generation routes: txt2img, img2img, progress, interrupt, skip, png-info and extras.

Generation goes through Palette's JobQueue like the UI's jobs: the route submits, waits off the event
loop, and answers with that job's own result, so concurrent clients never get each other's images.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from fastapi import APIRouter, Depends, Query

from modules.queue import CANCELLED, FAILED
from modules.validation import RequestError
from webui.api import convert
from webui.api.context import ApiContext, failed_job, info_json
from modules import extras, sd_upscale
from modules.extras import text_chunks
from webui.api.images import decode_image, encode_png
from webui.api.models import (
    ExtrasBatchImagesRequest, ExtrasBatchImagesResponse, ExtrasSingleImageRequest, ExtrasSingleImageResponse,
    GenerationFields, GenerationResponse, Img2ImgRequest, PNGInfoRequest, PNGInfoResponse, ProgressResponse,
    ProgressState, Txt2ImgRequest,
)


def owner_of(user: str | None) -> str:
    return f"api:{user}" if user else "api"


async def run_generation(ctx: ApiContext, body: GenerationFields, user: str | None, *, img2img: bool) -> dict[str, Any]:
    """Submit, wait (off the loop), answer as A1111 does; a failed job is a 500 with its cause."""
    request, meta = await ctx.run(convert.to_request, ctx, body, img2img=img2img)
    if img2img and sd_upscale.is_script(body.script_name):
        return await run_sd_upscale(ctx, body, request, meta, user)
    job = ctx.submit(request, owner_of(user), meta)
    await ctx.run(job.wait)
    state = job.snapshot()
    if state.status == FAILED:
        raise failed_job(state.error)
    info = convert.build_info(ctx, request, state.result, meta, cancelled=state.status == CANCELLED)
    info["job_id"] = job.id
    images = await ctx.run(convert.encode_result, state.result) if body.send_images else []
    return {"images": images, "parameters": meta.parameters, "info": info_json(info)}


async def run_sd_upscale(ctx: ApiContext, body: Any, request: Any, meta: Any, user: str | None) -> dict[str, Any]:
    """img2img with script_name "SD upscale": the whole script is one job on the worker, with the job's
    progress and cancel token (so /progress and /interrupt work) and the model restored afterwards
    when override_settings asked for it."""
    opts = await ctx.run(sd_upscale.options_from_args, list(body.script_args or []), ctx.engine.upscalers.names())
    result = await ctx.run_task(functools.partial(sd_upscale.run, ctx.engine, request, opts), "SD upscale",
                                owner_of(user), pass_job=True, restore_checkpoint=meta.restore_checkpoint)
    info = convert.build_info(ctx, request, result, meta, cancelled=result is None)  # None: cancelled while queued
    images = await ctx.run(convert.encode_result, result) if body.send_images else []
    return {"images": images, "parameters": meta.parameters, "info": info_json(info)}


def progress_of(ctx: ApiContext, skip_current_image: bool) -> ProgressResponse:
    """A1111's global progress: the job the worker is running now (generation or model load)."""
    job = ctx.queue.current
    queued = ctx.queue.pending_count()
    if job is None:
        return ProgressResponse(state=ProgressState(job_count=queued, queued=queued))
    state = job.snapshot()
    if job.request is None and not state.total_steps:  # a model load, or a task that reports no steps
        return ProgressResponse(state=ProgressState(job=state.label, job_id=state.id, job_count=1, queued=queued),
                                textinfo=state.label)
    image = None
    if state.preview is not None and not skip_current_image:
        image = encode_png(state.preview)
    return ProgressResponse(
        progress=round(state.fraction, 4),
        eta_relative=round(state.eta or 0.0, 3),
        state=ProgressState(
            skipped=job.token.skipped.is_set(), interrupted=job.token.interrupted.is_set(),
            job=f"Batch {state.job_index + 1} out of {state.job_count}", job_id=state.id,
            job_count=state.job_count, job_no=state.job_index, sampling_step=state.step,
            sampling_steps=state.total_steps, queued=queued,
        ),
        current_image=image,
        textinfo=None,
    )


def png_info(text: str) -> PNGInfoResponse:
    from modules.infotext import parse, read_infotext

    if not text.strip():
        return PNGInfoResponse(info="")
    image = decode_image(text, "image")
    geninfo = read_infotext(image) or ""
    items = {k: v for k, v in text_chunks(image).items() if k != "parameters"}
    parameters = parse(geninfo) if geninfo else {}
    return PNGInfoResponse(info=geninfo, items=items, parameters=parameters)


def extras_sources(ctx: ApiContext, body: Any, items: list[tuple[str, str]], field: str) -> tuple[list, extras.ExtrasOptions]:
    """Options checked and images decoded off the event loop, before the job is queued (fast 422s)."""
    opts = extras.ExtrasOptions.from_fields(body)
    extras.validate(opts, ctx.engine.upscalers.names(), getattr(ctx.engine, "face_restorers", None))
    if not items:
        raise RequestError(field, "send at least one image ({data, name})")
    return [(decode_image(data, field), name) for data, name in items], opts


async def run_extras(ctx: ApiContext, body: Any, items: list[tuple[str, str]], field: str) -> tuple[list[str], str]:
    """Upscale on the worker (model upscalers share the device with generation) → (base64 PNGs, info)."""
    sources, opts = await ctx.run(extras_sources, ctx, body, items, field)
    label = f"Upscale {len(sources)} image(s) with {opts.upscaler_1}"
    result = await ctx.run_task(functools.partial(extras.run, ctx.engine, sources, opts, save_output=False), label, "api",
                                pass_job=True)
    encoded = [await ctx.run(encode_png, image, text_chunks(src).get("parameters"))
               for image, (src, _) in zip(result.images, sources)]
    return encoded, result.infotexts[-1] if result.infotexts else ""


def build(ctx: ApiContext, auth: Callable[..., Any]) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["A1111 generation"])

    @router.post("/txt2img", response_model=GenerationResponse)
    async def txt2img(body: Txt2ImgRequest, user: str | None = Depends(auth)) -> dict[str, Any]:
        """Generate from text; answers when the job is done (429 when the queue is full)."""
        return await run_generation(ctx, body, user, img2img=False)

    @router.post("/img2img", response_model=GenerationResponse)
    async def img2img(body: Img2ImgRequest, user: str | None = Depends(auth)) -> dict[str, Any]:
        """Generate from init_images (base64 / data URLs; remote URLs are refused). Mask and inpainting
        fields are accepted and passed on to the job."""
        return await run_generation(ctx, body, user, img2img=True)

    @router.get("/progress", response_model=ProgressResponse)
    async def progress(skip_current_image: bool = Query(False)) -> ProgressResponse:
        """The running job's progress. Per-job progress: GET /palette/v1/jobs/{id}."""
        return await ctx.run(progress_of, ctx, skip_current_image)

    @router.post("/interrupt")
    async def interrupt() -> dict[str, Any]:
        """Stop the running job; images finished so far are returned to its caller."""
        job = ctx.queue.current
        if job is not None:
            job.interrupt()
        return {}

    @router.post("/skip")
    async def skip() -> dict[str, Any]:
        """Skip the current image of the running job's batch."""
        job = ctx.queue.current
        if job is not None:
            job.skip()
        return {}

    @router.post("/png-info", response_model=PNGInfoResponse)
    async def pnginfo(body: PNGInfoRequest) -> PNGInfoResponse:
        """The generation parameters stored in an image (PNG chunk or EXIF UserComment)."""
        return await ctx.run(png_info, body.image)

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    async def extra_single_image(body: ExtrasSingleImageRequest) -> ExtrasSingleImageResponse:
        """Upscale one image with any upscaler GET /sdapi/v1/upscalers lists (PIL filters, ESRGAN-family
        models), then restore faces (`gfpgan_visibility`, `codeformer_visibility`, `codeformer_weight`;
        GET /sdapi/v1/face-restorers says which can run); runs on the job queue."""
        images, info = await run_extras(ctx, body, [(body.image, "")], "image")
        return ExtrasSingleImageResponse(html_info=info, image=images[0])

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    async def extra_batch_images(body: ExtrasBatchImagesRequest) -> ExtrasBatchImagesResponse:
        """Upscale (and restore faces in) several images ({data, name}) with the same options."""
        images, info = await run_extras(ctx, body, [(i.data, i.name) for i in body.imageList], "imageList")
        return ExtrasBatchImagesResponse(html_info=info, images=images)

    return router
