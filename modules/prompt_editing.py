"""A1111's prompt-editing grammar: `[from:to:when]`, `[to:when]`, `[from::when]` and `[a|b|c]`.

A1111 parses this with a lark Earley grammar (modules/prompt_parser.py). We get the same trees with a
small hand-written parser, because the grammar is simple once it is read closely:

* inside brackets everything must be well formed: `(p)`, `(p:p)`, `[p]`, `[p:p:N]`, `[p:N]`,
  `[p|p|...]`, plain text (with `\\x` escapes) and whitespace. A bare `:` or `|`, or an unbalanced
  bracket, makes the enclosing construct fail;
* at the top level a bracket or `:` that does not start a well-formed construct is literal text;
* a `|` that is not inside an alternation, or a backslash at the very end / before a newline, makes
  the whole prompt unparseable, and A1111 then uses the prompt unchanged for every step.

Emphasis brackets are kept verbatim in the output text; `parse_prompt_attention` reads them later.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Union

# lark's common.SIGNED_NUMBER, then optional whitespace and the closing bracket of `[..:N]`.
_NUMBER_CLOSE = re.compile(
    r"\s*([+-]?(?:\d+[eE][+-]?\d+|(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+))\s*\]"
)
_PLAIN_STOP = frozenset("\\[]():|")


@dataclass
class Scheduled:
    """`[before:after:when]`; `before` is None for the `[after:when]` form."""

    before: list[Node] | None
    after: list[Node]
    number: str  # the NUMBER as written: "." in it decides fraction vs. step (A1111 1.6+)
    when: int = 0  # filled in per (steps, hires_steps) by `collect_steps`


@dataclass
class Alternate:
    """`[a|b|c]`: option (step - 1) % len(options) at each step; an empty option is ""."""

    options: list[list[Node]]


Node = Union[str, Scheduled, Alternate]


class _Fail(Exception):
    """The whole prompt does not parse; A1111 then schedules it as one unchanged text."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.n = len(text)
        # strict constructs parse the same way wherever they are reached from: memoize by position
        self._memo: dict[int, tuple[list[Node], int] | None] = {}

    # -- plain text ----------------------------------------------------------------------------
    def _plain(self, i: int) -> tuple[str, int] | None:
        """Longest run of plain characters / escapes from i, or None if there is none."""
        s, n, j = self.s, self.n, i
        while j < n:
            c = s[j]
            if c == "\\":
                if j + 1 < n and s[j + 1] != "\n":
                    j += 2
                    continue
                break
            if c in _PLAIN_STOP:
                break
            j += 1
        return (s[i:j], j) if j > i else None

    # -- strict parts (inside brackets) --------------------------------------------------------
    def _prompt(self, i: int) -> tuple[list[Node], int]:
        """A well-formed prompt from i; stops at the first character it cannot take."""
        out: list[Node] = []
        while i < self.n:
            c = self.s[i]
            if c in "[(":
                got = self._construct(i)
            else:
                got = self._plain(i)
                if got is not None:
                    out.append(got[0])
                    i = got[1]
                    continue
            if got is None:
                break
            out.extend(got[0])
            i = got[1]
        return out, i

    def _construct(self, i: int) -> tuple[list[Node], int] | None:
        if i not in self._memo:
            self._memo[i] = self._square(i) if self.s[i] == "[" else self._round(i)
        return self._memo[i]

    def _round(self, i: int) -> tuple[list[Node], int] | None:
        """`(p)` or `(p:p)`, kept verbatim (with its brackets) in the output."""
        p1, j = self._prompt(i + 1)
        if j < self.n and self.s[j] == ")":
            return ["(", *p1, ")"], j + 1
        if j < self.n and self.s[j] == ":":
            p2, k = self._prompt(j + 1)
            if k < self.n and self.s[k] == ")":
                return ["(", *p1, ":", *p2, ")"], k + 1
        return None

    def _square(self, i: int) -> tuple[list[Node], int] | None:
        """`[p]`, `[p|p..]`, `[p:N]` or `[p:p:N]`."""
        s, n = self.s, self.n
        p1, j = self._prompt(i + 1)
        if j >= n:
            return None
        c = s[j]
        if c == "]":
            return ["[", *p1, "]"], j + 1
        if c == "|":
            options = [p1]
            while j < n and s[j] == "|":
                p, j = self._prompt(j + 1)
                options.append(p)
            if j < n and s[j] == "]":
                return [Alternate(options)], j + 1
            return None
        if c == ":":
            m = _NUMBER_CLOSE.match(s, j + 1)
            if m:
                return [Scheduled(None, p1, m.group(1))], m.end()
            p2, k = self._prompt(j + 1)
            if k < n and s[k] == ":":
                m = _NUMBER_CLOSE.match(s, k + 1)
                if m:
                    return [Scheduled(p1, p2, m.group(1))], m.end()
        return None

    # -- top level -------------------------------------------------------------------------------
    def parse(self) -> list[Node]:
        """The whole prompt; brackets and `:` that start nothing well formed are literal text."""
        s, n, i = self.s, self.n, 0
        out: list[Node] = []
        while i < n:
            c = s[i]
            if c in "[(":
                got = self._construct(i)
                if got is not None:
                    out.extend(got[0])
                    i = got[1]
                    continue
                out.append(c)
                i += 1
            elif c in "]):":
                out.append(c)
                i += 1
            elif c == "|":
                raise _Fail
            else:
                plain = self._plain(i)
                if plain is None:  # a backslash at the end or before a newline
                    raise _Fail
                out.append(plain[0])
                i = plain[1]
        return out


