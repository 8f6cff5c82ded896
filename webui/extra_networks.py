"""The extra-networks panel of txt2img and img2img: A1111's cards for LoRAs and embeddings.

The cards come only from the Engine contract (`list_loras`, `list_embeddings`, `refresh_networks`).
Clicking a card appends `<lora:name:1>` (a LoRA) or the embedding's name to the tab's prompt, with
", " before it unless the prompt is empty; the search box hides cards whose name does not contain the
text. Both run in the browser (webui/script.js), so typing and clicking cost no server round trip.

Preview images are never served as files: a preview that lies inside the kind's model folders
(`engine.paths.folders`) is shrunk to a small JPEG and inlined in the card, so the UI server keeps
serving only the output folders (webui/server.py) and nothing under models/ can be fetched by URL.
"""
from __future__ import annotations

import base64
import html
import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import gradio as gr

from modules.networks import PREVIEW_SUFFIXES
from modules.paths import within
from modules.types import NetworkEntry

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 192
THUMBNAILS_KEPT = 1024
MAX_PREVIEW_BYTES = 32 * 1024 * 1024
FOLDER_KIND = {"lora": "lora", "embedding": "embeddings"}  # NetworkEntry.kind → ModelPaths kind
KINDS = (("lora", "Lora"), ("embedding", "Textual Inversion"))


def prompt_text(entry: NetworkEntry) -> str:
    """What a click adds to the prompt: A1111's default LoRA tag (multiplier 1), or the trigger word."""
    return f"<lora:{entry.name}:1>" if entry.kind == "lora" else entry.name


def matches(entry: NetworkEntry, query: str) -> bool:
    """The search rule, the same as script.js's: case-insensitive substring of the name."""
    return query.strip().lower() in entry.name.lower()


class PreviewThumbnails:
    """Small inline JPEGs of preview images, made once per file version (path, size, mtime)."""

    def __init__(self, side: int = THUMBNAIL_SIDE, kept: int = THUMBNAILS_KEPT) -> None:
        self.side, self.kept = side, kept
        self._cache: OrderedDict[tuple[str, int, int], str] = OrderedDict()
        self._lock = threading.Lock()

    def data_uri(self, preview: Path | None, roots: Sequence[Path]) -> str | None:
        """None when there is no usable preview, or when it lies outside `roots` (the model folders)."""
        if preview is None or not preview.name.lower().endswith(PREVIEW_SUFFIXES) or not within(preview, roots):
            return None
        try:
            stat = preview.stat()
        except OSError:
            return None
        if stat.st_size > MAX_PREVIEW_BYTES:
            return None
        key = (str(preview.resolve()), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        uri = self._thumbnail(preview)
        if uri is not None:
            with self._lock:
                self._cache[key] = uri
                while len(self._cache) > self.kept:
                    self._cache.popitem(last=False)
        return uri

    def _thumbnail(self, preview: Path) -> str | None:
        from PIL import Image

        try:
            with Image.open(preview) as image:
                image.thumbnail((self.side, self.side))
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, format="JPEG", quality=85)
        except Exception as exc:  # noqa: BLE001 - a broken preview only loses its picture
            log.warning("preview %s unreadable: %s", preview, exc)
            return None
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def card_html(entry: NetworkEntry, target: str, picture: str | None, query: str) -> str:
    name = html.escape(entry.name)
    attrs = (f"class='palette-network-card' role='button' tabindex='0' data-target='{html.escape(target, quote=True)}' "
             f"data-name='{html.escape(entry.name.lower(), quote=True)}' "
             f"data-text='{html.escape(prompt_text(entry), quote=True)}' title='{html.escape(str(entry.path), quote=True)}'")
    hidden = "" if matches(entry, query) else " style='display:none'"
    image = (f"<img class='palette-network-preview' src='{picture}' alt=''>" if picture
             else "<div class='palette-network-preview palette-network-nopreview'></div>")
    return f"<div {attrs}{hidden}>{image}<span class='palette-network-name'>{name}</span></div>"


def cards_html(entries: Sequence[NetworkEntry], target: str, roots: Sequence[Path], thumbs: PreviewThumbnails,
               query: str = "", empty: str = "") -> str:
    """The card grid of one kind; `target` is the prompt box's elem_id."""
    if not entries:
        return f"<p class='palette-network-empty'>{html.escape(empty)}</p>"
    cards = "".join(card_html(e, target, thumbs.data_uri(e.preview, roots), query) for e in entries)
    return f"<div class='palette-network-cards'>{cards}</div>"


@dataclass
class NetworksPanel:
    search: gr.Textbox
    refresh: gr.Button
    cards: dict[str, gr.HTML]  # kind → card grid


def build_panel(ctx: Any, tab: str) -> NetworksPanel:
    """The "Extra networks" accordion; cards load when it opens, and again on Refresh (both keep
    the search applied). The ids `{tab}-networks-search` and `{tab}-extra-networks` are script.js's."""
    engine, thumbs, target = ctx.engine, PreviewThumbnails(), f"{tab}-prompt"
    with gr.Accordion("Extra networks", open=False, elem_id=f"{tab}-extra-networks") as accordion:
        with gr.Row():
            search = gr.Textbox(placeholder="Search by name", show_label=False, lines=1, max_lines=1, scale=4,
                                elem_id=f"{tab}-networks-search")
            refresh = gr.Button("\U0001f504 Refresh", size="sm", scale=1, elem_id=f"{tab}-networks-refresh")
        cards = {}
        with gr.Tabs():
            for kind, label in KINDS:
                with gr.Tab(label, elem_id=f"{tab}-{kind}-tab"):
                    cards[kind] = gr.HTML("", elem_id=f"{tab}-{kind}-cards")

    def render(query: str | None) -> list[str]:
        listings = {"lora": engine.list_loras(), "embedding": engine.list_embeddings()}
        out = []
        for kind, label in KINDS:
            folders = engine.paths.folders(FOLDER_KIND[kind])
            empty = f"No {label} files yet: put them in {folders[0]} and press Refresh."
            out.append(cards_html(listings[kind], target, folders, thumbs, query or "", empty))
        return out

    def rescan(query: str | None) -> list[str]:
        engine.refresh_networks()
        return render(query)

    outputs = [cards[kind] for kind, _ in KINDS]
    accordion.expand(render, inputs=search, outputs=outputs, show_progress="hidden", api_visibility="private")
    refresh.click(rescan, inputs=search, outputs=outputs, show_progress="minimal", api_visibility="private")
    return NetworksPanel(search, refresh, cards)
