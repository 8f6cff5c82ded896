"""Generate / Interrupt / Skip for the txt2img and img2img tabs.

Each click submits its own Job and streams only that job's progress back to the browser that asked,
so two sessions generating at once never see each other's images. The stream is a generator that
blocks on the job's condition (no polling) and yields at most a few updates a second.
"""
from __future__ import annotations

import html
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr

from modules.queue import DONE, FAILED, QUEUED, Job, JobState, QueueFullError
from modules.types import GenerationRequest, Result
from webui import bindings
from webui.components import OutputPanel, escaped
from webui.context import UIContext, owner_of, session_of

log = logging.getLogger(__name__)
UPDATE_INTERVAL = 0.25  # seconds between streamed progress updates


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    return f"ETA {seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"ETA {seconds}s"


def progress_html(state: JobState, position: int | None = None) -> str:
    """A progress bar with step, image number and ETA (or the place in the queue)."""
    if state.status == QUEUED:
        ahead = f"{position} job{'s' if position != 1 else ''} ahead" if position else "next"
        text, percent = f"Waiting in queue ({ahead})", 0
    else:
        percent = int(state.fraction * 100)
        image = f" · image {state.job_index + 1}/{state.job_count}" if state.job_count > 1 else ""
        steps = f"Step {state.step}/{state.total_steps}" if state.total_steps else "Starting…"
        text = " · ".join(p for p in (f"{steps}{image}", format_eta(state.eta)) if p)
    return (
        f"<div class='palette-progress' data-status='{state.status}'>"
        f"<div class='palette-progress-bar' style='width:{percent}%'></div>"
        f"<span class='palette-progress-text'>{html.escape(text)} ({percent}%)</span></div>"
    )


def error_html(message: str) -> str:
    return f"<div class='palette-error' role='alert'>{html.escape(message)}</div>"


def notice_html(message: str) -> str:
    return f"<div class='palette-notice'>{html.escape(message)}</div>"


def gallery_items(result: Result, outputs_root: Path) -> list[Any]:
    """Saved files when every image was written under outputs (so downloads keep their infotext)."""
    root = outputs_root.resolve()
    paths = [Path(p).resolve() for p in result.paths]
    if paths and len(paths) == len(result.images) and all(root in p.parents and p.is_file() for p in paths):
        return [str(p) for p in paths]
    return list(result.images)


def last_state(result: Result) -> dict[str, Any]:
    return {
        "images": list(result.images), "infotexts": list(result.infotexts), "seeds": list(result.seeds),
        "subseeds": list(result.subseeds), "selected": 0,
    }


def build_request(ctx: UIContext, values: dict[str, Any], styles: list[str] | None) -> GenerationRequest:
    """Widget values → request, with the selected styles merged into the prompts (as A1111 does)."""
    request = bindings.request_from_values(values)
    if styles and ctx.styles:
        prompt, negative = ctx.styles.apply(list(styles), request.prompt, request.negative_prompt)
        request = request.replace(prompt=prompt, negative_prompt=negative)
    return request


