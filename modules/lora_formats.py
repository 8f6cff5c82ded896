"""LoRA-family file formats, one small adapter each: the tensors of one module → its weight delta.

A file's keys are `<module stem>.<part>`; `split_key` finds the part (normalising the dialects:
peft's `lora_A`/`lora_B`, diffusers' old `.lora.up` / `lora_linear_layer` / `processor.to_q_lora`),
`group_keys` collects the parts of every module and `make_adapter` picks the format from which parts
are present. Deltas are computed only when the patcher applies them (`delta(weight)`), on the
weight's device, in float32, and follow A1111's maths (extensions-builtin/Lora, after LyCORIS):

  LoRA / LoCon    scale · up @ down                       scale = alpha / rank (1 without alpha)
  LoCon + Tucker  scale · einsum(mid, up, down)           (`lora_mid`, 3×3 kernels)
  LoHa            scale · (w1a @ w1b) ⊙ (w2a @ w2b)       Tucker form with `hada_t1/t2`; rank of w1b
  LoKr            scale · kron(w1, w2)                    w1, w2 whole or as `_a @ _b`, `lokr_t2`
  IA3             W ⊙ w                                   w per output row (or per input column)
  full / diff     diff (+ diff_b on the bias)
  norm            w_norm (+ b_norm on the bias)
  DoRA            m · (W + Δ) / ‖W + Δ‖ − W               `dora_scale`; norm per input column
                                                           (kohya, A1111) or per output row (LyCORIS
                                                           `wd_on_out`, peft `lora_magnitude_vector`)

The strength (`<lora:name:te:unet>`) multiplies the finished delta, outside these functions.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import torch

from modules.weights_io import materialize

# Part names as stored → canonical part name.
_PART_ALIASES = {
    "lora_up.weight": "lora_up", "lora_down.weight": "lora_down", "lora_mid.weight": "lora_mid",
    "lora_B.weight": "lora_up", "lora_A.weight": "lora_down",
    "lora.up.weight": "lora_up", "lora.down.weight": "lora_down",
    "lora_linear_layer.up.weight": "lora_up", "lora_linear_layer.down.weight": "lora_down",
    "lora_magnitude_vector": "dora_scale", "lora_magnitude_vector.weight": "dora_scale",
}
_PLAIN_PARTS = (
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "diff", "diff_b", "w_norm", "b_norm", "dora_scale", "on_input", "weight", "bias", "alpha", "scale",
)
_SUFFIXES = sorted([*_PART_ALIASES, *_PLAIN_PARTS], key=len, reverse=True)
# diffusers' attention-processor LoRA: `attn1.processor.to_q_lora.up.weight`
_PROCESSOR = re.compile(r"(?:\.processor)?\.(to_q|to_k|to_v|to_out)_lora\.(up|down)\.weight$")
_TE_PROJ = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}

Value = Any  # a torch.Tensor or a weights_io.LazyTensor (both have .shape)
Delta = Callable[[torch.Tensor], torch.Tensor]


def split_key(key: str) -> tuple[str, str] | None:
    """`lora_unet_x.lora_up.weight` → ("lora_unet_x", "lora_up"); None when no known part ends it."""
    m = _PROCESSOR.search(key)
    if m:
        stem, name = key[: m.start()], m.group(1)
        name = _TE_PROJ[name] if stem.startswith("text_encoder") else ("to_out.0" if name == "to_out" else name)
        return f"{stem}.{name}", "lora_" + m.group(2)
    for suffix in _SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], _PART_ALIASES.get(suffix, suffix)
    return None


def group_keys(keys: Any) -> tuple[dict[str, dict[str, str]], list[str]]:
    """{stem: {part: file key}} and the keys no part name fits."""
    groups: dict[str, dict[str, str]] = {}
    unknown: list[str] = []
    for key in keys:
        split = split_key(key)
        if split is None:
            unknown.append(key)
            continue
        stem, part = split
        groups.setdefault(stem, {})[part] = key
    return groups, unknown


def _shape(value: Value) -> tuple[int, ...]:
    return tuple(int(d) for d in value.shape)


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _load(value: Value, like: torch.Tensor) -> torch.Tensor:
    return materialize(value).to(device=like.device, dtype=torch.float32)


def _scalar(value: Value | None) -> float | None:
    return None if value is None else float(materialize(value).float().reshape(-1)[0])


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """LyCORIS' CP/Tucker rebuild: core t [r, r, k, k], wa [r, out], wb [r, in] → [out, in, k, k]."""
    return torch.einsum("i j k l, j r, i p -> p r k l", t, _flat(wb), _flat(wa))


