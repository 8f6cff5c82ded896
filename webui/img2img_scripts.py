"""img2img's Script dropdown, as A1111 has it under the generation settings: "None" generates as usual,
"SD upscale" upscales the image and redraws it tile by tile (modules/sd_upscale.py), with A1111's
controls: tile overlap, scale factor and upscaler; the tile size is the Width and Height sliders.

Only the widgets and the job live here; the script itself is the engine's, the same one the API's
`script_name: "SD upscale"` runs.
"""
from __future__ import annotations

import functools
from typing import Any

import gradio as gr

from modules import sd_upscale
from modules.queue import Job
from modules.types import GenerationRequest
from webui.context import UIContext

NONE = "None"
SCRIPTS = (NONE, sd_upscale.SCRIPT_NAME)
HINT = "Will upscale the image by the selected scale factor; use width and height sliders to set tile size"


def build(ctx: UIContext, tab: str) -> dict[str, Any]:
    """The Script dropdown and SD upscale's controls (shown only while it is chosen), keyed by the names
    `run` reads."""
    defaults = sd_upscale.SDUpscaleOptions()
    script = gr.Dropdown(list(SCRIPTS), value=NONE, label="Script", elem_id=f"{tab}-script")
    with gr.Group(visible=False, elem_id=f"{tab}-sd-upscale") as group:
        gr.Markdown(HINT)
        overlap = gr.Slider(0, 256, value=defaults.overlap, step=16, label="Tile overlap",
                            elem_id=f"{tab}-sd-upscale-overlap")
        scale = gr.Slider(1.0, 4.0, value=defaults.scale, step=0.05, label="Scale Factor",
                          elem_id=f"{tab}-sd-upscale-scale")
        upscaler = gr.Radio(ctx.engine.upscalers.names(), value=defaults.upscaler, label="Upscaler",
                            elem_id=f"{tab}-sd-upscale-upscaler")
    script.change(lambda name: gr.Group(visible=name == sd_upscale.SCRIPT_NAME), script, group,
                  api_visibility="private", show_progress="hidden")
    return {"script": script, "sd_upscale_overlap": overlap, "sd_upscale_scale": scale,
            "sd_upscale_upscaler": upscaler}


def run(ctx: UIContext, request: GenerationRequest, values: dict[str, Any], owner: str | None) -> Job | None:
    """Queue the chosen script as one job (progress tile by tile, Interrupt and Skip work), or None for
    "None". Its options are checked by the script before any model work; a bad one fails the job with
    the script's message."""
    if not sd_upscale.is_script(values.get("script")):
        return None
    options = sd_upscale.SDUpscaleOptions(upscaler=str(values.get("sd_upscale_upscaler") or NONE),
                                          scale=float(values.get("sd_upscale_scale") or 2.0),
                                          overlap=int(values.get("sd_upscale_overlap") or 0))
    return ctx.queue.submit_task(functools.partial(sd_upscale.run, ctx.engine, request, options),
                                 label=sd_upscale.SCRIPT_NAME, owner=owner, pass_job=True)
