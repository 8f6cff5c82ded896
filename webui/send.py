"""Cross-tab actions: "Send to img2img / inpaint / extras", pasting an infotext into a tab, styles.

Filling a tab from an infotext goes through bindings.values_from_infotext, so every field the text
carries lands in the widget bound to that request field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from webui import bindings
from webui.components import OutputPanel, PromptBox
from webui.context import UIContext
from webui.generation import open_folder
from webui.styles import Style


def selected(last: dict[str, Any]) -> tuple[Any | None, str]:
    """The selected image of the last result and its infotext."""
    images, texts = last.get("images") or [], last.get("infotexts") or []
    index = last.get("selected", 0)
    image = images[index] if index < len(images) else None
    return image, texts[index] if index < len(texts) else ""


def paste_outputs(ctx: UIContext, tab: str) -> tuple[list[Any], tuple[str, ...]]:
    """Widgets a paste into `tab` may fill (never the model, the VAE or the init image)."""
    names = tuple(n for n in ctx.widgets.get(tab, {}) if n not in bindings.PASTE_SKIPS)
    return [ctx.widgets[tab][n] for n in names], names


def paste_update(ctx: UIContext, tab: str, text: str, image: Any | None) -> dict[Any, Any]:
    """Widget updates for `tab` from an infotext, the image for its input, and the tab switch."""
    update: dict[Any, Any] = {ctx.tabs: gr.Tabs(selected=tab)}
    if text and tab in ctx.widgets:
        _, names = paste_outputs(ctx, tab)
        try:
            values = bindings.values_from_infotext(text, names)
        except ValueError as exc:
            raise gr.Error(f"Could not read these parameters: {exc}") from None
        for name, value in values.items():
            update[ctx.widgets[tab][name]] = value
    if image is not None and tab in ctx.images:
        update[ctx.images[tab]] = image
    return update


def targets_of(ctx: UIContext, tab: str) -> list[Any]:
    widgets, _ = paste_outputs(ctx, tab)
    image = [ctx.images[tab]] if tab in ctx.images else []
    return [ctx.tabs, *widgets, *image]


def wire_send_buttons(ctx: UIContext, panel: OutputPanel) -> None:
    """Each "Send to X" button carries the selected image (and, to img2img, its parameters)."""
    for tab, button in panel.send.items():
        def send(last: dict[str, Any], tab: str = tab) -> dict[Any, Any]:
            image, text = selected(last)
            if image is None:
                raise gr.Error("Generate an image first.")
            return paste_update(ctx, tab, text if tab == "img2img" else "", image)

        button.click(send, inputs=panel.last, outputs=targets_of(ctx, tab), api_visibility="private")


def wire_paste_button(ctx: UIContext, button: Any, text: Any, image: Any, tab: str) -> None:
    """PNG Info's "Send to txt2img/img2img": every field from the infotext, plus the image for img2img."""

    def paste(infotext: str, picture: Any) -> dict[Any, Any]:
        if not infotext:
            raise gr.Error("This image has no generation parameters.")
        return paste_update(ctx, tab, infotext, picture if tab in ctx.images else None)

    button.click(paste, inputs=[text, image], outputs=targets_of(ctx, tab), api_visibility="private")


def wire_styles(ctx: UIContext, prompts: PromptBox) -> None:
    """Apply: merge the selected styles into the prompt boxes. Save: current prompts as a new style."""
    db = ctx.styles

    def apply(names: list[str], prompt: str, negative: str) -> tuple[str, str, Any]:
        if db is None:
            return prompt, negative, gr.Dropdown()
        prompt, negative = db.apply(list(names or ()), prompt, negative)
        return prompt, negative, gr.Dropdown(value=[])

    def save(name: str, prompt: str, negative: str) -> tuple[Any, str]:
        if db is None:
            raise gr.Error("No styles file configured.")
        try:
            db.save(Style(name.strip(), prompt, negative))
        except (ValueError, OSError) as exc:
            raise gr.Error(str(exc)) from None
        return gr.Dropdown(choices=db.names()), ""

    prompts.apply_styles.click(
        apply, inputs=[prompts.styles, prompts.prompt, prompts.negative_prompt],
        outputs=[prompts.prompt, prompts.negative_prompt, prompts.styles], api_visibility="private",
    )
    prompts.save_style.click(
        save, inputs=[prompts.style_name, prompts.prompt, prompts.negative_prompt],
        outputs=[prompts.styles, prompts.style_name], api_visibility="private",
    )


def wire_open_folder(ctx: UIContext, panel: OutputPanel, setting: str) -> None:
    if panel.open_folder is None or not ctx.is_local:
        return

    def open_outputs() -> None:
        relative = getattr(ctx.engine.settings, setting)
        root = Path(ctx.engine.outputs_root)
        open_folder(ctx, Path(relative) if Path(relative).is_absolute() else root / relative)

    panel.open_folder.click(open_outputs, api_visibility="private")