def parse(text: str) -> list[Node] | None:
    """Parse a prompt into text pieces and editing nodes; None when A1111's grammar rejects it.

    Nesting deeper than Python's recursion limit (hundreds of brackets) also gives None, so such
    a prompt is used unchanged instead of crashing the job.
    """
    try:
        return _Parser(text).parse()
    except (_Fail, RecursionError):
        return None


def _walk(nodes: list[Node]):
    for node in nodes:
        if isinstance(node, Scheduled):
            yield node
            if node.before is not None:
                yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, Alternate):
            yield node
            for option in node.options:
                yield from _walk(option)


def _to_step(number: str, steps: int, int_offset: int, flt_offset: float, old: bool) -> int:
    v = float(number)
    if old:
        v = v * steps if v < 1 else v
    elif "." in number:
        v = (v - flt_offset) * steps
    else:
        v = v - int_offset
    if math.isinf(v):  # A1111 would crash on int(inf); clamp instead
        return steps if v > 0 else 0
    return min(steps, int(v))


def collect_steps(
    nodes: list[Node], steps: int, int_offset: int = 0, flt_offset: float = 0.0, old: bool = False
) -> list[int]:
    """The steps at which the text changes (always including `steps`); fills in each `when`."""
    found = {steps}
    for node in _walk(nodes):
        if isinstance(node, Scheduled):
            node.when = _to_step(node.number, steps, int_offset, flt_offset, old)
            if node.when >= 1:
                found.add(node.when)
        else:
            found.update(range(1, steps + 1))
    return sorted(found)


def text_at(nodes: list[Node], step: int) -> str:
    """The prompt text in effect at `step` (1-based, as A1111's schedules count)."""
    parts: list[str] = []

    def emit(seq: list[Node]) -> None:
        for node in seq:
            if isinstance(node, str):
                parts.append(node)
            elif isinstance(node, Scheduled):
                if step <= node.when:
                    if node.before is not None:
                        emit(node.before)
                else:
                    emit(node.after)
            else:
                emit(node.options[(step - 1) % len(node.options)])

    emit(nodes)
    return "".join(parts)


def schedule(
    prompt: str, base_steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> list[tuple[int, str]]:
    """[(end_at_step, text), ...] for one prompt, with A1111 1.6+ timing rules.

    Without `hires_steps` (or with old scheduling), `when` < 1 is a fraction of the steps and
    `when` >= 1 a step number. For the hires pass (`hires_steps` given) numbers written with a "."
    are fractions offset by 1.0 (so 1.5 is half-way through the hires pass) and integers count
    steps from the start of the first pass.
    """
    if hires_steps is None or use_old_scheduling:
        steps, int_offset, flt_offset = base_steps, 0, 0.0
    else:
        steps, int_offset, flt_offset = hires_steps, base_steps, 1.0
    nodes = parse(prompt)
    if nodes is None:
        return [(steps, prompt)]
    try:
        points = collect_steps(nodes, steps, int_offset, flt_offset, use_old_scheduling)
        return [(t, text_at(nodes, t)) for t in points]
    except RecursionError:  # a tree that only just parsed may still be too deep to walk
        return [(steps, prompt)]