@dataclass(frozen=True)
class Adapter:
    """One module's patch: the weight delta (without strength) and, optionally, a bias delta.

    `fits(weight_shape)` says from the factors' shapes alone whether the delta fits the weight, so a
    file for another model shape is refused before anything is computed."""

    kind: str
    weight: Delta | None
    bias: Delta | None
    fits: Callable[[tuple[int, ...]], bool]
    used: frozenset[str]  # part names consumed


def _sized(numel: int | None, out: int | None = None) -> Callable[[tuple[int, ...]], bool]:
    """A delta of `numel` elements whose first dimension is `out` (None: not checked)."""
    def fits(shape: tuple[int, ...]) -> bool:
        return (numel is None or numel == _numel(shape)) and (out is None or (len(shape) > 0 and out == shape[0]))
    return fits


def _lora(p: Mapping[str, Value], dyn: int | None) -> Adapter:
    up, down, mid = p["lora_up"], p["lora_down"], p.get("lora_mid")
    rank = _shape(down)[0]

    def delta(w: torch.Tensor) -> torch.Tensor:
        u, d = _flat(_load(up, w)), _flat(_load(down, w))
        if mid is not None:
            return torch.einsum("n m k l, i n, m j -> i j k l", _load(mid, w), u, d)
        if dyn is not None and 0 < dyn < rank:  # A1111's dynamic rank: the first `dyn` components
            u, d = u[:, :dyn], d[:dyn]
        return u @ d

    out = _shape(up)[0]
    if mid is not None:
        numel = out * _shape(down)[1] * _numel(_shape(mid)[2:])
    else:
        numel = out * _numel(_shape(down)[1:])
    return Adapter("lora", delta, None, _sized(numel, out), frozenset({"lora_up", "lora_down", "lora_mid"} & set(p)))


def _loha(p: Mapping[str, Value]) -> Adapter:
    def half(w: torch.Tensor, a: str, b: str, t: str) -> torch.Tensor:
        if t in p:
            return tucker(_load(p[t], w), _load(p[a], w), _load(p[b], w))
        return _flat(_load(p[a], w)) @ _flat(_load(p[b], w))

    def delta(w: torch.Tensor) -> torch.Tensor:
        one = half(w, "hada_w1_a", "hada_w1_b", "hada_t1")
        two = half(w, "hada_w2_a", "hada_w2_b", "hada_t2")
        return one.reshape(w.shape) * two.reshape(w.shape)

    if "hada_t1" in p:
        out = _shape(p["hada_w1_a"])[1]
        numel = out * _shape(p["hada_w1_b"])[1] * _numel(_shape(p["hada_t1"])[2:])
    else:
        out = _shape(p["hada_w1_a"])[0]
        numel = out * _numel(_shape(p["hada_w1_b"])[1:])
    used = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"} & set(p)
    return Adapter("loha", delta, None, _sized(numel, out), frozenset(used))


