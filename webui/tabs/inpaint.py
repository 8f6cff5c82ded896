"""The Inpaint tab: paint a mask over the image (white brush = redraw), or upload one; outpaint by pixels.

The brush editor's layers are the mask (their painted pixels, by alpha); "Upload mask" takes a
black-and-white image instead (white = redraw). Outpainting adds pixels around the image (the new area
is filled from the edges and redrawn); "Resize and fill" outpaints the bands it adds, no painting needed.
The engine (modules/inpaint.py) does the maths; this file only turns widgets into request fields.
"""
from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from modules import inpaint
from modules.types import RESIZE_MODES
from webui import bindings, components, extra_networks, generation, send
from webui.context import UIContext

TAB = "inpaint"
SEND_TARGETS = ("img2img", "inpaint", "extras")
DRAW, UPLOAD = "Draw mask", "Upload mask"
PAD_SIDES = ("left", "right", "up", "down")
NO_IMAGE = "Inpaint needs an image: upload one, or use \"Send to inpaint\" under a result."


def mask_from_layers(editor: Any) -> Image.Image | None:
    """The brush layers as one mode-L mask (a pixel's alpha, the most of any layer); None if unpainted."""
    if not isinstance(editor, dict):
        return None
    layers = [layer for layer in editor.get("layers") or [] if layer is not None]
    alphas = [np.asarray(layer.convert("RGBA"))[..., 3] for layer in layers]
    alphas = [a for a in alphas if a.any()]
    if not alphas:
        return None
    shape = alphas[0].shape
    return Image.fromarray(np.maximum.reduce([a for a in alphas if a.shape == shape]), "L")


def editor_background(editor: Any) -> Image.Image | None:
    if isinstance(editor, dict):
        return editor.get("background")
    return editor  # a plain image ("Send to inpaint", infotext paste)


def prepare_values(values: dict[str, Any]) -> dict[str, Any]:
    """Editor + mask choice + outpainting sliders → init_images, mask and outpaint_pad."""
    values = dict(values)
    editor = values["init_images"]
    background = editor_background(editor)
    if background is None:
        raise ValueError(NO_IMAGE)
    background = background.convert("RGB")
    values["init_images"] = background
    source = values.pop("mask_source", DRAW)
    if source == UPLOAD:
        if values.get("mask") is None:
            raise ValueError("Upload a mask image (white = redraw), or choose \"Draw mask\".")
    else:
        # nothing painted: an empty mask; the engine then outpaints or says the mask is empty
        values["mask"] = mask_from_layers(editor) or Image.new("L", background.size, 0)
    values["outpaint_pad"] = tuple(int(round(float(values.pop(f"outpaint_{side}", 0) or 0))) for side in PAD_SIDES)
    return values


def build(ctx: UIContext, top: dict[str, Any] | None = None) -> None:
    with gr.Row():
        with gr.Column(scale=5):
            prompts = components.prompt_box(TAB, ctx.styles.names() if ctx.styles else [])
            extra_networks.build_panel(ctx, TAB)
            widgets: dict[str, Any] = {"prompt": prompts.prompt, "negative_prompt": prompts.negative_prompt}
            editor = gr.ImageEditor(
                type="pil", label="Image and mask (paint white over what to redraw)", sources=["upload", "clipboard"],
                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24),
                eraser=gr.Eraser(default_size=24), layers=False, transforms=(), height=420,
                elem_id="inpaint-editor",
            )
            with gr.Row():
                mask_source = gr.Radio([DRAW, UPLOAD], value=DRAW, label="Mask source", elem_id="inpaint-mask-source")
            mask = gr.Image(type="pil", image_mode="L", label="Mask (white = redraw)", sources=["upload", "clipboard"],
                            height=240, visible=False, elem_id="inpaint-mask-upload")
            mask_source.change(lambda s: gr.Image(visible=s == UPLOAD), inputs=mask_source, outputs=mask,
                               queue=False, api_visibility="private")
            widgets |= _mask_options()
            widgets |= _img2img_options()
            soft = _soft_inpainting()
            widgets |= soft
            pads = _outpainting()
            controls, seeds = components.generation_controls(ctx.engine, TAB)
            widgets |= controls
        with gr.Column(scale=4):
            panel = components.output_panel(TAB, ctx.is_local, SEND_TARGETS)
    widgets |= {"init_images": editor, "mask": mask}
    if top:
        widgets |= top
    bindings.check_widgets(widgets, bindings.INPAINT_FIELDS)
    ctx.widgets[TAB] = widgets
    ctx.images[TAB] = editor
    extra = {"mask_source": mask_source, **{f"outpaint_{side}": pads[side] for side in PAD_SIDES}}
    generation.wire_generation(ctx, TAB, widgets, prompts.styles, panel, extra_inputs=extra, prepare=prepare_values)
    generation.wire_reuse_seed(panel, seeds.reuse_seed, seeds.reuse_subseed, widgets["seed"], widgets["subseed"])
    send.wire_styles(ctx, prompts)
    components.wire_token_counters(ctx.engine, prompts, widgets["steps"], ctx.styles)
    send.wire_open_folder(ctx, panel, "outdir_img2img_samples")
    ctx.later(lambda c: send.wire_send_buttons(c, panel))


