"""The ControlNet tab's place, with a clear notice: ControlNet units are not in the engine yet."""
from __future__ import annotations

import gradio as gr

from webui.context import UIContext

NOTICE = (
    "**ControlNet is not available yet.** The engine does not load ControlNet or T2I-Adapter models in "
    "this version. Models you put in `models/ControlNet` will be picked up once it does."
)


def build(ctx: UIContext) -> None:
    gr.Markdown(NOTICE, elem_id="controlnet-notice", elem_classes=["palette-unavailable"])
