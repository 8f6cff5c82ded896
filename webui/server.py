"""Starting the web server: bind address, auth, which folders may be served, the API hook.

Security: with `--gradio-auth` Gradio guards the page config, the queue, uploads and file routes; the
only folders served are the output folders (plus Gradio's own upload/cache folder), never the models,
config.json or the rest of the disk.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from modules.config import OUTDIR_SETTINGS

log = logging.getLogger(__name__)
STYLE_CSS = Path(__file__).with_name("style.css")
SCRIPT_JS = Path(__file__).with_name("script.js")
MAX_UPLOAD = "64mb"
ApiHook = Callable[[Any], None]  # receives the FastAPI app; adds routes (not middleware: it is running)


def served_folders(engine: Any, data_dir: Path) -> list[str]:
    """Output folders the browser may fetch files from; one that would expose data_dir is refused."""
    root = Path(engine.outputs_root).resolve()
    data_dir = data_dir.resolve()
    folders = []
    for name in OUTDIR_SETTINGS:
        relative = Path(getattr(engine.settings, name))
        folder = (relative if relative.is_absolute() else root / relative).resolve()
        if folder == data_dir or folder in data_dir.parents or folder == Path(folder.anchor):
            log.warning("not serving %s (%s): it would expose %s", folder, name, data_dir)
            continue
        folders.append(str(folder))
    return sorted(set(folders))


def blocked_folders(engine: Any, data_dir: Path) -> list[str]:
    """Never served, even if an output folder is configured around them."""
    paths = [data_dir / "config.json", data_dir / "cache.json", data_dir / "styles.csv"]
    model_paths = getattr(engine, "paths", None)
    if model_paths is not None:
        paths.append(Path(model_paths.models_dir))
    return [str(p.resolve()) for p in paths]


def default_api_hook(engine: Any, queue: Any, options: Any) -> ApiHook | None:
    """The REST API (webui.api.mount_api) on the same server when `--api` was given."""
    if not getattr(options, "api", False):
        return None
    from webui.api import mount_api

    return lambda app: mount_api(app, engine, queue, options)


def launch_ui(
    engine: Any,
    queue: Any,
    options: Any = None,
    *,
    host: str | None = None,
    port: int | None = None,
    share: bool | None = None,
    auth: tuple[tuple[str, str], ...] | list[tuple[str, str]] | None = None,
    api_app_hook: ApiHook | None = None,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
) -> gr.Blocks | None:
    """Serve the UI. Values come from `options` (LaunchOptions) unless given as keywords.

    Blocks until the server stops, unless `prevent_thread_lock` (tests): then returns the running
    Blocks; call `.close()` on it. `api_app_hook(app)` is called with the FastAPI app once it runs
    (default: the REST API when `options.api`). `--nowebui` serves only the API and returns None.
    """
    from webui.app import build_ui

    host = host if host is not None else getattr(options, "host", "127.0.0.1")
    port = port if port is not None else getattr(options, "port", 7860)
    share = share if share is not None else getattr(options, "share", False)
    auth = list(auth if auth is not None else getattr(options, "auth", ()))
    data_dir = Path(getattr(options, "data_dir", None) or engine.outputs_root)
    hook = api_app_hook or default_api_hook(engine, queue, options)
    if getattr(options, "nowebui", False):
        return _serve_api_only(engine, queue, options, host, port, api_app_hook)

    demo = build_ui(engine, queue, options)
    demo.queue(default_concurrency_limit=4, max_size=None)  # Palette's JobQueue is the real queue
    app, local_url, share_url = demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=auth or None,
        auth_message="Palette: please log in.",
        prevent_thread_lock=True,
        show_error=True,
        allowed_paths=served_folders(engine, data_dir),
        blocked_paths=blocked_folders(engine, data_dir),
        max_file_size=MAX_UPLOAD,
        ssr_mode=False,
        quiet=quiet,
        footer_links=["gradio", "settings"],
        css=STYLE_CSS.read_text(encoding="utf-8"),
        js=SCRIPT_JS.read_text(encoding="utf-8"),
    )
    if hook is not None:
        hook(app)
    log.info("Palette UI at %s%s", local_url, f" (share: {share_url})" if share_url else "")
    if prevent_thread_lock:
        return demo
    try:
        demo.block_thread()
    finally:
        demo.close()
    return demo


def _serve_api_only(engine: Any, queue: Any, options: Any, host: str, port: int, hook: ApiHook | None) -> None:
    """`--nowebui`: only the REST API (webui.api's own app, or a bare one given to `hook`)."""
    import uvicorn

    if hook is None:
        from webui.api import create_api_app

        app = create_api_app(engine, queue, options)
    else:
        import fastapi

        app = fastapi.FastAPI(title="Palette API")
        hook(app)
    uvicorn.run(app, host=host, port=port)
