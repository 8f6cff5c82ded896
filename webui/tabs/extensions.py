"""The Extensions tab's place: lists what is in `extensions/`, and says loading is not available yet."""
from __future__ import annotations

import html

import gradio as gr

from webui.context import UIContext

NOTICE = (
    "**Extensions are not available yet.** Palette does not load extension scripts in this version; "
    "folders found in `extensions/` are listed below but are not run."
)


def build(ctx: UIContext) -> None:
    gr.Markdown(NOTICE, elem_id="extensions-notice", elem_classes=["palette-unavailable"])
    folder = ctx.data_dir / "extensions"
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    items = "".join(f"<li>{html.escape(n)}</li>" for n in names) or "<li><em>none found</em></li>"
    gr.HTML(f"<ul class='extension-list'>{items}</ul>", elem_id="extensions-list")
