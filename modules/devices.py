"""Device and dtype choice, made at run time from what the machine has and what the user asked for.

CUDA when present, else CPU. On CUDA the UNet and text encoders run in fp16 (bf16 where supported),
the VAE in bf16 or fp32 (fp16 VAEs overflow to NaN on SD1/SDXL). On CPU everything runs in fp32 by
default: measured on an avx512_bf16 CPU (docs/benchmarks.md), a whole SD1.5 UNet step in bf16 took
~1.7× longer than fp32 with torch 2.14 (convolutions and norms lose more than the matmuls gain), so
bf16 on CPU is opt-in (`--precision bf16`, which also halves memory).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class DevicePlan:
    """Where and in which dtype each component runs."""

    device: torch.device
    unet_dtype: torch.dtype
    text_dtype: torch.dtype
    vae_dtype: torch.dtype

    @property
    def description(self) -> str:
        short = lambda d: str(d).replace("torch.", "")  # noqa: E731
        return (
            f"{self.device.type}: unet {short(self.unet_dtype)}, text {short(self.text_dtype)}, "
            f"vae {short(self.vae_dtype)}"
        )


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
    return DevicePlan(device=device, unet_dtype=unet, text_dtype=text, vae_dtype=vae)
