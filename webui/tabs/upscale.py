"""The Extras (upscale) tab: one image, uploaded files, or a server folder, through one or two upscalers,
then GFPGAN and CodeFormer face restoration.

The work itself is `modules.extras.run`, queued on the worker like a generation (model upscalers and
face restorers share the device). Results are saved to the extras folder with A1111's postprocess
infotext. A server folder is read only inside Palette's data folder.
"""
from __future__ import annotations

import functools
import html
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
from PIL import Image

from modules import extras
from modules.queue import DONE, FAILED, QueueFullError
from modules.validation import RequestError
from webui.context import UIContext, owner_of
from webui.generation import error_html, notice_html

TAB = "extras"
RESIZE_MODES = ("Scale by", "Scale to")


def face_note(engine: Any) -> str:
    """What cannot run whatever files are added (CodeFormer without its optional package); a missing
    model file is reported, naming the folder, when Generate is clicked."""
    registry = getattr(engine, "face_restorers", None)
    if registry is None:
        return "Face restoration is not available on this engine."
    return "\n\n".join(f"{info.name} is not available: {info.unsupported}" for info in registry.list()
                       if info.unsupported)


def upscaler_choices(engine: Any) -> list[str]:
    return [info.name for info in engine.list_upscalers()]


def _open(path: str) -> tuple[Image.Image, str]:
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy(), Path(path).name
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RequestError("image", f"{Path(path).name} is not a readable image ({exc})") from None


def sources_for(ctx: UIContext, source: str, image: Any, files: Any, input_dir: str) -> list[tuple[Image.Image, str]]:
    """The images the chosen source tab holds; a clear error when it holds none."""
    if source == "folder":
        roots, refused = extras.input_roots(ctx.engine, Path(ctx.data_dir))
        folder = extras.allowed_folder(roots, input_dir, "input_dir", refused=refused)
        return [_open(str(p)) for p in extras.folder_images(folder, roots, refused=refused)]
    if source == "batch":
        paths = [f if isinstance(f, str) else getattr(f, "name", None) for f in (files or [])]
        if not [p for p in paths if p]:
            raise RequestError("image", "upload one or more images first")
        return [_open(p) for p in paths if p]
    if image is None:
        raise RequestError("image", "upload an image first, or use \"Send to extras\"")
    return [(image, "")]


