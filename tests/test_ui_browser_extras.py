"""Browser tests for the extra-networks panel, the token counter, per-image gallery updates and the
offline API docs page (headless Chromium through Playwright; the fake engine of ui_fixtures.py)."""
from __future__ import annotations

import httpx
import pytest
from PIL import Image

from modules.queue import JobQueue
from tests import ui_browser_helpers as ui
from tests.test_api import launch_options
from tests.ui_fixtures import FakeEngine
from webui.api import create_api_app
from webui.api.serve import serve_in_thread

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not ui.CHROMIUM.exists(), reason="Debian's chromium is not at /usr/bin/chromium")]


def offline_page(browser, base: str):
    """A page that may only reach `base`: any other request is aborted and recorded."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.errors, page.foreign = [], []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))

    def guard(route):
        if route.request.url.startswith(base):
            route.continue_()
        else:
            page.foreign.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.set_default_timeout(20_000)
    return page


def test_api_docs_render_from_local_assets(browser, tmp_path):
    engine = FakeEngine(tmp_path)
    queue = JobQueue(engine, max_size=2)
    try:
        with serve_in_thread(create_api_app(engine, queue, launch_options(tmp_path))) as url:
            page = offline_page(browser, url)
            loaded = []
            page.on("requestfinished", lambda r: loaded.append(r.url))
            page.goto(url + "/docs")  # A1111's address → /palette/v1/docs
            page.locator(".swagger-ui .opblock").first.wait_for()
            assert page.url == url + "/palette/v1/docs"
            assert page.get_by_text("/sdapi/v1/txt2img", exact=True).count() >= 1
            assert page.evaluate("getComputedStyle(document.querySelector('.swagger-ui .opblock')).borderRadius") != "0px"
            assert f"{url}/palette/v1/docs-assets/swagger-ui-bundle.js" in loaded
            assert f"{url}/palette/v1/docs-assets/swagger-ui.css" in loaded
            assert page.foreign == [] and page.errors == []
            page.close()
    finally:
        queue.shutdown()


def test_docs_assets_are_a_fixed_list(tmp_path):
    engine = FakeEngine(tmp_path)
    queue = JobQueue(engine, max_size=2)
    try:
        with serve_in_thread(create_api_app(engine, queue, launch_options(tmp_path))) as url:
            with httpx.Client(base_url=url) as client:
                r = client.get("/palette/v1/docs-assets/swagger-ui.css")
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/css") and ".swagger-ui" in r.text
                for name in ("core.py", "..%2F__init__.py", "redoc.standalone.js"):
                    assert client.get(f"/palette/v1/docs-assets/{name}").status_code == 404, name
                html = client.get("/palette/v1/docs").text
                assert "cdn." not in html and "https://" not in html
    finally:
        queue.shutdown()


def test_docs_beside_the_gradio_ui(tmp_path):
    from webui.api.serve import free_port
    from webui.server import launch_ui

    engine = FakeEngine(tmp_path)
    queue = JobQueue(engine, max_size=2)
    port = free_port()
    demo = launch_ui(engine, queue, launch_options(tmp_path, port=port), prevent_thread_lock=True, quiet=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=True) as client:
            r = client.get("/docs")
            assert r.status_code == 200 and str(r.url).endswith("/palette/v1/docs"), r.text[:200]
            assert "/palette/v1/docs-assets/swagger-ui-bundle.js" in r.text
            assert client.get("/palette/v1/docs-assets/swagger-ui-bundle.js").status_code == 200
    finally:
        demo.close()
        queue.shutdown()


# ---- the UI: extra networks, token counter, per-image gallery ------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("palette-ui-extras")
    lora, emb = root / "models" / "Lora", root / "models" / "embeddings"
    lora.mkdir(parents=True)
    emb.mkdir(parents=True)
    for name in ("ink", "zebra_style", "leaky"):
        (lora / f"{name}.safetensors").write_bytes(b"x")
    Image.new("RGB", (300, 300), (220, 20, 20)).save(lora / "ink.preview.png")
    Image.new("RGB", (30, 30), (0, 0, 255)).save(root / "outside.png")
    (lora / "leaky.png").symlink_to(root / "outside.png")  # a preview that leads out of the model folder
    (emb / "bad-hands.pt").write_bytes(b"x")
    engine = FakeEngine(root, step_time=0.01, slow_step=0.2)
    queue = JobQueue(engine, max_size=8)
    with ui.running_server(engine, queue) as url:
        yield url, engine, queue
    queue.shutdown()


@pytest.fixture
def page(browser, server):
    p = offline_page(browser, server[0])
    p.goto(server[0])
    p.wait_for_selector("#txt2img-generate")
    yield p
    p.close()


def prompt_value(page, tab: str = "txt2img") -> str:
    return ui.text_value(page, f"{tab}-prompt")


def wait_prompt(page, value: str, tab: str = "txt2img") -> None:
    page.wait_for_function("([id, v]) => document.querySelector(`#${id} textarea`)?.value === v", arg=[f"{tab}-prompt", value])


def open_networks(page, tab: str = "txt2img"):
    page.locator(f"#{tab}-extra-networks").get_by_text("Extra networks").first.click()
    cards = page.locator(f"#{tab}-lora-cards .palette-network-card")
    cards.first.wait_for()
    return cards


def test_cards_show_previews_filter_and_insert_tags(page, server):
    _, engine, _ = server
    cards = open_networks(page)
    assert cards.count() == 3
    ink = page.locator("#txt2img-lora-cards .palette-network-card[data-name='ink']")
    assert ink.locator("img").get_attribute("src").startswith("data:image/jpeg;base64,")
    assert page.locator("#txt2img-lora-cards [data-name='zebra_style'] img").count() == 0  # no preview file
    assert page.locator("#txt2img-lora-cards [data-name='leaky'] img").count() == 0  # preview outside models/
    ui.screenshot(page, "extra-networks")

    search = page.locator("#txt2img-networks-search input, #txt2img-networks-search textarea").first
    search.fill("ZEB")
    page.wait_for_function("document.querySelector(\"#txt2img-lora-cards [data-name='ink']\").style.display === 'none'")
    assert page.locator("#txt2img-lora-cards [data-name='zebra_style']").is_visible()
    search.fill("")
    ink.wait_for(state="visible")

    ink.click()  # empty prompt: the tag alone
    wait_prompt(page, "<lora:ink:1>")
    ui.fill_text(page, "txt2img-prompt", "a cat")
    ink.click()
    wait_prompt(page, "a cat, <lora:ink:1>")
    page.locator("#txt2img-extra-networks").get_by_role("tab", name="Textual Inversion").click()
    page.locator("#txt2img-embedding-cards [data-name='bad-hands']").click()
    wait_prompt(page, "a cat, <lora:ink:1>, bad-hands")

    # the inserted text reached the server: the job's infotext carries it (the fake refuses unknown LoRAs)
    page.locator("#txt2img-generate").click()
    page.locator("#txt2img-infotext .infotext-body").wait_for()
    assert page.locator("#txt2img-infotext").inner_text().startswith("a cat, <lora:ink:1>, bad-hands")
    assert engine.calls[-1].prompt == "a cat, <lora:ink:1>, bad-hands"
    assert page.foreign == [] and page.errors == []


def test_inpaint_has_the_panel_and_cards_write_to_its_prompt(page, server):
    ui.open_tab(page, "Inpaint")
    open_networks(page, "inpaint")
    ui.fill_text(page, "inpaint-prompt", "a fox")
    page.locator("#inpaint-lora-cards [data-name='ink']").click()
    wait_prompt(page, "a fox, <lora:ink:1>", "inpaint")
    assert prompt_value(page) == ""  # txt2img's prompt is untouched
    assert page.errors == []


def test_refresh_finds_new_files_and_img2img_has_the_panel(page, server):
    _, engine, _ = server
    ui.open_tab(page, "img2img")
    cards = open_networks(page, "img2img")
    before = cards.count()
    (engine.root / "models" / "Lora" / "new_one.safetensors").write_bytes(b"x")
    page.locator("#img2img-networks-refresh").click()
    page.locator("#img2img-lora-cards [data-name='new_one']").wait_for()
    assert cards.count() == before + 1
    ui.fill_text(page, "img2img-prompt", "a dog,")
    page.locator("#img2img-lora-cards [data-name='new_one']").click()
    wait_prompt(page, "a dog, <lora:new_one:1>", "img2img")
    assert prompt_value(page) == ""  # txt2img's prompt is untouched


def test_token_counter_is_debounced_and_shows_the_engines_count(page, server):
    from tests.ui_fixtures import rough_token_count

    _, engine, _ = server
    ui.set_number(page, "txt2img-steps", 9)  # prompt editing is scheduled over the Steps slider (A1111)
    box = page.locator("#txt2img-prompt textarea")
    box.click()
    engine.token_prompts.clear()
    text = "a photo of a red fox in the snow, highly detailed"
    box.press_sequentially(text, delay=20)
    expected = f"{rough_token_count(text)}/75"
    page.wait_for_function("v => document.querySelector('#txt2img-prompt-tokens').innerText.trim() === v", arg=expected)
    page.wait_for_timeout(600)
    assert engine.token_prompts[-1] == text and engine.token_steps[-1] == 9
    assert len(engine.token_prompts) <= 3, engine.token_prompts  # not one per keystroke (there were 49)
    long = ", ".join(f"word{i}" for i in range(60))
    ui.fill_text(page, "txt2img-prompt", long)
    count = rough_token_count(long)
    page.wait_for_function("v => document.querySelector('#txt2img-prompt-tokens').innerText.trim() === v",
                           arg=f"{count}/{-(-count // 75) * 75}")


def test_gallery_shows_each_image_as_it_finishes(page, server):
    ui.fill_text(page, "txt2img-prompt", "slow harbour")
    ui.set_number(page, "txt2img-steps", 5)
    ui.set_number(page, "txt2img-batch-count", 3)
    page.locator("#txt2img-generate").click()
    ui.gallery_images(page, "txt2img").first.wait_for()
    progress = page.locator("#txt2img-progress").inner_text()
    assert "Step" in progress and "image" in progress, progress  # the job is still running
    assert ui.gallery_images(page, "txt2img").count() < 3
    assert page.locator("#txt2img-infotext .infotext-body").count() == 0  # the final update has not come
    page.locator("#txt2img-infotext .infotext-body").wait_for()
    page.wait_for_function("document.querySelectorAll('#txt2img-gallery img').length >= 3")
