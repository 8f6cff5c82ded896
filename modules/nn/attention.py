"""Attention helpers shared by the UNet and the VAE, all through PyTorch's fused SDPA kernel.

`torch.nn.functional.scaled_dot_product_attention` picks the best kernel for the device (flash /
memory-efficient on CUDA, a blocked flash kernel on CPU), so no xformers or hand-written softmax is
needed. The maths is the usual softmax(Q·Kᵀ/√d)·V of "Attention Is All You Need" (Vaswani et al. 2017).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention over token-major tensors.

    q: [B, Nq, H·D], k and v: [B, Nk, H·D] → [B, Nq, H·D]. Heads are split from the last dimension
    (the layout LDM's `to_q/to_k/to_v` projections produce); `mask` is passed to SDPA unchanged."""
    b, nq, inner = q.shape
    if inner % heads:
        raise ValueError(f"attention width {inner} is not divisible by {heads} heads")
    d = inner // heads
    q = q.view(b, nq, heads, d).transpose(1, 2)
    k = k.view(b, k.shape[1], heads, d).transpose(1, 2)
    v = v.view(b, v.shape[1], heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, nq, inner)


def spatial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Single-head attention between the pixels of feature maps [B, C, H, W] (the VAE's mid block):
    every pixel is a token, the channels are its features; returns [B, C, H, W]."""
    b, c, h, w = q.shape
    q, k, v = (t.reshape(b, 1, c, h * w).transpose(2, 3) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)  # [B, 1, HW, C]
    return out.transpose(2, 3).reshape(b, c, h, w)
