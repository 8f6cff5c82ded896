"""Device and dtype choice, made at run time from what the machine has and what the user asked for.

CUDA when present, else CPU. On CUDA the UNet and text encoders run in fp16 (bf16 where supported),
the VAE in bf16 or fp32 (fp16 VAEs overflow to NaN on SD1/SDXL). On CPU the UNet runs in fp32 with its
transformer blocks' matmuls (attention projections, feed-forward) in bf16 when the CPU has native bf16
instructions (avx512_bf16 / AMX): there the matmuls run ~2x faster while the convolutions and norms,
which lose in bf16 with torch 2.14, stay fp32, and the residual stream stays fp32 (docs/benchmarks.md:
a 512x512 SD1.5 step ~1.3x faster, pictures within bf16 rounding of fp32). `--precision fp32` turns the
bf16 part off; `--precision bf16` runs the whole UNet in bf16 (slower on CPU, half the memory).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class DevicePlan:
    """Where and in which dtype each component runs."""

    device: torch.device
    unet_dtype: torch.dtype
    text_dtype: torch.dtype
    vae_dtype: torch.dtype
    # The dtype the UNet's transformer blocks compute their matmuls in when it differs from unet_dtype
    # (CPU with native bf16); None: the same as unet_dtype.
    transformer_dtype: torch.dtype | None = None

    @property
    def description(self) -> str:
        short = lambda d: str(d).replace("torch.", "")  # noqa: E731
        mixed = f" (transformer blocks {short(self.transformer_dtype)})" if self.transformer_dtype else ""
        return (
            f"{self.device.type}: unet {short(self.unet_dtype)}{mixed}, text {short(self.text_dtype)}, "
            f"vae {short(self.vae_dtype)}"
        )


@functools.cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU computes bf16 dot products in hardware (x86 avx512_bf16 or AMX). oneDNN also runs
    bf16 on plain AVX-512 by emulation, which is slower than fp32, so the flags decide, not torch."""
    try:
        flags = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


_NAMED = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def plan_devices(
    *,
    use_cpu: bool = False,
    precision: str = "auto",
    no_half: bool = False,
    no_half_vae: bool = False,
) -> DevicePlan:
    """Choose device and dtypes. `precision` is one of PRECISIONS; `no_half*` force fp32 as in A1111."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cuda = torch.cuda.is_available() and not use_cpu
    device = torch.device("cuda") if cuda else torch.device("cpu")
    if precision != "auto":
        unet = _NAMED[precision]
    elif cuda:
        unet = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        unet = torch.float32
    if device.type == "cpu" and unet == torch.float16:
        unet = torch.bfloat16  # fp16 matmuls on CPU are slow and gain nothing
    if no_half:
        unet = torch.float32
    # Text encoding runs once per prompt: fp32 on CPU costs little and avoids bf16 rounding there.
    text = unet if cuda else torch.float32
    vae = torch.float32 if (no_half or no_half_vae or device.type == "cpu") else (
        torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    )
    mixed = (device.type == "cpu" and precision == "auto" and not no_half and unet == torch.float32
             and cpu_has_native_bf16())
    return DevicePlan(device=device, unet_dtype=unet, text_dtype=text, vae_dtype=vae,
                      transformer_dtype=torch.bfloat16 if mixed else None)
