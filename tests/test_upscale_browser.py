"""The Extras (upscale) tab in a real browser: upload, pick a model upscaler, Generate, see the image.

The server runs on the fake engine (no checkpoint is needed to upscale) with the real upscaler registry
over its models folder, where a tiny random-weight Real-ESRGAN x4plus (BasicSR layout) is put, and a
tiny random-weight RestoreFormer in models/GFPGAN for face restoration.
"""
from __future__ import annotations

import pytest
from PIL import Image
from safetensors.torch import save_file

from modules.queue import JobQueue
from tests import ui_browser_helpers as ui
from tests import face_models as fm
from tests import upscaler_models as um
from tests.ui_fixtures import FakeEngine

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not ui.CHROMIUM.exists(), reason="Debian's chromium is not at /usr/bin/chromium")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("palette-extras")
    folder = root / "models" / "RealESRGAN"
    folder.mkdir(parents=True)
    save_file(um.esrgan_new(seed=3), str(folder / "RealESRGAN_x4plus.safetensors"))
    fm.save_pth(fm.restoreformer_tiny(seed=6), root / "models" / "GFPGAN" / "RestoreFormer.pth")
    engine = FakeEngine(root)
    queue = JobQueue(engine, max_size=8)
    with ui.running_server(engine, queue) as url:
        yield url, engine, root
    queue.shutdown()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(ui.CHROMIUM), args=ui.CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.set_default_timeout(30_000)
        page.goto(server[0])
        page.wait_for_selector("#txt2img-generate")
        ui.open_tab(page, "Extras (upscale)")
        yield page
        browser.close()


def test_upscale_one_image_with_a_model(page, server, tmp_path):
    _, engine, root = server
    source = tmp_path / "source.png"
    Image.effect_noise((40, 24), 50).convert("RGB").save(source)
    page.locator("#extras-image input[type=file]").set_input_files(str(source))
    ui.choose(page, "extras-upscaler-1", "R-ESRGAN 4x+")
    ui.set_number(page, "extras-upscaling-resize", 2)
    page.locator("#extras-generate").click()
    ui.gallery_images(page, "extras").first.wait_for()
    page.locator("#extras-infotext .infotext-body").wait_for()
    assert page.locator("#extras-infotext").inner_text() == "Postprocess upscale by: 2, Postprocess upscaler: R-ESRGAN 4x+"
    ui.screenshot(page, "extras-upscaled")
    saved = sorted((root / "outputs" / "extras-images").glob("*.png"))
    assert len(saved) == 1
    with Image.open(saved[0]) as image:
        assert image.size == (80, 48)
        assert image.info["extras"] == "Postprocess upscale by: 2, Postprocess upscaler: R-ESRGAN 4x+"
    assert page.errors == []


def test_batch_from_a_folder_inside_the_data_folder_only(page, server):
    _, engine, root = server
    inputs = root / "to-upscale"
    inputs.mkdir()
    for i, colour in enumerate(((200, 10, 10), (10, 200, 10))):
        Image.new("RGB", (16, 16), colour).save(inputs / f"in{i}.png")
    page.get_by_role("tab", name="Batch from Directory", exact=True).click()
    page.locator("#extras-input-dir textarea, #extras-input-dir input").first.fill("/etc")
    page.locator("#extras-generate").click()
    page.wait_for_function("document.querySelector('#extras-progress')?.innerText?.includes('outside')")
    page.locator("#extras-input-dir textarea, #extras-input-dir input").first.fill("to-upscale")
    ui.choose(page, "extras-upscaler-1", "Nearest")
    page.locator("#extras-generate").click()
    page.wait_for_function("document.querySelectorAll('#extras-gallery img').length >= 2")
    names = sorted(p.name for p in (root / "outputs" / "extras-images").glob("*-in*.png"))
    assert [n.split("-", 1)[1] for n in names] == ["in0.png", "in1.png"]


def test_gfpgan_slider_restores_the_face(page, server, tmp_path):
    _, engine, root = server
    source = tmp_path / "face.png"
    fm.drawn_face(size=240, scale=0.6).save(source)
    page.get_by_role("tab", name="Single Image", exact=True).click()
    page.locator("#extras-image input[type=file]").set_input_files(str(source))
    ui.choose(page, "extras-upscaler-1", "Lanczos")
    ui.set_number(page, "extras-upscaling-resize", 1)
    ui.set_number(page, "extras-gfpgan-visibility", 0.8)
    assert page.locator("#extras-face-note").count() == 0  # GFPGAN and CodeFormer can both run here
    page.locator("#extras-generate").click()
    page.wait_for_function("document.querySelector('#extras-infotext')?.innerText?.includes('GFPGAN')")
    assert page.locator("#extras-infotext").inner_text() == (
        "Postprocess upscale by: 1, Postprocess upscaler: Lanczos, GFPGAN visibility: 0.8")
    saved = max((root / "outputs" / "extras-images").glob("*.png"), key=lambda p: p.stat().st_mtime_ns)
    with Image.open(saved) as image:
        assert image.size == (240, 240) and image.info["extras"].endswith("GFPGAN visibility: 0.8")
    assert page.errors == []
