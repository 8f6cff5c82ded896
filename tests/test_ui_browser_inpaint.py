"""The Inpaint tab in a real browser (headless Chromium): paint a mask with the brush, generate, get an image.

Runs against the fake engine (tests/ui_fixtures.py), which paints the masked pixels of the init image in
the seed's colour: the returned picture shows where the brush stroke landed.
"""
from __future__ import annotations

import io

import pytest
from PIL import Image

from modules.queue import JobQueue
from tests import ui_browser_helpers as ui
from tests.test_ui_browser import browser_test, new_page
from tests.ui_fixtures import FakeEngine

BLUE = (30, 90, 200)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("palette-ui-inpaint")
    engine = FakeEngine(root, step_time=0.01)
    queue = JobQueue(engine, max_size=8)
    with ui.running_server(engine, queue) as url:
        yield url, engine
    queue.shutdown()


@pytest.fixture
def page(browser, server):
    p = new_page(browser, server[0])
    ui.open_tab(p, "Inpaint")
    yield p
    p.close()


def upload_picture(page, tmp_path, size=(256, 192)) -> None:
    path = tmp_path / "picture.png"
    Image.new("RGB", size, BLUE).save(path)
    page.locator("#inpaint-editor input[type=file]").first.set_input_files(str(path))
    wait_for_picture_in_editor(page)


def wait_for_picture_in_editor(page) -> None:
    """The editor drops its "Upload an image" prompt once the picture is its background layer; until
    then a Generate click sends no image (the canvas element itself is there from the start, so waiting
    for it proves nothing). Under load the picture can take well over a second to arrive."""
    page.locator("#inpaint-editor canvas").first.wait_for()
    page.wait_for_function("!document.querySelector('#inpaint-editor')?.innerText?.includes('Upload an image')")
    page.wait_for_timeout(500)  # the editor draws the picture, then takes strokes


def paint_stroke(page) -> None:
    """A short diagonal stroke through the middle of the canvas with the (white) brush."""
    page.locator("#inpaint-editor button[aria-label=Brush]").click()
    box = page.locator("#inpaint-editor canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy - 20)
    page.mouse.down()
    for k in range(11):
        page.mouse.move(cx - 40 + k * 8, cy - 20 + k * 4)
    page.mouse.up()
    page.wait_for_timeout(300)


def generate(page) -> str:
    page.locator("#inpaint-generate").click()
    try:
        ui.gallery_images(page, "inpaint").first.wait_for()
    except Exception as exc:  # say why: the error the tab shows, if any
        raise AssertionError(f"no image; the tab says: {page.locator('#inpaint-progress').inner_text()!r}") from exc
    page.locator("#inpaint-infotext .infotext-body").wait_for()
    return page.locator("#inpaint-infotext").inner_text()


def shown_image(page) -> Image.Image:
    src = ui.gallery_images(page, "inpaint").first.get_attribute("src")
    return Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")


def error_text(page) -> str:
    page.locator("#inpaint-progress .palette-error").wait_for()
    return page.locator("#inpaint-progress").inner_text()


class TestInpaintTab:
    pytestmark = browser_test

    def test_paint_a_mask_and_get_the_image_back(self, page, server, tmp_path):
        _, engine = server
        page.locator("#inpaint-generate").click()
        assert "needs an image" in error_text(page)
        upload_picture(page, tmp_path)
        page.locator("#inpaint-generate").click()
        page.wait_for_function("document.querySelector('#inpaint-progress')?.innerText?.includes('mask is empty')")
        paint_stroke(page)
        ui.set_number(page, "inpaint-mask-blur", 8)
        page.locator("#inpaint-masked-content").get_by_text("latent noise", exact=True).click()
        ui.fill_text(page, "inpaint-prompt", "a red balloon")
        text = generate(page)
        assert text.startswith("a red balloon") and "Mask blur: 8" in text and "Masked content: latent noise" in text
        request = engine.calls[-1]
        assert request.init_images[0].size == (256, 192) and request.mask.size == (256, 192)
        x1, y1, x2, y2 = request.mask.getbbox()
        assert 40 < x1 < x2 < 216 and 30 < y1 < y2 < 162  # the stroke, in the middle of the picture
        assert (request.inpainting_fill, request.mask_blur) == (2, 8)
        result = shown_image(page)
        assert result.size == (256, 192)
        assert result.getpixel((5, 5)) == BLUE and result.getpixel((250, 186)) == BLUE  # outside: untouched
        centre = ((x1 + x2) // 2, (y1 + y2) // 2)
        assert request.mask.getpixel(centre) > 128 and result.getpixel(centre) != BLUE  # inside: redrawn
        ui.screenshot(page, "inpaint-result")
        assert page.errors == []

    def test_upload_mask_and_outpaint_options_reach_the_request(self, page, server, tmp_path):
        _, engine = server
        upload_picture(page, tmp_path, (128, 128))
        mask_path = tmp_path / "mask.png"
        mask = Image.new("L", (128, 128), 0)
        mask.paste(255, (0, 0, 32, 128))
        mask.save(mask_path)
        page.locator("#inpaint-mask-source").get_by_text("Upload mask", exact=True).click()
        page.locator("#inpaint-mask-upload input[type=file]").set_input_files(str(mask_path))
        page.locator("#inpaint-mask-upload img").wait_for()
        page.locator("#inpaint-area").get_by_text("Only masked", exact=True).click()
        page.locator("#inpaint-outpaint").click()  # open the accordion
        ui.set_number(page, "inpaint-outpaint-right", 64)
        text = generate(page)
        assert "Masked content" not in text  # "original", A1111's default, is not written
        request = engine.calls[-1]
        assert request.mask.getbbox() == (0, 0, 32, 128) and request.outpaint_pad == (0, 64, 0, 0)
        assert request.inpaint_full_res is True

    def test_send_to_inpaint_from_txt2img(self, page, server):
        _, engine = server
        ui.open_tab(page, "txt2img")
        ui.set_number(page, "txt2img-width", 320)
        ui.set_number(page, "txt2img-height", 256)
        page.locator("#txt2img-generate").click()
        ui.gallery_images(page, "txt2img").first.wait_for()
        page.locator("#txt2img-send-to-inpaint").click()
        wait_for_picture_in_editor(page)
        paint_stroke(page)
        generate(page)
        assert engine.calls[-1].init_images[0].size == (320, 256) and engine.calls[-1].mask.getbbox() is not None
