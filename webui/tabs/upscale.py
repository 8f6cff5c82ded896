"""The Extras (upscale) tab's place: receives "Send to extras"; upscaling is not in the engine yet."""
from __future__ import annotations

import gradio as gr

from webui.context import UIContext

TAB = "extras"
NOTICE = (
    "**Upscaling is not available yet.** Model upscalers (ESRGAN and friends) are not in the engine in "
    "this version. In txt2img, **Hires. fix** with a Latent upscaler enlarges images during generation."
)


def build(ctx: UIContext) -> None:
    gr.Markdown(NOTICE, elem_id="extras-notice", elem_classes=["palette-unavailable"])
    image = gr.Image(type="pil", label="Source image", sources=["upload", "clipboard"], height=360,
                     elem_id="extras-image")
    ctx.images[TAB] = image
