"""A1111's `modules.prompt_parser` names and return shapes, for extensions that import them.

Thin wrappers over `modules.prompts` (the grammar lives there and in `modules.prompt_editing`).
The model-facing functions of A1111 (get_learned_conditioning & co.) belong to the engine; what an
extension can call here is the pure text side.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Sequence

from modules import prompts
from modules.prompts import get_multicond_prompt_list, parse_prompt_attention, re_AND, re_attention, re_break, re_weight

__all__ = [
    "ScheduledPromptConditioning",
    "get_learned_conditioning_prompt_schedules",
    "get_multicond_prompt_list",
    "parse_prompt_attention",
    "re_AND",
    "re_attention",
    "re_break",
    "re_weight",
]

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


def get_learned_conditioning_prompt_schedules(
    prompts_: Sequence[str], base_steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> list[list[list]]:
    """[[ [end_at_step, text], ... ] per prompt], A1111's exact shape (lists, not tuples)."""
    schedules = prompts.schedules_for(prompts_, base_steps, hires_steps, use_old_scheduling=use_old_scheduling)
    return [[[step, text] for step, text in schedule] for schedule in schedules]
