"""Prompts of a batch → encoded conditioning that can change per sampler step.

Each distinct text of the batch (after prompt editing, alternation and AND splitting) is encoded
once; at every denoiser call `at_step` picks the texts active at that step. This is A1111's
`get_multicond_learned_conditioning` / `reconstruct_cond_batch`, with the model part separated out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from modules.prompts import ConditioningPlan, parse_attention, plan_conditioning
from modules.text_encoding import AdmParams, EmbeddingLookup, TextEncoderStack
from modules.types import Conditioning


@dataclass(frozen=True)
class EncodeOptions:
    clip_skip: int = 1
    emphasis: str = "Original"
    comma_padding_backtrack: int = 20
    embeddings: EmbeddingLookup | None = None
    adm: AdmParams | None = None


@dataclass(frozen=True)
class EncodedPlan:
    """A ConditioningPlan plus one Conditioning per distinct text."""

    plan: ConditioningPlan
    conds: tuple[Conditioning, ...]

    def at_step(self, step: int) -> list[list[tuple[Conditioning, float]]]:
        """Per batch item: the (conditioning, AND-weight) pairs active at denoiser call `step`."""
        return [[(self.conds[i], w) for i, w in item] for item in self.plan.at_step(step)]

    @property
    def token_counts(self) -> tuple[int, ...]:
        return tuple(int(c.extras.get("token_count", 0)) for c in self.conds)


def encode_text(stack: TextEncoderStack, text: str, options: EncodeOptions, *, zero: bool = False) -> Conditioning:
    """One text (already free of tags, editing and AND) → Conditioning, with A1111's emphasis modes."""
    parsed = [(text, 1.0)] if options.emphasis == "None" else parse_attention(text)
    return stack.encode(
        parsed,
        clip_skip=options.clip_skip,
        emphasis=options.emphasis,
        embeddings=options.embeddings,
        comma_padding_backtrack=options.comma_padding_backtrack,
        adm=options.adm,
        force_zero=zero,
    )


def encode_prompts(
    stack: TextEncoderStack,
    prompts: Sequence[str],
    steps: int,
    options: EncodeOptions,
    *,
    negative: bool = False,
    hires_steps: int | None = None,
) -> EncodedPlan:
    """Plan and encode a batch's positive (AND-split) or negative prompts for `steps` denoiser calls.

    A1111 zeroes an empty SDXL negative prompt instead of encoding "" (sd_models_xl), kept here."""
    plan = plan_conditioning(prompts, steps, hires_steps, multicond=not negative)
    zero_empty = negative and stack.adm is not None
    conds = tuple(encode_text(stack, t, options, zero=zero_empty and t == "") for t in plan.texts)
    return EncodedPlan(plan, conds)


def stack_cross_attn(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Batch [1, T_i, C] tensors of different token counts by repeating each one's last vector (A1111)."""
    longest = max(t.shape[1] for t in tensors)
    padded = [
        t if t.shape[1] == longest else torch.cat([t, t[:, -1:].expand(-1, longest - t.shape[1], -1)], dim=1)
        for t in tensors
    ]
    return torch.cat(padded, dim=0)
