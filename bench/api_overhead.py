"""What the REST API adds per request, and how many jobs per second the queue moves.

Same process, same model, same request, three ways: `engine.generate` directly, `JobQueue.submit` +
`wait` (queue hand-off), and `POST /sdapi/v1/txt2img` over HTTP on 127.0.0.1 (validation, queue, PNG
encoding with its infotext, base64, JSON). With the tiny real model the difference is the API's own
cost; with `--fake` (no maths at all) the whole request is overhead. A fresh-thread run separates
torch's own cost of running off the main thread from the queue's. Throughput: 2N jobs posted by C
client threads at once (same process: clients share the GIL with the server), and
`POST /palette/v1/jobs` submissions per second. Usage:
    .venv/bin/python bench/api_overhead.py [--fake] [--requests 30] [--size 64] [--steps 2] [--clients 4]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import torch  # noqa: E402

from modules.devices import DevicePlan  # noqa: E402
from modules.paths import ModelPaths  # noqa: E402
from modules.queue import JobQueue  # noqa: E402
from modules.types import GenerationRequest  # noqa: E402
from webui.api import create_api_app  # noqa: E402
from webui.api.serve import serve_in_thread  # noqa: E402


def timed(fn: Callable[[], Any], n: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"median_ms": round(statistics.median(ms), 2), "p90_ms": round(ms[int(len(ms) * 0.9) - 1], 2),
            "min_ms": round(ms[0], 2)}


def make_engine(root: Path, fake: bool) -> Any:
    if fake:
        from tests.ui_fixtures import FakeEngine

        return FakeEngine(root)
    from modules.engine import Engine
    from tests.tiny_models import write_tiny_checkpoint

    write_tiny_checkpoint(root / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1")
    plan = DevicePlan(torch.device("cpu"), torch.float32, torch.float32, torch.float32)
    engine = Engine(ModelPaths.create(root), plan=plan, outputs_root=root)
    engine.current_bundle()
    return engine


def timed_in_thread(fn: Callable[[], Any], n: int) -> list[float]:
    """The same loop on a fresh thread: the queue's worker is one, and torch runs differently there."""
    box: dict[str, list[float]] = {}
    thread = threading.Thread(target=lambda: box.update(t=timed(fn, n)))
    thread.start()
    thread.join()
    return box["t"]


def throughput(url: str, body: dict, jobs: int, clients: int) -> dict[str, float]:
    """`jobs` txt2img requests from `clients` threads at once; every one must succeed."""
    codes: list[int] = []
    lock = threading.Lock()
    per_client = [jobs // clients + (i < jobs % clients) for i in range(clients)]

    def client(count: int, offset: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            for i in range(count):
                r = c.post("/sdapi/v1/txt2img", json={**body, "seed": offset + i})
                with lock:
                    codes.append(r.status_code)

    threads = [threading.Thread(target=client, args=(n, 1000 * k)) for k, n in enumerate(per_client)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    assert codes.count(200) == jobs, codes
    return {"jobs": jobs, "clients": clients, "seconds": round(elapsed, 3), "jobs_per_s": round(jobs / elapsed, 1)}


def submit_rate(url: str, body: dict, n: int, queue: JobQueue) -> dict[str, float]:
    """POST /palette/v1/jobs returns before the job runs: how fast can jobs be queued, then drained."""
    with httpx.Client(base_url=url, timeout=600) as c:
        t = time.perf_counter()
        ids = [c.post("/palette/v1/jobs", json={**body, "seed": i}).json()["id"] for i in range(n)]
        submitted = time.perf_counter() - t
        for job_id in ids:
            queue.get(job_id).wait()
        drained = time.perf_counter() - t
    return {"jobs": n, "submit_per_s": round(n / submitted, 1), "submit_median_ms": round(submitted / n * 1000, 2),
            "all_done_s": round(drained, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fake", action="store_true", help="the UI tests' fake engine (no model maths)")
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(Path(tmp), args.fake)
        request = GenerationRequest(prompt="a lighthouse at dusk", steps=args.steps, width=args.size,
                                    height=args.size, seed=1, sampler_name="Euler", do_not_save=True)
        body = {"prompt": request.prompt, "steps": args.steps, "width": args.size, "height": args.size,
                "seed": 1, "sampler_name": "Euler"}
        direct = timed(lambda: engine.generate(request), args.requests)
        on_thread = timed_in_thread(lambda: engine.generate(request), args.requests)
        queue = JobQueue(engine, max_size=max(64, args.requests * 2))
        queued = timed(lambda: queue.submit(request).wait(), args.requests)
        with serve_in_thread(create_api_app(engine, queue, None)) as url, httpx.Client(base_url=url, timeout=600) as c:
            def post() -> None:
                r = c.post("/sdapi/v1/txt2img", json=body)
                assert r.status_code == 200, r.text

            api = timed(post, args.requests)
            tp_api = throughput(url, body, args.requests * 2, args.clients)
            rate = submit_rate(url, body, args.requests, queue)
        queue.shutdown()
    d, t, q, a = summary(direct), summary(on_thread), summary(queued), summary(api)
    print(json.dumps({
        "engine": "fake" if args.fake else "tiny sd1 (real pipeline, CPU)",
        "request": f"{args.size}x{args.size}, {args.steps} steps, batch 1", "torch_threads": torch.get_num_threads(),
        "direct_generate": d, "direct_generate_other_thread": t, "queue_submit_wait": q, "api_txt2img_http": a,
        "thread_effect_ms": round(t["median_ms"] - d["median_ms"], 2),
        "queue_overhead_ms": round(q["median_ms"] - t["median_ms"], 2),
        "api_overhead_vs_queue_ms": round(a["median_ms"] - q["median_ms"], 2),
        "api_overhead_vs_direct_ms": round(a["median_ms"] - d["median_ms"], 2),
        "direct_jobs_per_s": round(1000 / d["median_ms"], 1),
        "api_throughput": tp_api, "palette_jobs_submit": rate,
    }, indent=2))


if __name__ == "__main__":
    main()
