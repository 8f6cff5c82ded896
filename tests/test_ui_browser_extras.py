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


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(ui.CHROMIUM), args=ui.CHROMIUM_ARGS)
        yield b
        b.close()


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