def _mask_options() -> dict[str, Any]:
    defaults = components.DEFAULTS
    with gr.Row():
        blur = gr.Slider(0, inpaint.MAX_MASK_BLUR, value=defaults["mask_blur"], step=1, label="Mask blur",
                         elem_id="inpaint-mask-blur")
        invert = gr.Radio(list(inpaint.MASK_MODES), value=inpaint.MASK_MODES[0], label="Mask mode",
                          elem_id="inpaint-mask-mode")
    content = gr.Radio(list(inpaint.MASKED_CONTENT), value=defaults["inpainting_fill"], label="Masked content",
                       elem_id="inpaint-masked-content")
    with gr.Row():
        area = gr.Radio(list(inpaint.INPAINT_AREAS), value=inpaint.INPAINT_AREAS[0], label="Inpaint area",
                        elem_id="inpaint-area")
        padding = gr.Slider(0, inpaint.MAX_PADDING, value=defaults["inpaint_full_res_padding"], step=4,
                            label="Only masked padding, pixels", elem_id="inpaint-padding")
    return {"mask_blur": blur, "inpainting_mask_invert": invert, "inpainting_fill": content, "inpaint_full_res": area,
            "inpaint_full_res_padding": padding}


def _img2img_options() -> dict[str, Any]:
    resize = gr.Radio(list(RESIZE_MODES[:3]), value=RESIZE_MODES[0], label="Resize mode", elem_id="inpaint-resize-mode")
    denoise = gr.Slider(0, 1, value=components.DEFAULTS["denoising_strength"], step=0.01, label="Denoising strength",
                        elem_id="inpaint-denoise")
    return {"resize_mode": resize, "denoising_strength": denoise}


def _soft_inpainting() -> dict[str, Any]:
    defaults = components.DEFAULTS
    with gr.Accordion("Soft inpainting", open=False, elem_id="inpaint-soft"):
        enable = gr.Checkbox(False, label="Soft inpainting", elem_id="inpaint-soft-enable")
        with gr.Row():
            bias = gr.Slider(0, 8, value=defaults["soft_inpainting_schedule_bias"], step=0.1, label="Schedule bias",
                             elem_id="inpaint-soft-bias")
            keep = gr.Slider(0, 8, value=defaults["soft_inpainting_preservation"], step=0.05,
                             label="Preservation strength", elem_id="inpaint-soft-preservation")
            contrast = gr.Slider(1, 32, value=defaults["soft_inpainting_contrast"], step=0.5,
                                 label="Transition contrast boost", elem_id="inpaint-soft-contrast")
    return {"soft_inpainting": enable, "soft_inpainting_schedule_bias": bias,
            "soft_inpainting_preservation": keep, "soft_inpainting_contrast": contrast}


def _outpainting() -> dict[str, Any]:
    with gr.Accordion("Outpainting", open=False, elem_id="inpaint-outpaint"):
        gr.Markdown("Pixels to add on each side. The result is that much larger; set Width/Height to the "
                    "working size. Tip: Masked content \"latent noise\" or \"fill\" with high denoising.")
        with gr.Row():
            sliders = {side: gr.Slider(0, 512, value=0, step=8, label=f"Outpaint {side}", elem_id=f"inpaint-outpaint-{side}")
                       for side in PAD_SIDES}
    return sliders
