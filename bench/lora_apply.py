"""What a LoRA costs a job: patching it into a full-size SD1.5 UNet, against one sampling step.

Palette records a job's LoRA patches on a clone of the model's patcher and swaps the patched weights in
for that job only (modules.patcher), so every job with a LoRA pays the patch again: each delta
(up @ down, scaled) is computed and added to its weight, and the originals go back afterwards. This
measures that cost on the CPU, in the same process as its reference, one UNet call at 512x512 with CFG
(batch 2, 77 tokens), which is one sampling step. The LoRA is kohya-style, rank --rank, on every module
of every transformer block (attention q/k/v/out, feed-forward, proj_in/out: what most published SD1.5
LoRAs cover), written to a safetensors file and read back through modules.lora as a user's file is.
Random weights, full size: the arithmetic of a real model and a real LoRA. Usage:
    .venv/bin/python bench/lora_apply.py [--rank 32] [--rounds 3] [--dtype fp32|bf16]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from modules.lora import apply_loras, open_lora  # noqa: E402
from modules.lora_keys import KeyMap, diffusers_blocks, ldm_to_diffusers  # noqa: E402
from modules.nn.unet import SD15_UNET, UNetModel  # noqa: E402
from modules.patcher import ModelPatcher  # noqa: E402
from modules.types import LoraRef  # noqa: E402


@dataclass(frozen=True)
class UNetOnlyBundle:
    """The two fields of a model bundle that `apply_loras` reads: a UNet patcher, no text encoders."""

    unet: ModelPatcher
    text_patchers: tuple[ModelPatcher, ...] = ()


def transformer_modules(unet: torch.nn.Module) -> list[str]:
    """LDM names of the Linear/1x1-conv modules in the UNet's transformer blocks."""
    return [name for name, m in unet.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and (".transformer_blocks." in name
                                                                      or name.endswith((".proj_in", ".proj_out")))]


def write_kohya_lora(unet: torch.nn.Module, path: Path, rank: int, seed: int = 0) -> int:
    """A kohya-named LoRA over every transformer module; returns how many modules it covers."""
    gen = torch.Generator().manual_seed(seed)
    blocks = diffusers_blocks(unet.config)
    tensors = {}
    for name in transformer_modules(unet):
        weight = unet.get_submodule(name).weight
        stem = "lora_unet_" + ldm_to_diffusers(name, blocks).replace(".", "_")
        kernel = tuple(weight.shape[2:])
        tensors[f"{stem}.lora_down.weight"] = torch.randn(rank, weight.shape[1], *kernel, generator=gen) * 0.01
        tensors[f"{stem}.lora_up.weight"] = torch.randn(weight.shape[0], rank, *(1,) * len(kernel), generator=gen) * 0.01
        tensors[f"{stem}.alpha"] = torch.tensor(rank / 2.0)
    save_file({k: v.to(torch.float16).contiguous() if v.ndim else v for k, v in tensors.items()}, str(path))
    return len(tensors) // 3


def best_of(rounds: int, fn) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="the UNet's weight dtype")
    args = ap.parse_args(argv)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    unet = UNetModel(SD15_UNET).to(dtype).eval().requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench-lora.safetensors"
        covered = write_kohya_lora(unet, path, args.rank)
        lora = open_lora(path)
        keymap = KeyMap(unet, [])
        bundle = UNetOnlyBundle(ModelPatcher(unet))

        def patch_and_restore():  # what a job with this LoRA does (modules.networks, modules.pipeline)
            applied = apply_loras(bundle, [(LoraRef(lora.name), lora)], keymap)
            with applied.bundle.unet.applied():
                pass
            return applied

        applied = patch_and_restore()
        assert applied.modules == {lora.name: covered} and applied.skipped_keys == {lora.name: 0}, applied

        x = torch.randn(2, 4, 64, 64, dtype=dtype)
        t = torch.tensor([500.0, 500.0])
        context = torch.randn(2, 77, 768, dtype=dtype)

        def step():
            with torch.inference_mode():
                unet(x, t, context)

        step()  # warm-up: allocator, oneDNN primitives
        first = transformer_modules(unet)[0]
        before = unet.get_submodule(first).weight.clone()
        with applied.bundle.unet.applied() as model:
            changed = not torch.equal(model.get_submodule(first).weight, before)
        restored = torch.equal(unet.get_submodule(first).weight, before)
        assert changed and restored, f"{first}: patched {changed}, restored bit-exactly {restored}"
        step_s = best_of(args.rounds, step)
        patch_s = best_of(args.rounds, patch_and_restore)
    result = {"rank": args.rank, "modules": covered, "unet_dtype": args.dtype, "threads": torch.get_num_threads(),
              "unet_step_s": round(step_s, 3), "lora_patch_and_restore_s": round(patch_s, 3),
              "patch_over_step": round(patch_s / step_s, 3)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
