"""The README's start command on a machine with no checkpoint of its own: `python3 launch.py` serves the
UI on the demo model, and typing a prompt and pressing Generate gives a picture.

The real `launch.py` runs as a separate process (as a user starts it), with `--skip-install` (the test
command has already installed the requirements), a free port and a temporary data folder, and the
repository's own models folder, where only the demo model lies in a fresh clone.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests import ui_browser_helpers as ui

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "Stable-diffusion" / "palette-demo.safetensors"


def demo_cfg() -> float | None:
    from modules.types import CheckpointHints

    return CheckpointHints.from_file(DEMO).cfg_scale if DEMO.is_file() else None


DEMO_CFG = demo_cfg() or 7.0  # A1111's default when the file names none

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not DEMO.is_file(), reason="the demo model is not in models/Stable-diffusion")]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float) -> float:
    """Seconds until `url` answers 200; fails with the server's output if it exits or takes too long."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            pytest.fail(f"launch.py exited with {process.returncode}:\n{process.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"no answer from {url} within {timeout} s")


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    data = tmp_path_factory.mktemp("first-run")
    port = ui.free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--skip-install", "--port", str(port),
                                "--data-dir", str(data)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        seconds = wait_for_http(url, process, timeout=90)
        yield url, data, seconds, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_launch_serves_the_ui_and_prints_the_url(started):
    url, _, _, _ = started
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert b"Palette" in response.read()


def test_a_prompt_and_generate_give_a_picture_from_the_demo_model(started, browser):
    url, data, _, _ = started
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(90_000)
    try:
        page.goto(url)
        page.locator("#txt2img-generate").wait_for()
        # the demo model names its native size (256) and its CFG scale, and the sliders follow them
        page.wait_for_function("document.querySelector('#txt2img-width input[type=number]')?.value == '256'")
        assert ui.number_value(page, "txt2img-height") == "256"
        assert float(ui.number_value(page, "txt2img-cfg")) == DEMO_CFG
        ui.fill_text(page, "txt2img-prompt", "a red circle on a blue background")
        page.locator("#txt2img-generate").click()
        ui.gallery_images(page, "txt2img").first.wait_for()
        page.locator("#txt2img-infotext .infotext-body").wait_for()
        infotext = page.locator("#txt2img-infotext").inner_text()
    finally:
        ui.screenshot(page, "first-run")
        page.close()
    assert infotext.startswith("a red circle on a blue background")
    assert "Model: palette-demo" in infotext and "Size: 256x256" in infotext and f"CFG scale: {DEMO_CFG:g}," in infotext
    saved = sorted((data / "outputs" / "txt2img-images").rglob("*.png"))
    assert len(saved) == 1, f"expected one saved picture under {data / 'outputs'}"
    with Image.open(saved[0]) as image:
        assert "Model: palette-demo" in image.info["parameters"]
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 10, "the picture is flat: the model did not draw"
    assert errors == []
