"""Settings: one widget per `modules.config.Settings` field, grouped by its metadata, saved atomically.

Adding an option to config.py is enough for it to appear here: the widget kind follows the field's
type and metadata (choices → dropdown, bounds → slider, dict → JSON).
"""
from __future__ import annotations

import html
import json
import typing
from dataclasses import fields
from typing import Any

import gradio as gr

from modules import config as config_mod
from webui.context import UIContext

HINTS = typing.get_type_hints(config_mod.Settings)


def groups() -> dict[str, list[Any]]:
    """Settings fields by their metadata group, in declaration order."""
    out: dict[str, list[Any]] = {}
    for f in fields(config_mod.Settings):
        out.setdefault(f.metadata.get("group", "Other"), []).append(f)
    return out


def widget_for(f: Any, value: Any) -> Any:
    """The widget for one setting; `value` is already in widget form (see widget_value)."""
    meta, kind = f.metadata, HINTS[f.name]
    label, elem_id = meta.get("label", f.name), f"setting-{f.name}"
    if meta.get("choices"):
        return gr.Dropdown(list(meta["choices"]), value=value, label=label, elem_id=elem_id)
    if kind is bool:
        return gr.Checkbox(value=value, label=label, elem_id=elem_id)
    if kind in (int, float) and "minimum" in meta and "maximum" in meta:
        step = 1 if kind is int else 0.01
        return gr.Slider(meta["minimum"], meta["maximum"], value=value, step=step, label=label, elem_id=elem_id)
    if kind in (int, float):
        return gr.Number(value=value, precision=0 if kind is int else None, label=label, elem_id=elem_id)
    if kind is dict:
        return gr.Textbox(value, label=f"{label} (JSON)", elem_id=elem_id, lines=1)
    return gr.Textbox(value=str(value), label=label, elem_id=elem_id)


def to_setting(name: str, value: Any) -> Any:
    """Widget value → the field's type; a bad value raises ValueError naming the setting."""
    kind = HINTS[name]
    try:
        if kind is dict:
            parsed = json.loads(value or "{}")
            if not isinstance(parsed, dict):
                raise ValueError("must be a JSON object")
            return parsed
        if kind is int:
            return int(round(float(value)))
        if kind is float:
            return float(value)
        if kind is bool:
            return bool(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from None


def widget_value(name: str, value: Any) -> Any:
    return json.dumps(value) if HINTS[name] is dict else value


def apply(ctx: UIContext, values: dict[str, Any]) -> str:
    """Apply the changed settings and save config.json (temp file + rename)."""
    current = ctx.engine.settings.to_dict()
    try:
        changes = {n: to_setting(n, v) for n, v in values.items()}
    except ValueError as exc:
        return f"<div class='palette-error'>Not saved: {html.escape(str(exc))}</div>"
    changes = {n: v for n, v in changes.items() if v != current.get(n)}
    if changes:
        ctx.engine.update_settings(**changes)
    ctx.engine.save_settings()
    names = ", ".join(sorted(changes)) or "nothing changed"
    return f"<div class='palette-notice'>Saved ({html.escape(names)}).</div>"


def build(ctx: UIContext) -> None:
    current = ctx.engine.settings.to_dict()
    widgets: dict[str, Any] = {}
    with gr.Row():
        save = gr.Button("Apply settings", variant="primary", elem_id="settings-apply", scale=2)
        reload = gr.Button("Reload", elem_id="settings-reload", scale=1)
    result = gr.HTML("", elem_id="settings-result")
    with gr.Tabs(elem_id="settings-groups"):
        for group, group_fields in groups().items():
            with gr.Tab(group):
                for f in group_fields:
                    widgets[f.name] = widget_for(f, widget_value(f.name, current[f.name]))

    save.click(lambda **values: apply(ctx, values), inputs_kwargs=widgets, outputs=result, api_visibility="private")

    def reload_values() -> dict[Any, Any]:
        now = ctx.engine.settings.to_dict()
        return {w: widget_value(n, now[n]) for n, w in widgets.items()}

    reload.click(reload_values, outputs=list(widgets.values()), api_visibility="private")