def _lokr(p: Mapping[str, Value]) -> Adapter:
    def w1(w: torch.Tensor) -> torch.Tensor:
        return _load(p["lokr_w1"], w) if "lokr_w1" in p else _flat(_load(p["lokr_w1_a"], w)) @ _flat(_load(p["lokr_w1_b"], w))

    def w2(w: torch.Tensor) -> torch.Tensor:
        if "lokr_w2" in p:
            return _load(p["lokr_w2"], w)
        if "lokr_t2" in p:
            return tucker(_load(p["lokr_t2"], w), _load(p["lokr_w2_a"], w), _load(p["lokr_w2_b"], w))
        return _flat(_load(p["lokr_w2_a"], w)) @ _flat(_load(p["lokr_w2_b"], w))

    def delta(w: torch.Tensor) -> torch.Tensor:
        a, b = w1(w), w2(w)
        if b.dim() == 4:
            a = a.reshape(*a.shape, 1, 1)
        return torch.kron(a, b.contiguous()).reshape(w.shape)

    s1 = _shape(p["lokr_w1"]) if "lokr_w1" in p else (_shape(p["lokr_w1_a"])[0], _numel(_shape(p["lokr_w1_b"])[1:]))
    if "lokr_w2" in p:
        s2 = _shape(p["lokr_w2"])
    elif "lokr_t2" in p:
        s2 = (_shape(p["lokr_w2_a"])[1], _shape(p["lokr_w2_b"])[1], *_shape(p["lokr_t2"])[2:])
    else:
        s2 = (_shape(p["lokr_w2_a"])[0], _numel(_shape(p["lokr_w2_b"])[1:]))
    used = {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"} & set(p)
    return Adapter("lokr", delta, None, _sized(_numel(s1) * _numel(s2), s1[0] * s2[0]), frozenset(used))


def _ia3(p: Mapping[str, Value]) -> Adapter:
    on_input = bool(materialize(p["on_input"]).reshape(-1)[0].item())
    vector = p["weight"]

    def delta(w: torch.Tensor) -> torch.Tensor:
        v = _load(vector, w).reshape(-1)
        if on_input:
            return w * v.reshape(1, -1, *[1] * (w.dim() - 2))
        return w * v.reshape(-1, *[1] * (w.dim() - 1))

    n = _numel(_shape(vector))

    def fits(shape: tuple[int, ...]) -> bool:
        return len(shape) >= 2 and shape[1 if on_input else 0] == n

    return Adapter("ia3", delta, None, fits, frozenset({"weight", "on_input"}))


def _tensor_delta(value: Value) -> Delta:
    return lambda w: _load(value, w).reshape(w.shape)


def _full(p: Mapping[str, Value], weight_part: str, bias_part: str, kind: str) -> Adapter:
    weight = _tensor_delta(p[weight_part]) if weight_part in p else None
    bias = _tensor_delta(p[bias_part]) if bias_part in p else None
    numel = _numel(_shape(p[weight_part])) if weight_part in p else None
    return Adapter(kind, weight, bias, _sized(numel), frozenset({weight_part, bias_part} & set(p)))


def scaled(adapter: Adapter, factor: float) -> Adapter:
    """The adapter's weight delta times `factor` (alpha / rank, or the file's `scale`)."""
    inner = adapter.weight
    if inner is None or factor == 1.0:
        return adapter
    return replace(adapter, weight=lambda w: factor * inner(w))


def with_dora(adapter: Adapter, magnitude: Value) -> Adapter:
    """Weight-decomposed LoRA (Liu et al. 2024, arXiv:2402.09353): the direction of W + Δ with the
    trained magnitude; the axis follows the magnitude's shape. As A1111's `apply_weight_decompose`,
    Δ here is the raw product (before alpha / rank), and the result is scaled afterwards."""
    inner = adapter.weight
    m_shape = _shape(magnitude)

    def delta(w: torch.Tensor) -> torch.Tensor:
        merged = w + inner(w).reshape(w.shape)
        m = _load(magnitude, w)
        tail = [1] * (w.dim() - 1)
        if len(m_shape) >= 2 and m_shape[0] == 1 and m_shape[1] == w.shape[1] and w.shape[0] != 1:
            norm = merged.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1).reshape(1, w.shape[1], *tail[1:])
        else:
            norm = merged.reshape(w.shape[0], -1).norm(dim=1).reshape(w.shape[0], *tail)
        return merged * (m.reshape(norm.shape) / norm) - w

    def fits(shape: tuple[int, ...]) -> bool:
        n = _numel(m_shape)
        return adapter.fits(shape) and len(shape) >= 2 and n in (shape[0], shape[1])

    return Adapter(adapter.kind + "+dora", delta, adapter.bias, fits, adapter.used | {"dora_scale"})


def make_adapter(parts: Mapping[str, Value], *, dyn: int | None = None) -> Adapter | None:
    """The adapter for one module's parts, or None when the parts form no known format."""
    names = set(parts)
    scale = _scalar(parts.get("scale"))
    alpha = _scalar(parts.get("alpha"))

    def alpha_over(rank: int | None) -> float | None:
        if scale is not None:
            return scale
        return alpha / rank if (alpha is not None and rank) else None

    adapter: Adapter | None = None
    factor: float | None = None  # alpha / rank (or `scale`), applied after DoRA as A1111 does
    if {"lora_up", "lora_down"} <= names:
        adapter = _lora(parts, dyn)
        factor = alpha_over(_shape(parts["lora_down"])[0])
    elif {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= names:
        adapter = _loha(parts)
        factor = alpha_over(_shape(parts["hada_w1_b"])[0])
    elif ("lokr_w1" in names or {"lokr_w1_a", "lokr_w1_b"} <= names) and (
            "lokr_w2" in names or {"lokr_w2_a", "lokr_w2_b"} <= names):
        rank = None
        if "lokr_w1_b" in names:
            rank = _shape(parts["lokr_w1_b"])[0]
        if "lokr_w2_b" in names:
            rank = _shape(parts["lokr_w2_b"])[0]
        adapter = _lokr(parts)
        factor = alpha_over(rank)
    elif {"weight", "on_input"} <= names:
        adapter = _ia3(parts)
    elif "diff" in names or "diff_b" in names:
        adapter = _full(parts, "diff", "diff_b", "full")
    elif "w_norm" in names or "b_norm" in names:
        adapter = _full(parts, "w_norm", "b_norm", "norm")
    if adapter is None:
        return None
    if "dora_scale" in names and adapter.weight is not None:
        adapter = with_dora(adapter, parts["dora_scale"])
    if factor is not None:
        adapter = scaled(adapter, factor)
    return replace(adapter, used=adapter.used | ({"alpha", "scale"} & names))
