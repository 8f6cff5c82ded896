"""Seconds per sampling step at 512×512 with CFG on a full-size random SD1.5 checkpoint, per precision.

Precisions: fp32; mixed (fp32 UNet, bf16 matmuls in the transformer blocks: the default on CPUs with
native bf16); bf16 (the whole UNet). `--rounds` repeats the list, interleaved, and keeps each
precision's best step, so a burst of load on a shared machine hits both sides alike. Reference in the
same process: a large fp32 and bf16 matmul (GFLOP/s). Usage:
    .venv/bin/python bench/sampling_speed.py [--steps 3] [--size 512] [--precision fp32 mixed] [--rounds 2]
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
    dtype = {"fp32": torch.float32, "mixed": torch.float32, "bf16": torch.bfloat16}[precision]
    plan = DevicePlan(torch.device("cpu"), dtype, torch.float32, torch.float32,
                      transformer_dtype=torch.bfloat16 if precision == "mixed" else None)
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
            "matmul_gflops": round(matmul_gflops(torch.bfloat16 if precision != "fp32" else dtype), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--precision", nargs="+", default=["fp32", "mixed"], choices=["fp32", "mixed", "bf16"])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--root", type=Path, default=ROOT / "tmp" / "bench" / "root")
    a = p.parse_args()
    write_full_size(a.root / "models" / "Stable-diffusion" / "sd15-random.safetensors", "sd15", torch.float16)
    results = [run(a.root, prec, a.steps, a.size) for _ in range(a.rounds) for prec in a.precision]
    best = {prec: min(r["seconds_per_step"] for r in results if r["precision"] == prec) for prec in a.precision}
    base = best[a.precision[0]]
    print(json.dumps({"size": a.size, "cfg": True, "results": results, "best_seconds_per_step": best,
                      f"speed_vs_{a.precision[0]}": {k: round(base / v, 2) for k, v in best.items()},
                      "peak_rss_gib": round(peak_rss() / 2**30, 2), "threads": torch.get_num_threads()}, indent=1))


if __name__ == "__main__":
    main()
