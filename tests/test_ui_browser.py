"""The web UI in a real browser (headless Chromium through Playwright) against a running server.

Runs against the fake engine (solid-colour images with an A1111 infotext); see ui_fixtures.py.
The auth tests at the bottom need no browser: they are plain HTTP against a server with --gradio-auth.
"""
from __future__ import annotations

import json
import re

import httpx
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from modules.queue import JobQueue
from tests import ui_browser_helpers as ui
from tests.ui_fixtures import FakeEngine

needs_chromium = pytest.mark.skipif(not ui.CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
browser_test = [pytest.mark.browser, needs_chromium]
TABS = ("txt2img", "img2img", "Inpaint", "ControlNet", "Extras (upscale)", "PNG Info", "Queue", "Settings", "Extensions")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("palette-ui")
    engine = FakeEngine(root, step_time=0.01, slow_step=0.25)
    engine.notices.append("config.json was unreadable; moved to config.json.corrupt-test, defaults used")
    queue = JobQueue(engine, max_size=16)
    with ui.running_server(engine, queue) as url:
        yield url, engine, queue
    queue.shutdown()


def new_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.errors = []  # console errors and uncaught exceptions
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.set_default_timeout(20_000)
    page.goto(url)
    page.wait_for_selector("#txt2img-generate")
    return page


@pytest.fixture
def page(browser, server):
    p = new_page(browser, server[0])
    yield p
    p.close()


def generate(page, tab: str = "txt2img") -> str:
    """Click Generate and return the infotext once an image is shown."""
    page.locator(f"#{tab}-generate").click()
    ui.gallery_images(page, tab).first.wait_for()
    page.locator(f"#{tab}-infotext .infotext-body").wait_for()
    return page.locator(f"#{tab}-infotext").inner_text()


@pytest.mark.usefixtures("server")
class TestBrowser:
    pytestmark = browser_test

    def test_generate_shows_image_and_infotext(self, page):
        ui.fill_text(page, "txt2img-prompt", "a lighthouse at dusk <b>bold</b>")
        page.locator("#txt2img-prompt textarea").press("Control+Enter")  # A1111's shortcut for Generate
        ui.gallery_images(page, "txt2img").first.wait_for()
        text = generate(page)
        assert "a lighthouse at dusk <b>bold</b>" in text  # escaped: shown as text, not markup
        assert page.locator("#txt2img-infotext b").count() == 0
        assert "Steps: 20" in text and "Sampler: Euler a" in text
        assert page.locator("#txt2img-prompt-tokens").inner_text().endswith("/75")
        ui.screenshot(page, "txt2img-result")
        assert page.errors == []

    def test_sampler_size_and_seed_reach_the_infotext(self, page):
        ui.fill_text(page, "txt2img-prompt", "a red fox")
        ui.choose(page, "txt2img-sampler", "DPM++ 2M")
        ui.choose(page, "txt2img-scheduler", "Karras")
        ui.set_number(page, "txt2img-width", 640)
        ui.set_number(page, "txt2img-height", 448)
        ui.set_number(page, "txt2img-steps", 7)
        page.locator("#txt2img-seed input").fill("4242")
        text = generate(page)
        for part in ("Sampler: DPM++ 2M", "Schedule type: Karras", "Seed: 4242", "Size: 640x448", "Steps: 7"):
            assert part in text
        page.locator("#txt2img-swap-size").click()
        page.wait_for_function("document.querySelector('#txt2img-width input[type=number]')?.value == '448'")
        page.locator("#txt2img-random-seed").click()
        page.wait_for_function("document.querySelector('#txt2img-seed input')?.value == '-1'")
        page.locator("#txt2img-reuse-seed").click()
        page.wait_for_function("document.querySelector('#txt2img-seed input')?.value == '4242'")

    def test_interrupt_keeps_finished_images_and_shows_preview(self, page, server):
        _, engine, _ = server
        engine.settings = engine.settings.with_overrides({"live_preview_every": 2})
        ui.fill_text(page, "txt2img-prompt", "slow lighthouse")
        ui.set_number(page, "txt2img-steps", 6)
        ui.set_number(page, "txt2img-batch-count", 3)
        page.locator("#txt2img-generate").click()
        page.locator("#txt2img-preview img").wait_for()  # live preview while running
        page.wait_for_function("document.querySelector('#txt2img-progress')?.innerText?.includes('image 2/3')")
        assert re.search(r"ETA \d+s", page.locator("#txt2img-progress").inner_text())
        ui.screenshot(page, "txt2img-progress")
        page.locator("#txt2img-interrupt").click()
        page.wait_for_function("document.querySelector('#txt2img-progress')?.innerText?.includes('Interrupted')")
        assert "1 image(s) kept" in page.locator("#txt2img-progress").inner_text()
        assert ui.gallery_images(page, "txt2img").count() >= 1

    def test_send_to_img2img_and_generate(self, page):
        ui.open_tab(page, "img2img")
        page.locator("#img2img-generate").click()
        page.locator("#img2img-progress .palette-error").wait_for()
        assert "needs an input image" in page.locator("#img2img-progress").inner_text()
        ui.open_tab(page, "txt2img")
        ui.fill_text(page, "txt2img-prompt", "a harbour")
        ui.set_number(page, "txt2img-steps", 9)
        generate(page)
        page.locator("#txt2img-send-to-img2img").click()
        page.locator("#img2img-init-image img").wait_for()
        assert ui.text_value(page, "img2img-prompt") == "a harbour"
        assert ui.number_value(page, "img2img-steps") == "9"
        ui.set_number(page, "img2img-denoise", 0.35)
        text = generate(page, "img2img")
        assert text.startswith("a harbour") and "Denoising strength: 0.35" in text
        ui.screenshot(page, "img2img-result")

    def test_img2img_script_sd_upscale_redraws_the_upscaled_image_tile_by_tile(self, page, server, tmp_path):
        _, engine, _ = server
        ui.open_tab(page, "img2img")
        assert not page.locator("#img2img-sd-upscale-overlap").is_visible()  # only while the script is chosen
        path = tmp_path / "small.png"
        Image.new("RGB", (96, 64), (20, 90, 200)).save(path)
        page.locator("#img2img-init-image input[type=file]").first.set_input_files(str(path))
        page.locator("#img2img-init-image img").wait_for()
        ui.fill_text(page, "img2img-prompt", "a harbour, detailed")
        for elem, value in (("img2img-width", 64), ("img2img-height", 64), ("img2img-steps", 3)):
            ui.set_number(page, elem, value)
        ui.choose(page, "img2img-script", "SD upscale")
        page.locator("#img2img-sd-upscale-overlap").wait_for()
        ui.set_number(page, "img2img-sd-upscale-overlap", 16)
        ui.set_number(page, "img2img-sd-upscale-scale", 2)
        page.locator("#img2img-sd-upscale-upscaler").get_by_text("Lanczos", exact=True).click()
        before = len(engine.calls)
        text = generate(page, "img2img")
        tiles = engine.calls[before:]
        # 96x64 upscaled 2x is 192x128: 64px tiles overlapping by 16 give 4 columns and 3 rows (A1111's grid)
        assert len(tiles) == 12 and {t.init_images[0].size for t in tiles} == {(64, 64)}
        assert [t.seed for t in tiles] == [tiles[0].seed + i for i in range(12)]
        assert all(t.prompt == "a harbour, detailed" for t in tiles)
        assert "SD upscale overlap: 16" in text and "SD upscale upscaler: Lanczos" in text
        ui.choose(page, "img2img-script", "None")  # back to plain img2img: one job, no tiles
        page.locator("#img2img-sd-upscale-overlap").wait_for(state="hidden")
        before = len(engine.calls)
        page.locator("#img2img-generate").click()
        page.wait_for_function("!document.querySelector('#img2img-infotext').innerText.includes('SD upscale')")
        assert len(engine.calls) == before + 1 and engine.calls[-1].init_images[0].size == (96, 64)
        assert page.errors == []

    def test_png_info_send_to_txt2img_restores_fields(self, page, tmp_path):
        infotext = ("a castle on a hill\nNegative prompt: fog\nSteps: 31, Sampler: DPM++ 2M, Schedule type: Karras, "
                    "CFG scale: 4.5, Seed: 987654, Size: 576x704, Model hash: 0123456789, Model: alpha")
        meta = PngInfo()
        meta.add_text("parameters", infotext)
        path = tmp_path / "with-params.png"
        Image.new("RGB", (64, 64), (10, 120, 200)).save(path, pnginfo=meta)
        ui.open_tab(page, "PNG Info")
        page.locator("#png-info-image input[type=file]").set_input_files(str(path))
        page.locator("#png-info-text .infotext-body").wait_for()
        assert "Seed: 987654" in page.locator("#png-info-text").inner_text()
        ui.screenshot(page, "png-info")
        page.locator("#png-info-send-to-txt2img").click()
        page.wait_for_function("document.querySelector('#txt2img-prompt textarea')?.value == 'a castle on a hill'")
        assert ui.text_value(page, "txt2img-negative-prompt") == "fog"
        assert ui.number_value(page, "txt2img-steps") == "31"
        assert ui.number_value(page, "txt2img-width") == "576" and ui.number_value(page, "txt2img-height") == "704"
        assert ui.number_value(page, "txt2img-cfg") == "4.5"
        assert page.locator("#txt2img-seed input").input_value() == "987654"
        assert ui.dropdown_value(page, "txt2img-sampler") == "DPM++ 2M"
        assert ui.dropdown_value(page, "txt2img-scheduler") == "Karras"
        ui.open_tab(page, "PNG Info")
        page.locator("#png-info-send-to-img2img").click()
        page.wait_for_function("document.querySelector('#img2img-prompt textarea')?.value == 'a castle on a hill'")
        page.locator("#img2img-init-image img").wait_for()

    def test_styles_save_and_apply(self, page):
        ui.fill_text(page, "txt2img-prompt", "cinematic still of {prompt}, film grain")
        ui.fill_text(page, "txt2img-negative-prompt", "cartoon")
        page.locator("#txt2img-style-name textarea").fill("cinematic")
        page.locator("#txt2img-save-style").click()
        page.wait_for_function("document.querySelector('#txt2img-style-name textarea')?.value === ''")
        ui.fill_text(page, "txt2img-prompt", "a fox")
        ui.fill_text(page, "txt2img-negative-prompt", "blurry")
        ui.choose(page, "txt2img-styles", "cinematic")
        page.locator("#txt2img-apply-styles").click()
        page.wait_for_function("document.querySelector('#txt2img-prompt textarea')?.value.startsWith('cinematic still of a fox')")
        assert ui.text_value(page, "txt2img-negative-prompt") == "blurry, cartoon"

    def test_switch_checkpoint_from_dropdown(self, page, server):
        _, engine, _ = server
        beta = next(i for i in engine.list_checkpoints() if i.name == "beta.safetensors")
        ui.choose(page, "checkpoint", beta.title)
        page.wait_for_function("document.querySelector('#model-status')?.innerText?.includes('beta.safetensors')")
        assert engine.current_checkpoint.name == "beta.safetensors"
        assert json.loads(engine.settings_path.read_text())["sd_model_checkpoint"] == "beta.safetensors"
        ui.fill_text(page, "txt2img-prompt", "on beta")
        assert "Model: beta" in generate(page)
        ui.choose(page, "checkpoint", engine.list_checkpoints()[0].title)
        page.wait_for_function("document.querySelector('#model-status')?.innerText?.includes('alpha.safetensors')")

    def test_every_tab_opens_without_console_errors(self, page):
        assert "corrupt-test" in page.locator("#palette-notices").inner_text()
        for label in TABS:
            ui.open_tab(page, label)
            page.wait_for_timeout(300)
            ui.screenshot(page, "tab-" + re.sub(r"\W+", "-", label.lower()).strip("-"))
        for notice in ("#controlnet-notice", "#extensions-notice"):
            assert "not available yet" in page.locator(notice).inner_text()
        assert page.errors == []

    def test_settings_apply_saves_config(self, page, server):
        _, engine, _ = server
        ui.open_tab(page, "Settings")
        page.get_by_role("tab", name="Live previews", exact=True).click()
        ui.set_number(page, "setting-live_preview_every", 7)
        page.locator("#settings-apply").click()
        page.wait_for_function("document.querySelector('#settings-result')?.innerText?.includes('Saved')")
        assert engine.settings.live_preview_every == 7
        assert json.loads(engine.settings_path.read_text())["live_preview_every"] == 7

    def test_queue_tab_lists_and_cancels_own_job(self, page, server):
        ui.fill_text(page, "txt2img-prompt", "slow queued castle")
        ui.set_number(page, "txt2img-steps", 40)
        page.locator("#txt2img-generate").click()
        page.wait_for_function("document.querySelector('#txt2img-progress')?.innerText?.includes('Step')")
        ui.open_tab(page, "Queue")
        page.locator(".queue-row", has_text="slow queued castle").wait_for()
        ui.screenshot(page, "queue")
        page.locator(".queue-row", has_text="slow queued castle").locator(".queue-cancel").click()
        ui.open_tab(page, "txt2img")
        page.wait_for_function("document.querySelector('#txt2img-progress')?.innerText?.includes('Interrupted')")

    def test_two_sessions_each_see_only_their_own_job(self, browser, server):
        url = server[0]
        pages = [new_page(browser, url), new_page(browser, url)]
        try:
            for n, p in enumerate(pages):
                ui.fill_text(p, "txt2img-prompt", f"slow session {n}")
                ui.set_number(p, "txt2img-steps", 4)
            for p in pages:
                p.locator("#txt2img-generate").click()
            texts = []
            for p in pages:
                ui.gallery_images(p, "txt2img").first.wait_for()
                p.locator("#txt2img-infotext .infotext-body").wait_for()
                texts.append(p.locator("#txt2img-infotext").inner_text())
            assert texts[0].startswith("slow session 0") and "session 1" not in texts[0]
            assert texts[1].startswith("slow session 1") and "session 0" not in texts[1]
        finally:
            for p in pages:
                p.close()


# ---- the real engine with tiny random checkpoints ------------------------------------------------------------
def pipeline_missing() -> str | None:
    """Why the real pipeline cannot run yet (None once `modules.pipeline` imports)."""
    try:
        import modules.pipeline  # noqa: F401
    except ImportError as exc:
        return f"the engine pipeline is not importable yet: {exc}"
    return None


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    from modules.engine import Engine
    from modules.paths import ModelPaths
    from tests.tiny_models import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("palette-real")
    paths = ModelPaths.create(root)
    paths.ensure()
    write_tiny_checkpoint(paths.folder("checkpoints") / "tiny-a.safetensors", seed=1)
    # tiny-b asks for its size and CFG scale, as the demo model does
    write_tiny_checkpoint(paths.folder("checkpoints") / "tiny-b.safetensors", seed=2,
                          metadata={"palette.default_resolution": "256", "palette.default_cfg_scale": "4"})
    engine = Engine(paths, settings_path=root / "config.json", outputs_root=root)
    queue = JobQueue(engine, max_size=8)
    queue.preload()
    with ui.running_server(engine, queue) as url:
        yield url, engine, queue
    queue.shutdown()


@pytest.mark.browser
@needs_chromium
def test_real_engine_switches_checkpoint(browser, real_server):
    url, engine, _ = real_server
    page = new_page(browser, url)
    try:
        page.wait_for_function("document.querySelector('#model-status')?.innerText?.includes('tiny-a')")
        ui.choose(page, "checkpoint", "tiny-b.safetensors")
        page.wait_for_function("document.querySelector('#model-status')?.innerText?.includes('Model: tiny-b')")
        assert engine.current_checkpoint.name == "tiny-b.safetensors"
        # the sliders of every generating tab follow the model's hints ...
        page.wait_for_function("document.querySelector('#txt2img-cfg input[type=number]')?.value == '4'")
        for tab, label in (("img2img", "img2img"), ("inpaint", "Inpaint"), ("txt2img", "txt2img")):
            ui.open_tab(page, label)
            assert [ui.number_value(page, f"{tab}-{key}") for key in ("width", "height", "cfg")] == ["256", "256", "4"]
        # ... and leaving it for a model without hints puts A1111's defaults back
        ui.choose(page, "checkpoint", "tiny-a.safetensors")
        page.wait_for_function("document.querySelector('#txt2img-cfg input[type=number]')?.value == '7'")
        for tab, label in (("img2img", "img2img"), ("inpaint", "Inpaint"), ("txt2img", "txt2img")):
            ui.open_tab(page, label)
            assert [ui.number_value(page, f"{tab}-{key}") for key in ("width", "height", "cfg")] == ["512", "512", "7"]
        assert page.errors == []
    finally:
        page.close()


@pytest.mark.browser
@needs_chromium
@pytest.mark.skipif(pipeline_missing() is not None, reason=pipeline_missing() or "")
def test_real_engine_generates_with_tiny_model(browser, real_server):
    url, _, _ = real_server
    page = new_page(browser, url)
    try:
        ui.fill_text(page, "txt2img-prompt", "a tiny test")
        for elem, value in (("txt2img-width", 64), ("txt2img-height", 64), ("txt2img-steps", 2)):
            ui.set_number(page, elem, value)
        ui.choose(page, "txt2img-sampler", "Euler")
        page.locator("#txt2img-seed input").fill("77")
        text = generate(page)
        for part in ("a tiny test", "Steps: 2", "Sampler: Euler", "Seed: 77", "Size: 64x64"):
            assert part in text
        ui.screenshot(page, "real-engine-txt2img")
        # the saved file carries the infotext: PNG Info reads it back and restores the fields
        saved = max((real_server[1].outputs_root / "outputs").rglob("*.png"), key=lambda p: p.stat().st_mtime)
        page.locator("#txt2img-random-seed").click()
        ui.set_number(page, "txt2img-steps", 5)
        ui.choose(page, "txt2img-sampler", "DDIM")
        page.wait_for_function("document.querySelector('#txt2img-seed input')?.value == '-1'")
        ui.open_tab(page, "PNG Info")
        page.locator("#png-info-image input[type=file]").set_input_files(str(saved))
        page.locator("#png-info-text .infotext-body").wait_for()
        page.locator("#png-info-send-to-txt2img").click()
        page.wait_for_function("document.querySelector('#txt2img-seed input')?.value == '77'")
        assert ui.number_value(page, "txt2img-steps") == "2" and ui.dropdown_value(page, "txt2img-sampler") == "Euler"
        assert page.errors == []
    finally:
        page.close()


# ---- authentication and file serving (plain HTTP) ------------------------------------------------------
@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("palette-auth")
    out = root / "outputs" / "txt2img-images"
    out.mkdir(parents=True)
    (out / "image.txt").write_text("an output")
    (root / "config.json").write_text("{}")
    engine = FakeEngine(root)
    queue = JobQueue(engine)
    with ui.running_server(engine, queue, auth=[("alice", "s3cret")]) as url:
        yield url, root
    queue.shutdown()


def test_auth_required_on_page_queue_and_files(auth_server):
    url, root = auth_server
    output_file = root / "outputs" / "txt2img-images" / "image.txt"
    with httpx.Client(base_url=url, timeout=10) as anon:
        page = anon.get("/")
        assert page.status_code == 200 and '"auth_required":true' in page.text.replace(" ", "")
        assert "txt2img-generate" not in page.text  # the login form, not the app
        assert anon.get("/config").status_code in (401, 403)
        assert anon.get("/gradio_api/info").status_code in (401, 403)
        join = anon.post("/gradio_api/queue/join", json={"data": [], "fn_index": 0, "session_hash": "x"})
        assert join.status_code in (401, 403)
        assert anon.get(f"/gradio_api/file={output_file}").status_code in (401, 403)
        assert anon.post("/gradio_api/upload", files={"files": ("a.txt", b"x")}).status_code in (401, 403)
        assert anon.post("/login", data={"username": "alice", "password": "wrong"}).status_code >= 400


@pytest.mark.parametrize("path", [
    "../../etc/passwd", "/etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%2f..%2f..%2fetc%2fpasswd",
    "%252e%252e%252fetc%252fpasswd", "..%5c..%5cetc%5cpasswd", "{root}/config.json",
    "{root}/outputs/txt2img-images/../../config.json", "{root}/outputs/txt2img-images/%2e%2e/%2e%2e/config.json",
])
def test_file_route_refuses_paths_outside_outputs(auth_server, path):
    url, root = auth_server
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.post("/login", data={"username": "alice", "password": "s3cret"}).status_code == 200
        ok = client.get(f"/gradio_api/file={root}/outputs/txt2img-images/image.txt")
        assert ok.status_code == 200 and ok.text == "an output"  # the control: outputs are served
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    assert raw_get(url, f"/gradio_api/file={root}/outputs/txt2img-images/image.txt", cookie)[0] == 200
    status, body = raw_get(url, "/gradio_api/file=" + path.format(root=root), cookie)
    assert status in (400, 403, 404), (path, status)
    assert "root:" not in body and body.strip() != "{}"


def raw_get(url: str, path: str, cookie: str) -> tuple[int, str]:
    """GET with the path sent byte for byte (no client-side `..` normalisation)."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers={"Cookie": cookie})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_only_output_folders_are_served(tmp_path):
    from webui.server import served_folders

    engine = FakeEngine(tmp_path)
    assert served_folders(engine, tmp_path) == sorted(str((tmp_path / getattr(engine.settings, n)).resolve()) for n in (
        "outdir_extras_samples", "outdir_img2img_samples", "outdir_grids", "outdir_txt2img_samples"))
    engine.update_settings(outdir_grids=str(tmp_path), outdir_extras_samples="/")
    folders = served_folders(engine, tmp_path)
    assert str(tmp_path) not in folders and "/" not in folders and len(folders) == 2


def test_page_answers_while_the_worker_is_busy(tmp_path):
    """A model load on the worker must not hold up HTTP: the page and config come back at once."""
    import threading
    import time

    engine = FakeEngine(tmp_path)
    queue = JobQueue(engine)
    release = threading.Event()
    queue.submit_task(lambda: release.wait(30), label="Loading alpha.safetensors")
    try:
        with ui.running_server(engine, queue) as url, httpx.Client(base_url=url, timeout=10) as client:
            start = time.monotonic()
            assert client.get("/").status_code == 200
            assert client.get("/config").status_code == 200
            assert time.monotonic() - start < 5
    finally:
        release.set()
        queue.shutdown()


def test_api_flag_mounts_the_rest_api_beside_the_ui(tmp_path):
    """`--api`: launch_ui adds webui.api's routes to the UI server (their auth is --api-auth)."""
    from types import SimpleNamespace

    engine = FakeEngine(tmp_path)
    queue = JobQueue(engine)
    options = SimpleNamespace(api=True, api_auth=(), is_local=True, nowebui=False, data_dir=tmp_path)
    try:
        with ui.running_server(engine, queue, options=options, auth=[("alice", "s3cret")]) as url, \
                httpx.Client(base_url=url, timeout=10) as client:
            samplers = client.get("/sdapi/v1/samplers")
            assert samplers.status_code == 200 and any(s["name"] == "Euler a" for s in samplers.json())
            assert client.get("/config").status_code == 401  # the UI keeps its own login
    finally:
        queue.shutdown()
