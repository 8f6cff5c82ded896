"""A1111's prompt language, as data the engine can use.

One prompt goes through the same stages as in A1111, in the same order:

1. extra-network tags `<kind:arg:arg...>` are removed (`parse_extra_networks`); `<lora:...>` and
   `<lyco:...>` become `LoraRef`s (`loras_from`);
2. `AND` splits the prompt into weighted sub-prompts for composable diffusion (`split_and`);
3. prompt editing / alternation turns each sub-prompt into a schedule of texts
   (`schedules_for`, grammar in `modules.prompt_editing`);
4. each text is read for attention weights `(x)`, `(x:1.3)`, `[x]` and `BREAK`
   (`parse_prompt_attention`), which `text_encoding` turns into weighted tokens.

`plan_conditioning` runs 2-3 for a batch and lists each distinct text once, so the engine encodes
every text segment exactly once and only picks indices per step.
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from modules import prompt_editing
from modules.types import LoraRef

PromptSchedule = list[tuple[int, str]]  # [(end_at_step, text), ...], last end_at_step == steps

# --- attention ---------------------------------------------------------------------------------

# Token alternatives, tried in this order (A1111's parse_prompt_attention tokenizer).
re_attention = re.compile(
    r"""
    \\[()\[\]\\]              # \( \) \[ \] \\ : the character itself
    | \\                      # any other backslash: dropped
    | \( | \[                 # open a bracket
    | :\s*([+-]?[.\d]+)\s*\)  # ":1.3)" closes a round bracket with an explicit weight
    | \) | \]                 # close a bracket
    | [^\\()\[\]:]+           # text
    | :                       # a colon that is not a weight
    """,
    re.X,
)
re_break = re.compile(r"\s*\bBREAK\b\s*", re.S)

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1


def parse_prompt_attention(text: str) -> list[list]:
    """Split text into [[chunk, weight], ...] exactly as A1111 does (float for float).

    `(x)` ×1.1, `[x]` ÷1.1, `(x:w)` ×w, escapes `\\( \\) \\[ \\] \\\\`; a closing bracket with no
    opener is literal text, an opener that is never closed applies to the rest of the prompt;
    `BREAK` becomes ["BREAK", -1] (and is multiplied like any chunk when inside brackets, as in
    A1111); adjacent chunks of identical weight are merged. An empty prompt gives [["", 1.0]].
    """
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in re_attention.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            try:
                value = float(weight)
            except ValueError:
                raise ValueError(f"prompt attention {token!r}: {weight!r} is not a number; "
                                 f"write it like (word:1.2)") from None
            multiply_from(round_open.pop(), value)
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(re_break.split(token)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])

    for start in round_open:
        multiply_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply_from(start, SQUARE_MULTIPLIER)

    if not res:
        res = [["", 1.0]]

    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


def parse_attention(text: str) -> list[tuple[str, float]]:
    """`parse_prompt_attention` as (text, weight) tuples, the shape `text_encoding` takes."""
    return [(chunk, weight) for chunk, weight in parse_prompt_attention(text)]


# --- AND (composable diffusion) --------------------------------------------------------------

re_AND = re.compile(r"\bAND\b")
# "text : 1.5" at the very end of a sub-prompt is its weight; trailing whitespace is dropped.
re_weight = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Sub-prompts of `a AND b:0.5` with their weights (default 1.0), as A1111 reads them.

    Note A1111's quirk, kept on purpose: a prompt that simply ends in `:number` (e.g. `ratio 16:9`)
    also loses that suffix to a weight.
    """
    out: list[tuple[str, float]] = []
    for sub in re_AND.split(prompt):
        m = re_weight.search(sub)
        if m is None:  # pragma: no cover - the pattern matches any string
            out.append((sub, 1.0))
            continue
        text, weight = m.groups()
        out.append((text, float(weight) if weight is not None else 1.0))
    return out


def get_multicond_prompt_list(prompts: Sequence[str]):
    """A1111's shape: (res_indexes, prompt_flat_list, prompt_indexes).

    res_indexes[i] is [(index into prompt_flat_list, weight), ...] for prompts[i]; identical
    sub-prompt texts share one index.
    """
    res_indexes: list[list[tuple[int, float]]] = []
    flat: list[str] = []
    index_of: dict[str, int] = {}
    for prompt in prompts:
        indexes = []
        for text, weight in split_and(prompt):
            if text not in index_of:
                index_of[text] = len(flat)
                flat.append(text)
            indexes.append((index_of[text], weight))
        res_indexes.append(indexes)
    return res_indexes, flat, index_of


