"""The Gradio app: top bar, tab registry, and the server launch with Palette's security rules.

Building the UI never loads a model: the checkpoint list comes from the folder, the model loads on the
worker thread (launch.py's `queue.preload()` or the first job) and the top bar shows that state.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr

from modules.queue import FAILED, FINISHED
from modules.types import CheckpointHints
from webui import components
from webui.context import UIContext
from webui.styles import StyleDatabase
from webui.tabs import controlnet, extensions, img2img, inpaint, png_info, queue_view, settings, txt2img, upscale

log = logging.getLogger(__name__)

# (tab id, label, builder). Extension tabs will be appended here once extensions load.
TABS: list[tuple[str, str, Callable[..., Any]]] = [
    ("txt2img", "txt2img", txt2img.build),
    ("img2img", "img2img", img2img.build),
    ("inpaint", "Inpaint", inpaint.build),
    ("controlnet", "ControlNet", controlnet.build),
    ("extras", "Extras (upscale)", upscale.build),
    ("png_info", "PNG Info", png_info.build),
    ("queue", "Queue", queue_view.build),
    ("settings", "Settings", settings.build),
    ("extensions", "Extensions", extensions.build),
]


def notices_html(engine: Any) -> str:
    items = "".join(f"<li>{html.escape(n)}</li>" for n in getattr(engine, "notices", []))
    return f"<div class='palette-warning' role='alert'><b>Attention</b><ul>{items}</ul></div>" if items else ""


def model_status(ctx: UIContext) -> tuple[str, bool]:
    """(HTML for the top bar, whether a model load is still under way)."""
    tasks = [j.snapshot() for j in ctx.queue.list_jobs() if j.request is None]
    busy = [s for s in tasks if s.status not in FINISHED]
    if busy:
        return f"<span class='model-loading'>\u23f3 {html.escape(busy[0].label)}…</span>", True
    current = ctx.engine.current_checkpoint
    if current is not None:
        return f"<span class='model-ready'>Model: {html.escape(current.title)}</span>", False
    failed = [s for s in tasks if s.status == FAILED]
    if failed:
        return f"<span class='palette-error'>Model not loaded: {html.escape(failed[-1].error or '')}</span>", False
    return "<span class='model-idle'>No model loaded yet; it loads with the first job.</span>", False


SIZED_TABS = ("txt2img", "img2img", "inpaint")
A1111_DEFAULTS = CheckpointHints(size=512, cfg_scale=7.0)  # what the sliders go back to after a hinting model


def hinted_widgets(ctx: UIContext) -> list[Any]:
    """The width, height and CFG sliders of every generating tab: what a checkpoint's hints set."""
    return [ctx.widgets[tab][key] for tab in SIZED_TABS if tab in ctx.widgets for key in ("width", "height", "cfg_scale")]


def hint_updates(ctx: UIContext, hints: CheckpointHints, left: CheckpointHints = CheckpointHints()) -> dict[Any, Any]:
    """Slider values for a checkpoint's hints; where the new model gives none but the model `left`
    behind did, A1111's default comes back. Sliders neither model speaks of are left as they are."""
    size = hints.size or (A1111_DEFAULTS.size if left.size else None)
    cfg = hints.cfg_scale or (A1111_DEFAULTS.cfg_scale if left.cfg_scale else None)
    updates: dict[Any, Any] = {}
    for tab in SIZED_TABS:
        widgets = ctx.widgets.get(tab, {})
        if size and "width" in widgets:
            updates[widgets["width"]] = updates[widgets["height"]] = size
        if cfg and "cfg_scale" in widgets:
            updates[widgets["cfg_scale"]] = cfg
    return updates


