"""Facts that used to be written down in several places now have one source; these pin that every
user of a fact agrees with it (the fake engine and the UI included)."""
from __future__ import annotations

from PIL import Image, PngImagePlugin

from modules import networks, upscalers, validation
from modules.paths import ModelPaths
from tests.ui_fixtures import FakeEngine
from webui import bindings
from webui.extra_networks import PreviewThumbnails


def test_png_text_chunks_have_one_reader():
    from webui.api import images, routes_generate
    from modules import extras

    assert routes_generate.text_chunks is extras.text_chunks and not hasattr(images, "text_chunks")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat")
    info.add_text("extras", "Postprocess upscale by: 2")
    import io

    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG", pnginfo=info)
    buf.seek(0)
    with Image.open(buf) as image:
        assert extras.text_chunks(image) == {"parameters": "a cat", "extras": "Postprocess upscale by: 2"}