# --- scheduling --------------------------------------------------------------------------------


def schedules_for(
    prompts: Iterable[str],
    steps: int,
    hires_steps: int | None = None,
    *,
    use_old_scheduling: bool = False,
) -> list[PromptSchedule]:
    """One schedule per prompt: [(end_at_step, text), ...] (A1111 1.6+ rules by default).

    `steps` is the first pass's step count. For the hires pass give `hires_steps` too: then
    `[a:b:1.5]` switches half-way through the hires pass and `[a:b:25]` at overall step 25
    (step 5 of the hires pass when steps == 20). `use_old_scheduling` restores pre-1.6 behaviour.
    """
    cache: dict[str, PromptSchedule] = {}
    out = []
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = prompt_editing.schedule(prompt, steps, hires_steps, use_old_scheduling)
        out.append(list(cache[prompt]))
    return out


def index_at_step(schedule: Sequence[tuple[int, object]], step: int) -> int:
    """Which schedule entry is active at sampler step `step` (0-based, A1111's counter).

    A1111 takes the first entry whose end_at_step >= step, so `[a:b:3]` shows `a` for sampler
    steps 0..3 and `b` from step 4: kept for reproducibility.
    """
    for i, (end_at_step, _) in enumerate(schedule):
        if step <= end_at_step:
            return i
    return 0


def text_at_step(schedule: PromptSchedule, step: int) -> str:
    """The text active at sampler step `step` (0-based); see `index_at_step`."""
    return schedule[index_at_step(schedule, step)][1]


@dataclass(frozen=True)
class SubPrompt:
    """One `AND` part of a prompt: its weight and its schedule as indices into the plan's texts."""

    weight: float
    schedule: tuple[tuple[int, int], ...]  # (end_at_step, index into ConditioningPlan.texts)

    def index_at(self, step: int) -> int:
        return self.schedule[index_at_step(self.schedule, step)][1]


@dataclass(frozen=True)
class ConditioningPlan:
    """A batch's prompts as distinct texts plus who uses which text when.

    Encode each of `texts` once; at every sampler step `at_step(step)` says, per prompt of the
    batch, which texts (indices) to use with which composable-diffusion weights.
    """

    texts: tuple[str, ...]
    batch: tuple[tuple[SubPrompt, ...], ...]
    steps: int

    def at_step(self, step: int) -> list[list[tuple[int, float]]]:
        return [[(sub.index_at(step), sub.weight) for sub in subs] for subs in self.batch]

    def change_steps(self) -> tuple[int, ...]:
        """Every end_at_step in the plan: the conditioning can only change right after these."""
        return tuple(sorted({end for subs in self.batch for sub in subs for end, _ in sub.schedule}))


def plan_conditioning(
    prompts: Sequence[str],
    steps: int,
    hires_steps: int | None = None,
    *,
    use_old_scheduling: bool = False,
    multicond: bool = True,
) -> ConditioningPlan:
    """Plan a batch's conditioning (A1111's get_multicond_learned_conditioning, minus the model).

    Positive prompts use `multicond=True` (split on AND); negative prompts `multicond=False`, as
    A1111 never splits the negative prompt. Prompts must already be free of extra-network tags.
    For second-order samplers A1111 passes steps × 2 here (the denoiser is called twice a step).
    """
    if multicond:
        res_indexes, flat, _ = get_multicond_prompt_list(prompts)
    else:
        flat = list(dict.fromkeys(prompts))
        res_indexes = [[(flat.index(p), 1.0)] for p in prompts]
    schedules = schedules_for(flat, steps, hires_steps, use_old_scheduling=use_old_scheduling)

    texts: list[str] = []
    text_index: dict[str, int] = {}

    def index_of(text: str) -> int:
        if text not in text_index:
            text_index[text] = len(texts)
            texts.append(text)
        return text_index[text]

    per_flat = [tuple((end, index_of(text)) for end, text in sched) for sched in schedules]
    batch = tuple(tuple(SubPrompt(weight, per_flat[i]) for i, weight in indexes) for indexes in res_indexes)
    total = hires_steps if hires_steps is not None and not use_old_scheduling else steps
    return ConditioningPlan(tuple(texts), batch, total)


