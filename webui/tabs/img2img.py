"""The img2img tab: an input image, resize mode and denoising strength, plus the txt2img controls and
A1111's Script dropdown (SD upscale; webui/img2img_scripts.py)."""
from __future__ import annotations

from typing import Any

import gradio as gr

from webui import bindings, components, extra_networks, generation, img2img_scripts, send
from webui.context import UIContext

TAB = "img2img"
SEND_TARGETS = ("img2img", "inpaint", "extras")


def build(ctx: UIContext, top: dict[str, Any]) -> None:
    with gr.Row():
        with gr.Column(scale=5):
            prompts = components.prompt_box(TAB, ctx.styles.names() if ctx.styles else [])
            extra_networks.build_panel(ctx, TAB)
            widgets: dict[str, Any] = {"prompt": prompts.prompt, "negative_prompt": prompts.negative_prompt}
            widgets |= components.img2img_inputs(TAB)
            controls, seeds = components.generation_controls(ctx.engine, TAB)
            widgets |= controls
            scripts = img2img_scripts.build(ctx, TAB)
        with gr.Column(scale=4):
            panel = components.output_panel(TAB, ctx.is_local, SEND_TARGETS)
    widgets |= top
    bindings.check_widgets(widgets, bindings.IMG2IMG_FIELDS)
    ctx.widgets[TAB] = widgets
    ctx.images[TAB] = widgets["init_images"]
    generation.wire_generation(ctx, TAB, widgets, prompts.styles, panel, script_inputs=scripts,
                               run_script=lambda request, values, owner: img2img_scripts.run(ctx, request, values, owner))
    generation.wire_reuse_seed(panel, seeds.reuse_seed, seeds.reuse_subseed, widgets["seed"], widgets["subseed"])
    send.wire_styles(ctx, prompts)
    components.wire_token_counters(ctx.engine, prompts, widgets["steps"], ctx.styles)
    send.wire_open_folder(ctx, panel, "outdir_img2img_samples")
    ctx.later(lambda c: send.wire_send_buttons(c, panel))
