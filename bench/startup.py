"""Seconds from starting `launch.py` to the UI's first HTTP 200 (issue 6 asks for 5 s on the build VM).

Each run starts the real `launch.py --skip-install` on a free port with an empty temporary data folder
(the shipped demo model is then the checkpoint) and polls `/` every 0.1 s. `--no-preload` adds
`--skip-load-model-at-start`, which takes the background model load out of the measurement. Usage:
    .venv/bin/python bench/startup.py [--runs 3] [--no-preload]
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seconds_to_first_answer(preload: bool, timeout: float = 120.0) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        args = [sys.executable, str(ROOT / "launch.py"), "--skip-install", "--port", str(port), "--data-dir", data]
        if not preload:
            args.append("--skip-load-model-at-start")
        start = time.monotonic()
        process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while time.monotonic() - start < timeout:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=1):
                        return time.monotonic() - start
                except OSError:
                    time.sleep(0.1)
            raise TimeoutError(f"no answer within {timeout} s")
        finally:
            process.terminate()
            process.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-preload", action="store_true")
    args = ap.parse_args()
    times = [seconds_to_first_answer(not args.no_preload) for _ in range(args.runs)]
    print(f"launch.py to HTTP 200 ({'no preload' if args.no_preload else 'demo model preloading'}): "
          + ", ".join(f"{t:.2f} s" for t in times) + f"; best {min(times):.2f} s")


if __name__ == "__main__":
    main()
