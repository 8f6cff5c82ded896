#!/usr/bin/env python3
"""Start Palette: install requirements on first run, build the Engine, start the web UI.

This is the only place that reads the command line. First run: creates `.venv` (unless already in a
virtual environment), installs `requirements.txt`, and re-runs itself inside that environment. Later
runs skip installation while the requirements file is unchanged (its hash is stamped in the venv).
Nothing here reaches for the network except pip during that install.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch.py", description="Palette: local latent-diffusion web UI")
    g = p.add_argument_group("install")
    g.add_argument("--skip-install", action="store_true", help="do not create .venv or install requirements")
    g.add_argument("--install-only", action="store_true", help="install requirements and exit")
    g.add_argument("--dev", action="store_true", help="also install test requirements (requirements-test.txt)")
    g = p.add_argument_group("server")
    g.add_argument("--listen", action="store_true", help="bind 0.0.0.0 (reachable from your network)")
    g.add_argument("--server-name", default=None, help="bind this address instead of 127.0.0.1")
    g.add_argument("--port", type=int, default=7860)
    g.add_argument("--share", action="store_true", help="create a public Gradio share link (needs auth)")
    g.add_argument("--insecure", action="store_true", help="allow --share without --gradio-auth")
    g.add_argument("--gradio-auth", default=None, help="user:pass[,user2:pass2] for the web UI")
    g.add_argument("--gradio-auth-path", default=None, help="file with user:pass lines")
    g.add_argument("--api", action="store_true", help="serve the A1111-compatible REST API beside the UI")
    g.add_argument("--api-auth", default=None, help="user:pass[,…] required by the REST API")
    g.add_argument("--nowebui", action="store_true", help="serve only the API")
    g.add_argument("--skip-load-model-at-start", action="store_true", help="load the model on first use")
    g = p.add_argument_group("compute")
    g.add_argument("--use-cpu", action="store_true", help="never use the GPU")
    g.add_argument("--precision", default=None, choices=("auto", "fp32", "bf16", "fp16"))
    g.add_argument("--no-half", action="store_true", help="run everything in fp32")
    g.add_argument("--no-half-vae", action="store_true", help="run the VAE in fp32")
    g = p.add_argument_group("paths")
    g.add_argument("--data-dir", default=str(ROOT), help="where config.json, outputs/ and cache.json live")
    g.add_argument("--models-dir", default=None)
    g.add_argument("--ckpt-dir", default=None)
    g.add_argument("--vae-dir", default=None)
    g.add_argument("--lora-dir", default=None)
    g.add_argument("--embeddings-dir", default=None)
    return p


# ---- installation (standard library only: runs before any dependency exists) -----------------------
def _in_virtualenv() -> bool:
    return sys.prefix != getattr(sys, "base_prefix", sys.prefix)


def _requirements_hash(dev: bool) -> str:
    h = hashlib.sha256()
    for name in ("requirements.txt",) + (("requirements-test.txt",) if dev else ()):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def ensure_installed(dev: bool) -> None:
    """Create .venv and install requirements when needed; re-exec inside .venv."""
    if not _in_virtualenv():
        python = VENV / "bin" / "python"
        if not python.exists():
            print(f"Palette: creating virtual environment in {VENV}", flush=True)
            subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])
    stamp = Path(sys.prefix) / (".palette-requirements-dev" if dev else ".palette-requirements")
    wanted = _requirements_hash(dev)
    if stamp.exists() and stamp.read_text().strip() == wanted:
        return
    req = "requirements-test.txt" if dev else "requirements.txt"
    print(f"Palette: installing {req} (first run; a few minutes)", flush=True)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(ROOT / req)])
    stamp.write_text(wanted)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.skip_install:
        ensure_installed(args.dev)
    if args.install_only:
        return 0
    from modules.launch_options import LaunchError, options_from_args

    try:
        options = options_from_args(args, root=ROOT)
    except LaunchError as exc:
        print(f"Palette: {exc}", file=sys.stderr)
        return 2
    for warning in options.warnings:
        print(warning, file=sys.stderr, flush=True)
    return serve(options)


def serve(options) -> int:  # noqa: ANN001 - LaunchOptions, imported lazily
    """Build the Engine and the job queue, then start the web UI and/or the API (blocks)."""
    import logging

    from modules.engine import Engine
    from modules.paths import BUNDLED_DEMO_MODEL
    from modules.queue import JobQueue
    from webui.server import launch_ui

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    engine = Engine(
        options.paths,
        settings_path=options.data_dir / "config.json",
        plan=options.device_plan,
        outputs_root=options.data_dir,
        bundled_demo=BUNDLED_DEMO_MODEL,
    )
    engine.paths.ensure()
    queue = JobQueue(engine, max_size=engine.settings.queue_max_size)
    if not options.skip_load_model_at_start:
        queue.preload()  # loads the default model on the worker thread; the UI answers meanwhile
    launch_ui(engine, queue, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