# --- extra networks ----------------------------------------------------------------------------

re_extra_net = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class ExtraNetworkParams:
    """The `:`-separated arguments of one `<kind:...>` tag; `k=v` items are named, others positional."""

    items: tuple[str, ...]

    @property
    def positional(self) -> list[str]:
        return [item for item in self.items if len(item.split("=", 2)) != 2]

    @property
    def named(self) -> dict[str, str]:
        out = {}
        for item in self.items:
            parts = item.split("=", 2)
            if len(parts) == 2:
                out[parts[0]] = parts[1]
        return out


def parse_extra_networks(prompt: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    """Remove every `<kind:args>` tag; return the text left and {kind: [params, ...]} in order."""
    found: dict[str, list[ExtraNetworkParams]] = defaultdict(list)

    def take(m: re.Match) -> str:
        found[m.group(1)].append(ExtraNetworkParams(tuple(m.group(2).split(":"))))
        return ""

    return re_extra_net.sub(take, prompt), dict(found)


def parse_extra_networks_batch(prompts: Sequence[str]) -> tuple[list[str], dict[str, list[ExtraNetworkParams]]]:
    """A1111's parse_prompts: every prompt loses its tags; the networks are the first prompt's."""
    texts: list[str] = []
    networks: dict[str, list[ExtraNetworkParams]] | None = None
    for prompt in prompts:
        text, found = parse_extra_networks(prompt)
        texts.append(text)
        if networks is None:
            networks = found
    return texts, networks or {}


LORA_KINDS = ("lora", "lyco")


def _number(kind: type, value: str, what: str, tag: str):
    try:
        result = kind(value)
    except ValueError:
        raise ValueError(f"{tag}: {what} {value!r} is not a number") from None
    if isinstance(result, float) and not math.isfinite(result):
        raise ValueError(f"{tag}: {what} {value!r} must be finite")
    return result


def lora_ref(params: ExtraNetworkParams, kind: str = "lora") -> LoraRef:
    """`<lora:name[:te[:unet[:dyn]]]>` or named `te=`, `unet=`, `dyn=` → LoraRef (A1111 rules).

    te defaults to 1.0; unet defaults to te (so `<lora:x:0.5>` is 0.5 for both); named values win
    over positional ones.
    """
    tag = f"<{kind}:{':'.join(params.items)}>"
    pos, named = params.positional, params.named
    if not pos or not pos[0].strip():
        raise ValueError(f"{tag}: the LoRA name is missing; write <{kind}:name:weight>")
    te = _number(float, pos[1], "text-encoder weight", tag) if len(pos) > 1 else 1.0
    te = _number(float, named["te"], "te", tag) if "te" in named else te
    unet = _number(float, pos[2], "UNet weight", tag) if len(pos) > 2 else te
    unet = _number(float, named["unet"], "unet", tag) if "unet" in named else unet
    dyn = _number(int, pos[3], "dyn", tag) if len(pos) > 3 else None
    dyn = _number(int, named["dyn"], "dyn", tag) if "dyn" in named else dyn
    return LoraRef(name=pos[0], te_weight=te, unet_weight=unet, dyn=dyn)


def loras_from(networks: Mapping[str, Sequence[ExtraNetworkParams]]) -> list[LoraRef]:
    """The LoraRefs among parsed extra networks (`lora` and its alias `lyco`), in prompt order."""
    return [lora_ref(p, kind) for kind, found in networks.items() if kind in LORA_KINDS for p in found]


@dataclass(frozen=True)
class ParsedPrompt:
    """One prompt after tag removal and AND splitting; what the UI, API and engine need to know."""

    prompt: str  # as the user wrote it
    text: str  # extra-network tags removed
    networks: Mapping[str, tuple[ExtraNetworkParams, ...]]
    loras: tuple[LoraRef, ...]
    subprompts: tuple[tuple[str, float], ...]  # AND parts with weights


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Tags, LoRAs and AND parts of one prompt (scheduling is per step count: `schedules_for`)."""
    text, networks = parse_extra_networks(prompt)
    return ParsedPrompt(
        prompt=prompt,
        text=text,
        networks={k: tuple(v) for k, v in networks.items()},
        loras=tuple(loras_from(networks)),
        subprompts=tuple(split_and(text)),
    )
