"""Facts that used to be written down in several places now have one source; these pin that every
user of a fact agrees with it (the fake engine and the UI included)."""
from __future__ import annotations

from PIL import Image, PngImagePlugin

from modules import networks, upscalers, validation
from modules.paths import ModelPaths
from tests.ui_fixtures import FakeEngine
from webui import bindings
from webui.extra_networks import PreviewThumbnails


def test_previews_follow_networks_find_preview_everywhere(tmp_path):
    lora = tmp_path / "models" / "Lora"
    lora.mkdir(parents=True)
    for name in ("a", "b", "c"):
        (lora / f"{name}.safetensors").write_bytes(b"x")
    Image.new("RGB", (8, 8)).save(lora / "a.preview.webp")  # the old fake engine's list missed these
    Image.new("RGB", (8, 8)).save(lora / "b.preview.jpeg")
    Image.new("RGB", (8, 8)).save(lora / "c.gif", format="GIF")  # find_preview never returns a .gif
    real = {e.name: e.preview for e in networks.NetworkRegistry(ModelPaths.create(tmp_path), None).list_loras()}
    fake = {e.name: e.preview for e in FakeEngine(tmp_path).list_loras()}
    assert fake == real == {"a": lora / "a.preview.webp", "b": lora / "b.preview.jpeg", "c": None}
    thumbs = PreviewThumbnails()
    assert thumbs.data_uri(lora / "a.preview.webp", [lora]) is not None
    assert thumbs.data_uri(lora / "c.gif", [lora]) is None  # the UI shows only what find_preview can return


def test_pixel_upscaler_names_have_one_source():
    assert tuple(upscalers.PIL_FILTERS) == validation.PIXEL_UPSCALERS
    assert upscalers.PIL_FILTERS["Nearest"] == Image.Resampling.NEAREST
    assert upscalers.PIL_FILTERS["None"] == Image.Resampling.LANCZOS
    assert bindings.HR_UPSCALERS == validation.LATENT_UPSCALE_MODES + validation.PIXEL_UPSCALERS


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
