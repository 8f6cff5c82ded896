"""Load a full-size random SD1.5 checkpoint; report load seconds and peak RSS against the weight bytes.

Each measurement runs in a fresh subprocess so peak RSS is the load's own. Usage:
    .venv/bin/python bench/load_checkpoint.py [--dtype fp16|fp32] [--compute fp32|bf16]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time, torch
def hwm():  # peak RSS of this process image (VmHWM resets at exec, unlike ru_maxrss)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
sys.path.insert(0, {root!r})
from modules.checkpoints import load_checkpoint
from modules.devices import DevicePlan
compute = {{"fp32": torch.float32, "bf16": torch.bfloat16}}[{compute!r}]
plan = DevicePlan(torch.device("cpu"), compute, torch.float32, torch.float32)
base = hwm()
t0 = time.perf_counter()
bundle = load_checkpoint({path!r}, plan)
t_load = time.perf_counter()
# read every weight once, as the first generation would (mapped pages become resident)
total = 0
for module in (bundle.unet.model, bundle.vae.model, *[u.model for u in bundle.text.units]):
    for p in module.parameters():
        total += p.numel() * p.element_size()
        p.data.float().sum() if p.dtype != torch.float32 else p.data.sum()
t1 = time.perf_counter()
peak = hwm()
print(json.dumps({{"load_s": t_load - t0, "first_touch_s": t1 - t_load, "peak_rss_bytes": peak, "baseline_rss_bytes": base,
                  "weight_bytes": total, "report": bundle.report.summary()}}))
"""


def measure(path: Path, compute: str) -> dict:
    code = CHILD.format(root=str(ROOT), path=str(path), compute=compute)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    from bench.full_size import write_full_size
    import torch

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"))
    p.add_argument("--compute", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--cache", type=Path, default=ROOT / "tmp" / "bench")
    a = p.parse_args()
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    path = write_full_size(a.cache / f"sd15-random-{a.dtype}.safetensors", "sd15", dtype)
    runs = [measure(path, a.compute) for _ in range(3)]
    best = min(runs, key=lambda r: r["load_s"])
    used = best["peak_rss_bytes"] - best["baseline_rss_bytes"]
    print(json.dumps({
        "file_dtype": a.dtype, "compute": a.compute,
        "file_bytes": path.stat().st_size,
        "load_s_runs": [round(r["load_s"], 3) for r in runs],
        "first_touch_s": round(best["first_touch_s"], 3),
        "weight_bytes": best["weight_bytes"],
        "peak_rss_gib": round(best["peak_rss_bytes"] / 2**30, 3),
        "rss_over_baseline_per_weight_byte": round(used / best["weight_bytes"], 3),
        "peak_rss_per_weight_byte": round(best["peak_rss_bytes"] / best["weight_bytes"], 3),
        "report": best["report"],
    }, indent=1))


if __name__ == "__main__":
    main()
