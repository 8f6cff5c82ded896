"""Seconds per sampling step at 512×512 with CFG on a full-size random SD1.5 checkpoint, per precision.

Reference in the same process: a large fp32 and bf16 matmul (GFLOP/s), so figures from noisy shared
machines can be compared as "UNet step time × matmul throughput". Usage:
    .venv/bin/python bench/sampling_speed.py [--steps 3] [--size 512] [--precision fp32 bf16]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.full_size import write_full_size  # noqa: E402
from modules.devices import DevicePlan  # noqa: E402
from modules.engine import Engine  # noqa: E402
from modules.paths import ModelPaths  # noqa: E402
from modules.types import GenerationRequest, ProgressEvent  # noqa: E402


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def peak_rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run(root: Path, precision: str, steps: int, size: int) -> dict:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    plan = DevicePlan(torch.device("cpu"), dtype, torch.float32, torch.float32)
    engine = Engine(ModelPaths.create(root), plan=plan, outputs_root=root)
    stamps: list[float] = []
    request = GenerationRequest(prompt="a photo of a fox in the snow", negative_prompt="blurry", steps=steps,
                                width=size, height=size, seed=1, sampler_name="Euler", cfg_scale=7.0,
                                do_not_save=True)
    t0 = time.perf_counter()
    engine.generate(request, progress=lambda e: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"precision": precision, "seconds_per_step": round(min(per_step), 3) if per_step else None,
            "step_times": [round(s, 3) for s in per_step], "total_s_incl_load_text_vae": round(total, 2),
            "matmul_gflops": round(matmul_gflops(dtype), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--root", type=Path, default=ROOT / "tmp" / "bench" / "root")
    a = p.parse_args()
    write_full_size(a.root / "models" / "Stable-diffusion" / "sd15-random.safetensors", "sd15", torch.float16)
    results = [run(a.root, prec, a.steps, a.size) for prec in a.precision]
    print(json.dumps({"size": a.size, "cfg": True, "results": results, "peak_rss_gib": round(peak_rss() / 2**30, 2),
                      "threads": torch.get_num_threads()}, indent=1))


if __name__ == "__main__":
    main()
