"""Filling a network built on the `meta` device with a file's tensors, without initialising anything.

Shared by the UNet/VAE loader and the text-encoder loader: tensors already in the compute dtype stay
memory-mapped; others are converted in a few threads (memory-bound work that releases the GIL).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping

import torch
from torch import nn

from modules.weights_io import WeightFileError, materialize


def _finalize_buffers(module: nn.Module) -> None:
    """Non-persistent buffers (e.g. CLIP's position_ids) are not in files; rebuild those left on meta."""
    for name, buf in list(module.named_buffers()):
        if buf.device.type != "meta":
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        if leaf == "position_ids":
            owner._buffers[leaf] = torch.arange(buf.shape[-1], dtype=buf.dtype).expand(buf.shape).clone()
        else:
            owner._buffers[leaf] = torch.zeros(buf.shape, dtype=buf.dtype)


def assign_weights(
    module: nn.Module,
    source: Callable[[str], Any | None],
    dtype: torch.dtype,
    device: torch.device,
    *,
    overrides: Mapping[str, torch.dtype] | None = None,
) -> tuple[list[str], set[str]]:
    """Fill a meta-built module from `source(key) -> (file_key, value) | None`.

    Returns (missing module keys, file keys used). Floating tensors are converted to `dtype`, or to
    `overrides[key]` for the module keys it names (a mixed-precision plan), straight from the file."""
    overrides = overrides or {}
    missing: list[str] = []
    used: set[str] = set()
    jobs: list[tuple[str, str, Any, torch.Tensor]] = []
    for key, ref in module.state_dict(keep_vars=True).items():
        found = source(key)
        if found is None:
            missing.append(key)
            continue
        file_key, value = found
        jobs.append((key, file_key, value, ref))
        used.add(file_key)

    def load_one(job: tuple[str, str, Any, torch.Tensor]) -> torch.Tensor:
        key, file_key, value, ref = job
        tensor = materialize(value, overrides.get(key, dtype) if ref.dtype.is_floating_point else ref.dtype)
        if tuple(tensor.shape) != tuple(ref.shape):
            if tensor.numel() != ref.numel():
                raise WeightFileError(f"{file_key}: shape {list(tensor.shape)} does not fit {list(ref.shape)}")
            tensor = tensor.reshape(ref.shape)  # e.g. conv 1×1 stored as linear
        return tensor.to(device) if device.type not in ("cpu", "meta") else tensor

    # dtype conversion is memory-bound work that releases the GIL: a few threads load faster
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        tensors = list(pool.map(load_one, jobs))
    state = {job[0]: tensor for job, tensor in zip(jobs, tensors)}
    module.load_state_dict(state, strict=False, assign=True)
    _finalize_buffers(module)
    module.eval().requires_grad_(False)
    return missing, used
