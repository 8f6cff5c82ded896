"""Tiny random-weight upscaler state dicts in the real key layouts, for the upscaler tests and the bench.

ESRGAN (RRDBNet) in both layouts people have on disk: the original `model.0.weight` / `model.1.sub.N.RDBk`
Sequential layout (ESRGAN, 4x-UltraSharp and most community models) and BasicSR's `conv_first` /
`body.N.rdbk.convj` layout (Real-ESRGAN x4plus / x2plus); Real-ESRGAN's compact SRVGGNet (`body.N`,
PReLU weights between the convs). These are written from the layouts, not from spandrel's classes.
SwinIR and HAT have hundreds of structured keys (relative-position tables, attention masks), so those
come from spandrel's own classes with small configs; what is tested for them is Palette's handling.
"""
from __future__ import annotations

import math

import torch


def _conv(sd: dict, name: str, cin: int, cout: int, gen: torch.Generator, k: int = 3, gain: float = 1.0) -> None:
    std = gain / math.sqrt(cin * k * k)
    sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * std
    sd[f"{name}.bias"] = torch.randn(cout, generator=gen) * 0.01


def _rdb_convs(nf: int, gc: int) -> list[tuple[int, int]]:
    """(in, out) channels of the five convs of a residual dense block."""
    return [(nf + i * gc, gc if i < 4 else nf) for i in range(5)]


def esrgan_old(*, nf: int = 8, nb: int = 1, gc: int = 32, scale: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Original ESRGAN layout: model.0 conv, model.1.sub (RRDBs + trunk conv), (upsample, conv, lrelu)×log2(s),
    HR conv, lrelu, last conv."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    _conv(sd, "model.0", 3, nf, gen)
    for b in range(nb):
        for r in (1, 2, 3):
            for c, (cin, cout) in enumerate(_rdb_convs(nf, gc), start=1):
                _conv(sd, f"model.1.sub.{b}.RDB{r}.conv{c}.0", cin, cout, gen)
    _conv(sd, f"model.1.sub.{nb}", nf, nf, gen)
    index = 3
    for _ in range(int(math.log2(scale))):
        _conv(sd, f"model.{index}", nf, nf, gen)
        index += 3
    _conv(sd, f"model.{index - 1}", nf, nf, gen)
    _conv(sd, f"model.{index + 1}", nf, 3, gen)
    return sd


def esrgan_new(*, nf: int = 8, nb: int = 1, gc: int = 32, unshuffle: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """BasicSR RRDBNet (Real-ESRGAN): always two ×2 up-convs; x2plus/x1 models pixel-unshuffle the input
    first (`conv_first` takes 3·unshuffle² channels), giving scale 4/unshuffle."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    _conv(sd, "conv_first", 3 * unshuffle * unshuffle, nf, gen)
    for b in range(nb):
        for r in (1, 2, 3):
            for c, (cin, cout) in enumerate(_rdb_convs(nf, gc), start=1):
                _conv(sd, f"body.{b}.rdb{r}.conv{c}", cin, cout, gen)
    _conv(sd, "conv_body", nf, nf, gen)
    _conv(sd, "conv_up1", nf, nf, gen)
    _conv(sd, "conv_up2", nf, nf, gen)
    _conv(sd, "conv_hr", nf, nf, gen)
    _conv(sd, "conv_last", nf, 3, gen)
    return sd


def compact(*, nf: int = 8, num_conv: int = 2, scale: int = 4, seed: int = 0, gain: float = 1.0) -> dict[str, torch.Tensor]:
    """SRVGGNetCompact: body.0 conv, body.1 PReLU, (conv, PReLU)×num_conv, last conv to 3·s² channels
    (pixel shuffle), plus the nearest-upsampled input added by the network."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    _conv(sd, "body.0", 3, nf, gen, gain=gain)
    sd["body.1.weight"] = torch.full((nf,), 0.25)
    for i in range(num_conv):
        _conv(sd, f"body.{2 * i + 2}", nf, nf, gen, gain=gain)
        sd[f"body.{2 * i + 3}.weight"] = torch.full((nf,), 0.25)
    _conv(sd, f"body.{2 * num_conv + 2}", nf, 3 * scale * scale, gen, gain=gain)
    return sd


def swinir(*, scale: int = 2, window: int = 4, seed: int = 0, upsampler: str = "pixelshuffle") -> dict[str, torch.Tensor]:
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(seed)
    model = SwinIR(img_size=16, embed_dim=12, depths=[2], num_heads=[2], window_size=window, upscale=scale,
                   upsampler=upsampler, mlp_ratio=2.0)
    return {k: v.clone() for k, v in model.state_dict().items()}


def hat(*, scale: int = 2, window: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    from spandrel.architectures.HAT import HAT

    torch.manual_seed(seed)
    model = HAT(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=window, upscale=scale,
                compress_ratio=3, squeeze_factor=4, mlp_ratio=2.0, num_feat=16)
    return {k: v.clone() for k, v in model.state_dict().items()}
