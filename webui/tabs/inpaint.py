"""The Inpaint tab's place. Masked generation is not in the engine yet, so the tab says so plainly.

"Send to inpaint" already delivers the image here, so the workflow is visible and nothing pretends to
work: there is no Generate button until the engine's inpaint mode exists.
"""
from __future__ import annotations

import gradio as gr

from webui.context import UIContext

TAB = "inpaint"
NOTICE = (
    "**Inpainting is not available yet.** The engine's masked-generation mode has not landed in this "
    "version, so there is no Generate button here. Meanwhile use **img2img** for whole-image changes."
)


def build(ctx: UIContext) -> None:
    gr.Markdown(NOTICE, elem_id="inpaint-notice", elem_classes=["palette-unavailable"])
    image = gr.Image(type="pil", label="Image to inpaint", sources=["upload", "clipboard"], height=360,
                     elem_id="inpaint-image")
    ctx.images[TAB] = image
