"""Helpers for the real-browser UI tests: a Palette server on a free port, Chromium, widget drivers.

The server runs in-process (`launch_ui(..., prevent_thread_lock=True)`) on 127.0.0.1; Chromium is
Debian's (`/usr/bin/chromium`), driven through Playwright's sync API.
"""
from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(engine: Any, queue: Any, *, auth: list[tuple[str, str]] | None = None,
                   options: Any = None) -> Iterator[str]:
    """Start the real UI server; yields its base URL ("http://127.0.0.1:PORT")."""
    from webui.app import launch_ui

    port = free_port()
    demo = launch_ui(engine, queue, options, host="127.0.0.1", port=port, share=False, auth=auth or (),
                     prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


# ---- driving Gradio widgets --------------------------------------------------------------------------
def open_tab(page: Any, label: str) -> None:
    page.get_by_role("tab", name=label, exact=True).click()


def set_number(page: Any, elem_id: str, value: Any) -> None:
    """A Slider's or Number's number box: type the value and leave the field (Gradio commits on blur).
    A slider in a tab opened a moment ago can still be mounting and put its old value back, so the
    value is typed again (up to three times) until the box keeps it."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    for _ in range(3):
        box.fill(str(value))
        box.press("Enter")
        box.blur()
        page.wait_for_timeout(200)
        if box.input_value() == str(value):
            return


def number_value(page: Any, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input[type=number]").first.input_value()


def choose(page: Any, elem_id: str, option: str) -> None:
    """Open a Dropdown and click one of its options."""
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


def dropdown_value(page: Any, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input").first.input_value()


def fill_text(page: Any, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} textarea").first.fill(text)


def text_value(page: Any, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea").first.input_value()


def gallery_images(page: Any, tab: str) -> Any:
    return page.locator(f"#{tab}-gallery img")


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