def build(ctx: UIContext) -> None:
    names = upscaler_choices(ctx.engine)
    with gr.Row():
        with gr.Column(scale=5):
            # The chosen source tab, set in the browser (no server round trip that a quick Generate
            # click could overtake).
            source = gr.Textbox("single", visible=False, elem_id="extras-source-kind")
            with gr.Tabs(elem_id="extras-source"):
                with gr.Tab("Single Image", id="single", elem_id="extras-single-tab") as single_tab:
                    image = gr.Image(type="pil", label="Source image", sources=["upload", "clipboard"], height=360,
                                     elem_id="extras-image")
                with gr.Tab("Batch Process", id="batch", elem_id="extras-batch-tab") as batch_tab:
                    files = gr.File(file_count="multiple", file_types=["image"], label="Images",
                                    elem_id="extras-batch-files")
                with gr.Tab("Batch from Directory", id="folder", elem_id="extras-folder-tab") as folder_tab:
                    input_dir = gr.Textbox(label="Input directory (inside Palette's data folder)",
                                           elem_id="extras-input-dir")
            for tab, name in ((single_tab, "single"), (batch_tab, "batch"), (folder_tab, "folder")):
                tab.select(None, outputs=source, js=f"() => {name!r}", queue=False, api_visibility="private")
            resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize",
                                   elem_id="extras-resize-mode")
            scale = gr.Slider(1.0, 8.0, value=4.0, step=0.05, label="Resize", elem_id="extras-upscaling-resize")
            with gr.Row():
                width = gr.Slider(64, 8192, value=512, step=8, label="Width", elem_id="extras-resize-w")
                height = gr.Slider(64, 8192, value=512, step=8, label="Height", elem_id="extras-resize-h")
                crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras-crop")
            with gr.Row():
                upscaler_1 = gr.Dropdown(names, value="None", label="Upscaler 1", elem_id="extras-upscaler-1", scale=4)
                refresh = gr.Button("\U0001f504", elem_id="extras-refresh-upscalers", scale=0, min_width=48)
            with gr.Row():
                upscaler_2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras-upscaler-2", scale=4)
                visibility = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="Upscaler 2 visibility",
                                       elem_id="extras-upscaler-2-visibility", scale=3)
            gfpgan = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="GFPGAN visibility",
                               elem_id="extras-gfpgan-visibility")
            with gr.Row():
                codeformer = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="CodeFormer visibility",
                                       elem_id="extras-codeformer-visibility", scale=3)
                codeformer_weight = gr.Slider(0.0, 1.0, value=0.5, step=0.001,
                                              label="CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
                                              elem_id="extras-codeformer-weight", scale=3)
            note = face_note(ctx.engine)
            if note:
                gr.Markdown(note, elem_id="extras-face-note", elem_classes=["palette-unavailable"])
        with gr.Column(scale=4):
            run_button = gr.Button("Generate", variant="primary", elem_id="extras-generate")
            progress = gr.HTML("", elem_id="extras-progress")
            gallery = gr.Gallery(label="Output", columns=2, height=512, object_fit="contain", format="png",
                                 interactive=False, elem_id="extras-gallery")
            info = gr.HTML("", elem_id="extras-infotext", elem_classes=["infotext"])
    ctx.images[TAB] = image

    def refresh_lists() -> tuple[Any, Any]:
        choices = upscaler_choices(ctx.engine)
        return gr.Dropdown(choices=choices), gr.Dropdown(choices=choices)

    refresh.click(refresh_lists, outputs=[upscaler_1, upscaler_2], api_visibility="private")

    def run(request: gr.Request, source: str, image: Any, files: Any, input_dir: str, resize_mode: str,
            scale: float, width: float, height: float, crop: bool, upscaler_1: str, upscaler_2: str,
            visibility: float, gfpgan: float, codeformer: float, codeformer_weight: float) -> Iterator[dict[Any, Any]]:
        opts = extras.ExtrasOptions(
            resize_mode=RESIZE_MODES.index(resize_mode), upscaling_resize=float(scale),
            upscaling_resize_w=int(width), upscaling_resize_h=int(height), upscaling_crop=bool(crop),
            upscaler_1=upscaler_1 or "None", upscaler_2=upscaler_2 or "None",
            extras_upscaler_2_visibility=float(visibility), gfpgan_visibility=float(gfpgan),
            codeformer_visibility=float(codeformer), codeformer_weight=float(codeformer_weight),
        )
        try:
            extras.validate(opts, ctx.engine.upscalers.names(), getattr(ctx.engine, "face_restorers", None))
            items = sources_for(ctx, source, image, files, input_dir)
            job = ctx.queue.submit_task(functools.partial(extras.run, ctx.engine, items, opts, save_output=True),
                                        label=f"Upscale {len(items)} image(s) with {opts.upscaler_1}",
                                        owner=owner_of(request), pass_job=True)
        except (RequestError, QueueFullError) as exc:
            message = exc.message if isinstance(exc, RequestError) else str(exc)
            yield {progress: error_html(message)}
            return
        yield {progress: notice_html(f"Upscaling {len(items)} image(s)…")}
        job.wait()
        if job.status == FAILED or job.status != DONE:
            yield {progress: error_html(job.error or "the upscale was cancelled")}
            return
        result: extras.ExtrasResult = job.value
        shown = [str(p) for p in result.paths] if len(result.paths) == len(result.images) else list(result.images)
        text = result.infotexts[0] if result.infotexts else ""
        yield {progress: "", gallery: shown,
               info: f"<div class='infotext-body'>{html.escape(text)}</div>"}

    run_button.click(run, inputs=[source, image, files, input_dir, resize_mode, scale, width, height, crop,
                                  upscaler_1, upscaler_2, visibility, gfpgan, codeformer, codeformer_weight],
                     outputs=[progress, gallery, info], concurrency_limit=None, show_progress="hidden",
                     api_visibility="private")
