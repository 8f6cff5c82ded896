"""PNG Info: read the generation parameters of any image and send them to txt2img or img2img."""
from __future__ import annotations

import html

import gradio as gr
from PIL import Image

from modules import infotext
from webui import send
from webui.components import escaped
from webui.context import UIContext


def read_parameters(path: str) -> tuple[str, dict[str, str]]:
    """(A1111 "parameters" text, other text chunks) from a PNG, JPEG or WEBP file."""
    with Image.open(path) as image:
        text = infotext.read_infotext(image) or ""
        others = {str(k): str(v) for k, v in image.info.items() if isinstance(v, str) and k != "parameters"}
    return text, others


def show(path: str | None) -> tuple[str, str]:
    if not path:
        return "", ""
    try:
        text, others = read_parameters(path)
    except OSError as exc:
        return f"<div class='palette-error'>Not a readable image: {html.escape(str(exc))}</div>", ""
    extra = "".join(f"<p><b>{html.escape(k)}</b>: {html.escape(v)}</p>" for k, v in others.items())
    body = escaped(text) if text else "<div class='palette-notice'>No generation parameters in this image.</div>"
    return body + extra, text


def build(ctx: UIContext) -> None:
    with gr.Row():
        with gr.Column():
            image = gr.Image(type="filepath", image_mode=None, label="Source", sources=["upload", "clipboard"], height=420,
                             elem_id="png-info-image")
        with gr.Column():
            info = gr.HTML("", elem_id="png-info-text", elem_classes=["infotext"])
            raw = gr.Textbox(visible=False, elem_id="png-info-raw")
            with gr.Row():
                to_txt2img = gr.Button("Send to txt2img", elem_id="png-info-send-to-txt2img")
                to_img2img = gr.Button("Send to img2img", elem_id="png-info-send-to-img2img")
    image.change(show, inputs=image, outputs=[info, raw], api_visibility="private")

    def wire(c: UIContext) -> None:
        send.wire_paste_button(c, to_txt2img, raw, image, "txt2img")
        send.wire_paste_button(c, to_img2img, raw, image, "img2img")

    ctx.later(wire)