def wire_top_bar(ctx: UIContext, top: components.TopBar, status_timer: gr.Timer) -> None:
    """Checkpoint, VAE and clip-skip controls. A checkpoint that names its native size and CFG scale (the
    demo model: 256, 4) sets those sliders when it is chosen, so a newcomer's first picture is drawn the
    way the model knows; leaving it for another model puts A1111's 512 and 7 back."""
    engine, queue = ctx.engine, ctx.queue
    checkpoint, vae, clip_skip = top.widgets["checkpoint"], top.widgets["vae"], top.widgets["clip_skip"]

    def load_checkpoint(name: str | None) -> Iterator[dict[Any, Any]]:
        current = engine.current_checkpoint
        if not name or (current is not None and current.name == name):
            yield {top.status: model_status(ctx)[0]}
            return
        label = f"Loading {name}"
        job = next((j for j in queue.list_jobs() if j.request is None and j.label == label and j.status not in FINISHED),
                   None) or queue.submit_task(lambda: engine.select_checkpoint(name), label=label)
        yield {top.status: model_status(ctx)[0]}
        job.wait()
        if job.status == FAILED:
            back = current.name if current else None
            yield {top.status: f"<span class='palette-error'>{html.escape(job.error or '')}</span>", checkpoint: back}
            return
        engine.save_settings()
        left = engine.checkpoint_hints(current.name) if current else CheckpointHints()
        yield {top.status: model_status(ctx)[0], **hint_updates(ctx, engine.checkpoint_hints(name), left)}

    checkpoint.input(load_checkpoint, inputs=checkpoint, outputs=[top.status, checkpoint, *hinted_widgets(ctx)],
                     api_visibility="private", concurrency_limit=None)

    def refresh() -> dict[Any, Any]:
        return {
            checkpoint: gr.Dropdown(choices=components.checkpoint_choices(engine), value=components.checkpoint_value(engine)),
            vae: gr.Dropdown(choices=components.vae_choices(engine)),
            top.status: model_status(ctx)[0],
        }

    top.refresh.click(refresh, outputs=[checkpoint, vae, top.status], api_visibility="private")

    def save_quick(name: str, value: Any) -> None:
        engine.update_settings(**{name: value})
        engine.save_settings()

    vae.input(lambda v: save_quick("sd_vae", v), inputs=vae, api_visibility="private")
    clip_skip.input(lambda v: save_quick("CLIP_stop_at_last_layers", int(v)), inputs=clip_skip, api_visibility="private")

    def tick() -> dict[Any, Any]:
        text, busy = model_status(ctx)
        return {top.status: text, status_timer: gr.Timer(active=busy)}

    status_timer.tick(tick, outputs=[top.status, status_timer], show_progress="hidden", api_visibility="private")


def build_ui(engine: Any, queue: Any, options: Any = None) -> gr.Blocks:
    """The whole UI as a gr.Blocks (not launched). `options`: LaunchOptions, or None for local defaults."""
    data_dir = Path(getattr(options, "data_dir", None) or engine.outputs_root)
    ctx = UIContext(engine, queue, is_local=getattr(options, "is_local", True), data_dir=data_dir,
                    styles=StyleDatabase(data_dir / "styles.csv"))
    with gr.Blocks(title="Palette", analytics_enabled=False) as demo:
        notices = gr.HTML(notices_html(engine), elem_id="palette-notices")
        top = components.top_bar(engine)
        status_timer = gr.Timer(1.0, active=True)
        queue_timer = None
        with gr.Tabs(elem_id="palette-tabs") as tabs:
            ctx.tabs = tabs
            for tab_id, label, build in TABS:
                with gr.Tab(label, id=tab_id, elem_id=f"tab-{tab_id}"):
                    if tab_id in ("txt2img", "img2img", "inpaint"):
                        build(ctx, top.widgets)
                    elif tab_id == "queue":
                        queue_timer = build(ctx)
                    else:
                        build(ctx)
        for wire in ctx.wiring:
            wire(ctx)
        wire_top_bar(ctx, top, status_timer)
        if queue_timer is not None:
            _wire_queue_timer(tabs, queue_timer)

        def on_load() -> dict[Any, Any]:
            text, busy = model_status(ctx)
            return {
                notices: notices_html(engine),
                top.status: text,
                status_timer: gr.Timer(active=busy),
                top.widgets["checkpoint"]: gr.Dropdown(choices=components.checkpoint_choices(engine),
                                                       value=components.checkpoint_value(engine)),
                top.widgets["vae"]: gr.Dropdown(choices=components.vae_choices(engine), value=engine.settings.sd_vae),
                top.widgets["clip_skip"]: engine.settings.CLIP_stop_at_last_layers,
                **hint_updates(ctx, engine.checkpoint_hints(components.checkpoint_value(engine))),
            }

        demo.load(on_load, outputs=[notices, top.status, status_timer, *top.widgets.values(), *hinted_widgets(ctx)],
                  api_visibility="private")
    demo.palette_context = ctx  # type: ignore[attr-defined]  # for tests and the API hook
    return demo


def _wire_queue_timer(tabs: gr.Tabs, timer: gr.Timer) -> None:
    """Refresh the Queue tab only while it is the one shown."""

    def selected(evt: gr.SelectData) -> gr.Timer:
        return gr.Timer(active=evt.value == "Queue")

    tabs.select(selected, outputs=timer, api_visibility="private")


from webui.server import launch_ui  # noqa: E402  (re-exported: launch.py imports it from here)

__all__ = ["build_ui", "launch_ui", "TABS"]