def wire_generation(ctx: UIContext, tab: str, widgets: dict[str, Any], styles: Any, panel: OutputPanel, *,
                    extra_inputs: dict[str, Any] | None = None,
                    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                    script_inputs: dict[str, Any] | None = None,
                    run_script: Callable[[GenerationRequest, dict[str, Any], str | None], Job | None] | None = None,
                    ) -> None:
    """Connect Generate, Interrupt, Skip, the gallery selection, ♻ buttons and Open outputs folder.

    `extra_inputs` are widgets that are not request fields; `prepare(values)` turns them (and any
    widget value that needs it, like the inpaint editor's layers) into request fields. `script_inputs`
    are a script's own widgets (A1111's Script dropdown): `run_script(request, their values, owner)`
    queues the script's job, or returns None to generate as usual."""
    outputs = [panel.progress, panel.preview, panel.gallery, panel.infotext, panel.last]

    def run(request: gr.Request, styles: list[str] | None = None, **values: Any) -> Iterator[dict[Any, Any]]:
        session = session_of(request)
        try:
            script_values = {key: values.pop(key) for key in script_inputs or {}}
            if prepare is not None:
                values = prepare(values)
            job_request = build_request(ctx, values, styles)
            if tab == "img2img" and not job_request.init_images:
                raise ValueError("img2img needs an input image: upload one, or use \"Send to img2img\".")
            job = run_script(job_request, script_values, owner_of(request)) if run_script else None
            if job is None:
                job = ctx.queue.submit(job_request, owner=owner_of(request))
        except (QueueFullError, ValueError, KeyError, TypeError) as exc:
            yield {panel.progress: error_html(str(exc))}
            return
        ctx.set_active(session, tab, job)
        shown_preview, shown_images = None, 0
        try:
            for state in job.updates(min_interval=UPDATE_INTERVAL):
                if state.finished:
                    yield final_update(state)
                    break
                update: dict[Any, Any] = {panel.progress: progress_html(state, ctx.queue.position(job))}
                if state.preview is not None and state.preview is not shown_preview:
                    shown_preview = state.preview
                    update[panel.preview] = gr.Image(value=state.preview, visible=True)
                if len(state.images) > shown_images:  # each batch shows as soon as it is decoded
                    shown_images = len(state.images)
                    update[panel.gallery] = list(state.images)
                yield update
        finally:
            ctx.clear_active(session, tab, job)

    def final_update(state: JobState) -> dict[Any, Any]:
        hidden = gr.Image(value=None, visible=False)
        if state.status == FAILED:
            return {panel.progress: error_html(state.error or "the job failed"), panel.preview: hidden}
        if state.status != DONE or not isinstance(state.result, Result):
            return {panel.progress: notice_html(state.error or "Cancelled."), panel.preview: hidden}
        result = state.result
        note = ""
        if result.interrupted:
            note = notice_html(f"Interrupted: {len(result.images)} image(s) kept.")
        elif not result.images:
            note = notice_html("No images (all were skipped).")
        return {
            panel.progress: note,
            panel.preview: hidden,
            panel.gallery: gallery_items(result, ctx.engine.outputs_root),
            panel.infotext: escaped(result.infotexts[0] if result.infotexts else ""),
            panel.last: last_state(result),
        }

    panel.generate.click(
        run, inputs_kwargs={**widgets, **(extra_inputs or {}), **(script_inputs or {}), "styles": styles},
        outputs=outputs, concurrency_limit=None,
        show_progress="hidden", api_name=f"{tab}_generate",
    )

    def interrupt(request: gr.Request) -> None:
        job = ctx.active(session_of(request), tab)
        if job is not None:
            job.cancel()  # queued: dropped; running: interrupted, finished images kept

    def skip(request: gr.Request) -> None:
        job = ctx.active(session_of(request), tab)
        if job is not None:
            job.skip()

    panel.interrupt.click(interrupt, queue=False, api_visibility="private")
    panel.skip.click(skip, queue=False, api_visibility="private")

    def select(last: dict[str, Any], evt: gr.SelectData) -> tuple[str, dict[str, Any]]:
        index = evt.index if isinstance(evt.index, int) else 0
        last = {**last, "selected": index}
        texts = last.get("infotexts") or []
        return escaped(texts[index] if index < len(texts) else ""), last

    panel.gallery.select(select, inputs=panel.last, outputs=[panel.infotext, panel.last], api_visibility="private")


def wire_reuse_seed(panel: OutputPanel, reuse_seed: Any, reuse_subseed: Any, seed: Any, subseed: Any) -> None:
    """♻: the seed (or variation seed) of the selected image of the last result."""

    def pick(last: dict[str, Any], key: str, current: int) -> int:
        values, index = last.get(key) or [], last.get("selected", 0)
        return values[index] if index < len(values) else current

    reuse_seed.click(lambda last, cur: pick(last, "seeds", cur), inputs=[panel.last, seed], outputs=seed,
                     queue=False, api_visibility="private")
    reuse_subseed.click(lambda last, cur: pick(last, "subseeds", cur), inputs=[panel.last, subseed], outputs=subseed,
                        queue=False, api_visibility="private")


def open_folder(ctx: UIContext, folder: Path) -> None:
    """Only for a server on this machine: the button is hidden otherwise and refuses here too."""
    if not ctx.is_local:
        raise gr.Error("Opening folders is only possible when Palette runs on this computer.")
    folder.mkdir(parents=True, exist_ok=True)
    if sys.platform == "win32":
        os.startfile(folder)  # type: ignore[attr-defined]  # noqa: S606
    else:
        subprocess.Popen(["open" if sys.platform == "darwin" else "xdg-open", str(folder)])  # noqa: S603
