"""Extra-networks cards without a browser: what a click adds, escaping, and that preview images are
only read from the model folders (a symlink or a path elsewhere gets no picture)."""
from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from modules.types import NetworkEntry
from webui.extra_networks import PreviewThumbnails, cards_html, prompt_text


def entry(path: Path, kind: str = "lora", preview: Path | None = None) -> NetworkEntry:
    return NetworkEntry(path.stem, kind, path, preview=preview)


def decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_prompt_text_is_a1111s():
    assert prompt_text(entry(Path("/m/Lora/ink.safetensors"))) == "<lora:ink:1>"
    assert prompt_text(entry(Path("/m/embeddings/bad-hands.pt"), "embedding")) == "bad-hands"


def test_previews_only_from_the_model_folders(tmp_path):
    lora = tmp_path / "models" / "Lora"
    lora.mkdir(parents=True)
    Image.new("RGB", (640, 320), (200, 10, 10)).save(lora / "ink.preview.png")
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (0, 0, 255)).save(outside)
    (lora / "link.png").symlink_to(outside)
    (lora / "notes.txt").write_text("not an image")
    thumbs = PreviewThumbnails()
    uri = thumbs.data_uri(lora / "ink.preview.png", [lora])
    picture = decode(uri)
    assert picture.size == (192, 96)  # shrunk, aspect kept
    r, g, b = picture.getpixel((96, 48))
    assert r > 180 and g < 40 and b < 40
    assert thumbs.data_uri(outside, [lora]) is None
    assert thumbs.data_uri(lora / "link.png", [lora]) is None  # the link leads out of the folder
    assert thumbs.data_uri(lora / "notes.txt", [lora]) is None
    assert thumbs.data_uri(lora / "missing.png", [lora]) is None
    assert thumbs.data_uri(lora / "ink.preview.png", [tmp_path / "models" / "embeddings"]) is None


def test_cards_escape_names_and_hide_non_matching(tmp_path):
    entries = [entry(tmp_path / "a'b<c>.safetensors"), entry(tmp_path / "Zebra.safetensors")]
    text = cards_html(entries, "txt2img-prompt", [tmp_path], PreviewThumbnails(), query="zeb")
    assert "a'b<c>" not in text and "a&#x27;b&lt;c&gt;" in text
    assert "data-text='&lt;lora:a&#x27;b&lt;c&gt;:1&gt;'" in text
    first, second = text.split("palette-network-card'")[1:]
    assert "style='display:none'" in first and "style='display:none'" not in second
    assert "data-name='zebra'" in second
    assert cards_html([], "t", [tmp_path], PreviewThumbnails(), empty="No <Lora>") == \
        "<p class='palette-network-empty'>No &lt;Lora&gt;</p>"
