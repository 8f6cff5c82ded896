"""Megapixels per second of a 4× ESRGAN-size network (RRDBNet: 64 features, 23 blocks, random weights),
untiled vs tiled through Palette's upscaler registry, with the peak RSS of each run.

Each mode runs in a fresh subprocess so its peak RSS (VmHWM) is its own. The CPU of the dev machine is
shared: run it briefly, on a small image, and compare the ratio tiled/untiled rather than absolute
figures. Usage:
    .venv/bin/python bench/upscale.py [--size 80] [--tile 48] [--overlap 16] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def one_mode(folder: str, size: int, tile: int, overlap: int) -> dict:
    """Runs inside the subprocess: load the model, warm up on a tiny image, time one pass."""
    import torch

    from modules.paths import ModelPaths
    from modules.tiling import plan_tiles
    from modules.upscalers import UpscalerRegistry

    registry = UpscalerRegistry(ModelPaths.create(Path(folder)), device=torch.device("cpu"), dtype=torch.float32)
    model = registry.load("4x-bench")
    registry.run_model(model, torch.rand(1, 3, 16, 16), tile=0)  # warm-up (allocator, oneDNN kernels)
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    out = registry.run_model(model, image, tile=tile, overlap=overlap)
    seconds = time.perf_counter() - start
    return {"tile": tile, "overlap": overlap, "tiles": plan_tiles(size, size, tile, overlap, model.align).count,
            "seconds": round(seconds, 2), "input_mp_s": round(size * size / seconds / 1e6, 5),
            "output_mp_s": round(out.shape[-1] * out.shape[-2] / seconds / 1e6, 4),
            "peak_rss_mib": round(peak_rss() / 2**20, 1), "architecture": model.architecture, "scale": model.scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=80, help="input side in pixels (output is 4x)")
    parser.add_argument("--tile", type=int, default=48)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        folder, size, tile, overlap = args.child
        print(json.dumps(one_mode(folder, int(size), int(tile), int(overlap))))
        return

    import torch
    from safetensors.torch import save_file

    from tests.upscaler_models import esrgan_old

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "models" / "ESRGAN" / "4x-bench.safetensors"
        path.parent.mkdir(parents=True)
        save_file(esrgan_old(nf=64, nb=23, gc=32, scale=4, seed=0), str(path))
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        results = {}
        for label, tile in (("untiled", 0), ("tiled", args.tile)):
            cmd = [sys.executable, __file__, "--child", tmp, str(args.size), str(tile), str(args.overlap)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            results[label] = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = {k: round(results["tiled"][k] / results["untiled"][k], 3) for k in ("seconds", "output_mp_s", "peak_rss_mib")}
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "torch": torch.__version__, "threads": args.threads, "input": f"{args.size}x{args.size}",
                      "date": time.strftime("%Y-%m-%d"), **results, "tiled/untiled": ratio}, indent=2))


if __name__ == "__main__":
    main()
