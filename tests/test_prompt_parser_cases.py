"""The prompt grammar as a table: input → expected output, derived from A1111's rules and doctests.

Weights are exact floats, built with the same multiplications A1111 performs (inner bracket first):
R = ×1.1 for `(x)`, S = ×(1/1.1) for `[x]`. Schedules are [(end_at_step, text), ...].
A1111's own doctests (modules/prompt_parser.py) are re-typed here as data and marked "doctest".
"""
from __future__ import annotations

import pytest

from modules import prompt_parser, prompts
from modules.types import LoraRef

R = 1.1
S = 1 / 1.1

# (prompt, [(text, weight), ...])
ATTENTION = [
    ("normal text", [("normal text", 1.0)]),  # doctest
    ("an (important) word", [("an ", 1.0), ("important", R), (" word", 1.0)]),  # doctest
    ("(unbalanced", [("unbalanced", R)]),  # doctest
    (r"\(literal\]", [("(literal]", 1.0)]),  # doctest
    ("(unnecessary)(parens)", [("unnecessaryparens", R)]),  # doctest
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",  # doctest
     [("a ", 1.0), ("house", 1.3 * R * R), (" ", R), ("on", S * R), (" a ", R), ("hill", 0.5 * R),
      (", sun, ", R), ("sky", R * R * R * R), (".", R)]),
    ("", [("", 1.0)]),
    ("  ", [("  ", 1.0)]),
    ("(x:0)", [("x", 0.0)]),
    ("(x:-1)", [("x", -1.0)]),
    ("(x:1.5)", [("x", 1.5)]),
    ("(x: 1.5 )", [("x", 1.5)]),
    ("(x :1.5)", [("x ", 1.5)]),
    ("(x:.5)", [("x", 0.5)]),
    ("(x:+2)", [("x", 2.0)]),
    ("(x:1.)", [("x", 1.0)]),
    ("(x:0.0)", [("x", 0.0)]),
    ("(a:-0.5)", [("a", -0.5)]),
    ("(x:1e2)", [("x:1e2", R)]),  # no exponents in weights: ":" and "1e2" are text
    ("[x]", [("x", S)]),
    ("[[x]]", [("x", S * S)]),
    ("[[[a]]]", [("a", S * S * S)]),
    ("((x))", [("x", R * R)]),
    ("(((a)))", [("a", R * R * R)]),
    ("([a])", [("a", S * R)]),
    ("[(a)]", [("a", R * S)]),
    ("((a:2))", [("a", 2.0 * R)]),
    ("((a:0.5):2)", [("a", 0.5 * 2.0)]),
    ("(x:1.2:3)", [("x:1.2", 3.0)]),
    ("[x", [("x", S)]),
    ("x)", [("x)", 1.0)]),
    ("x]", [("x]", 1.0)]),
    (")(", [(")", 1.0)]),
    ("()", [("", 1.0)]),
    ("(:1.5)", [("", 1.0)]),
    ("[a)", [("a)", S)]),
    ("(a:1.5]", [("a:1.5]", R)]),
    ("(a[b)c]", [("a", R), ("b", R * S), ("c", S)]),
    ("a:b", [("a:b", 1.0)]),
    ("(a:b)", [("a:b", R)]),
    ("[a:b]", [("a:b", S)]),
    ("[a:1.5]", [("a:1.5", S)]),
    ("x:1.2)", [("x:1.2)", 1.0)]),  # a weight with no open bracket is text
    ("(x:1.2", [("x:1.2", R)]),
    ("embedding:name", [("embedding:name", 1.0)]),
    ("\\\\", [("\\", 1.0)]),
    ("a\\b", [("ab", 1.0)]),  # a backslash before anything else is dropped
    ("a\\\\(b)", [("a\\", 1.0), ("b", R)]),
    (r"\(x\)", [("(x)", 1.0)]),
    (r"\[a\]", [("[a]", 1.0)]),
    (r"(\(x\))", [("(x)", R)]),
    (r"(a\)b)", [("a)b", R)]),
    ("(a)(b:1.1)", [("ab", 1.1)]),  # equal weights merge
    ("(a) (b)", [("a", R), (" ", 1.0), ("b", R)]),
    ("(a:1.2)(b:1.2)", [("ab", 1.2)]),
    ("(a:1.2) (b:1.2)", [("a", 1.2), (" ", 1.0), ("b", 1.2)]),
    ("a, (b:0.8), [c], ((d))",
     [("a, ", 1.0), ("b", 0.8), (", ", 1.0), ("c", S), (", ", 1.0), ("d", R * R)]),
    ("a  (b)  c", [("a  ", 1.0), ("b", R), ("  c", 1.0)]),
    ("日本語 (猫:1.2)", [("日本語 ", 1.0), ("猫", 1.2)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1), ("b", 1.0)]),
    ("aBREAKb", [("aBREAKb", 1.0)]),
    ("a break b", [("a break b", 1.0)]),
    ("a BREAK", [("a", 1.0), ("BREAK", -1), ("", 1.0)]),
    ("BREAK", [("", 1.0), ("BREAK", -1), ("", 1.0)]),
    ("a BREAK BREAK b", [("a", 1.0), ("BREAK", -1), ("", 1.0), ("BREAK", -1), ("b", 1.0)]),
    ("a\nBREAK\nb", [("a", 1.0), ("BREAK", -1), ("b", 1.0)]),
    ("(a BREAK b)", [("a", R), ("BREAK", -1 * R), ("b", R)]),
    ("(a BREAK", [("a", R), ("BREAK", -1 * R), ("", R)]),
    ("[a] BREAK [b]", [("a", S), ("", 1.0), ("BREAK", -1), ("", 1.0), ("b", S)]),
    ("a,BREAK,b", [("a,", 1.0), ("BREAK", -1), (",b", 1.0)]),
]

# (prompt, steps, hires_steps, use_old_scheduling, [(end_at_step, text), ...])
ALT_AB = [(i, "a" if i % 2 else "(b:1.1)") for i in range(1, 11)]
SCHEDULES = [
    ("test", 10, None, False, [(10, "test")]),  # doctest
    ("a [b:3]", 10, None, False, [(3, "a "), (10, "a b")]),  # doctest
    ("a [b: 3]", 10, None, False, [(3, "a "), (10, "a b")]),  # doctest
    ("a [[[b]]:2]", 10, None, False, [(2, "a "), (10, "a [[b]]")]),  # doctest
    ("[(a:2):3]", 10, None, False, [(3, ""), (10, "(a:2)")]),  # doctest
    ("a [b : c : 1] d", 10, None, False, [(1, "a b  d"), (10, "a  c  d")]),  # doctest
    ("a[b:[c:d:2]:1]e", 10, None, False, [(1, "abe"), (2, "ace"), (10, "ade")]),  # doctest
    ("a [unbalanced", 10, None, False, [(10, "a [unbalanced")]),  # doctest
    ("a [b:.5] c", 10, None, False, [(5, "a  c"), (10, "a b c")]),  # doctest
    # doctest claims [[5, 'a  c'], [10, 'a {b|d{ c']] ("not handling this right now"); A1111 1.10's
    # grammar actually rejects the stray "|", so the prompt is used unchanged.
    ("a [{b|d{:.5] c", 10, None, False, [(10, "a [{b|d{:.5] c")]),
    ("((a][:b:c [d:3]", 10, None, False, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),  # doctest
    ("[a|(b:1.1)]", 10, None, False, ALT_AB),  # doctest
    ("[fe|]male", 10, None, False, [(i, "female" if i % 2 else "male") for i in range(1, 11)]),  # doctest
    ("[fe|||]male", 10, None, False, [(i, "female" if i % 4 == 1 else "male") for i in range(1, 11)]),  # doctest
    ("a [b:.5] c", 10, 10, False, [(10, "a b c")]),  # doctest (hires)
    ("a [b:1.5] c", 10, 10, False, [(5, "a  c"), (10, "a b c")]),  # doctest (hires)
    ("", 10, None, False, [(10, "")]),
    ("[a:b:0]", 10, None, False, [(10, "b")]),
    ("[a:b:1]", 10, None, False, [(1, "a"), (10, "b")]),
    ("[a:b:9]", 10, None, False, [(9, "a"), (10, "b")]),
    ("[a:b:10]", 10, None, False, [(10, "a")]),
    ("[a:b:15]", 10, None, False, [(10, "a")]),
    ("[a:b:0.5]", 10, None, False, [(5, "a"), (10, "b")]),
    ("[a:b:0.25]", 20, None, False, [(5, "a"), (20, "b")]),
    ("[a:b:1.0]", 10, None, False, [(10, "a")]),  # "1.0" is a fraction (all steps), "1" a step
    ("[a:b:2.5]", 10, None, False, [(10, "a")]),
    ("[a:b:-1]", 10, None, False, [(10, "b")]),
    ("[a:b:-0.5]", 10, None, False, [(10, "b")]),
    ("[a:b:+3]", 10, None, False, [(3, "a"), (10, "b")]),
    ("[a:b:0.3]", 10, None, False, [(3, "a"), (10, "b")]),
    ("[a:b:0.29]", 100, None, False, [(28, "a"), (100, "b")]),  # 0.29 * 100 == 28.999999999999996
    ("[a:b:1e1]", 20, None, False, [(10, "a"), (20, "b")]),  # no "." → a step number
    ("[a:b:.5]", 1, None, False, [(1, "b")]),
    ("[a:b:3]", 1, None, False, [(1, "a")]),
    ("[a::3]", 10, None, False, [(3, "a"), (10, "")]),
    ("[:b:3]", 10, None, False, [(3, ""), (10, "b")]),
    ("[a:b: 3 ]", 10, None, False, [(3, "a"), (10, "b")]),
    ("[a:b:3 ]", 10, None, False, [(3, "a"), (10, "b")]),
    ("[ a : b : 0.5 ]", 10, None, False, [(5, " a "), (10, " b ")]),
    ("[a:b:3x]", 10, None, False, [(10, "[a:b:3x]")]),
    ("[a:b]", 10, None, False, [(10, "[a:b]")]),
    ("[a:b:c:3]", 10, None, False, [(10, "[a:b:c:3]")]),
    ("[a|b]", 4, None, False, [(1, "a"), (2, "b"), (3, "a"), (4, "b")]),
    ("[a|b|c]", 5, None, False, [(1, "a"), (2, "b"), (3, "c"), (4, "a"), (5, "b")]),
    ("[a |b]", 2, None, False, [(1, "a "), (2, "b")]),
    ("[(a:1.1)|[b]]", 2, None, False, [(1, "(a:1.1)"), (2, "[b]")]),
    ("[a|b:3]", 10, None, False, [(10, "[a|b:3]")]),  # no ":when" inside alternation
    ("a|b", 10, None, False, [(10, "a|b")]),  # a bare "|" makes the prompt unparseable
    ("(a|b)", 10, None, False, [(10, "(a|b)")]),
    ("[a:b:3] | c", 10, None, False, [(10, "[a:b:3] | c")]),
    ("trailing \\", 10, None, False, [(10, "trailing \\")]),
    ("a\\\nb [c:d:2]", 10, None, False, [(10, "a\\\nb [c:d:2]")]),  # backslash-newline
    (r"\[a:b:3\]", 10, None, False, [(10, r"\[a:b:3\]")]),
    (r"[a\:b:c:3]", 10, None, False, [(3, r"a\:b"), (10, "c")]),
    ("(a:[b:c:3])", 10, None, False, [(3, "(a:b)"), (10, "(a:c)")]),
    ("([a:b:3]:1.2)", 10, None, False, [(3, "(a:1.2)"), (10, "(b:1.2)")]),
    ("[a:(b:1.2):5]", 10, None, False, [(5, "a"), (10, "(b:1.2)")]),
    ("((cat:1.2) [dog:fox:0.3])", 10, None, False, [(3, "((cat:1.2) dog)"), (10, "((cat:1.2) fox)")]),
    ("[a:[b:c:2]:5]", 10, None, False, [(2, "a"), (5, "a"), (10, "c")]),
    ("[a|b] [c:d:2]", 4, None, False, [(1, "a c"), (2, "b c"), (3, "a d"), (4, "b d")]),
    ("[a:[b|c]:2]", 4, None, False, [(1, "a"), (2, "a"), (3, "b"), (4, "c")]),
    ("a\nb [c:d:2]", 10, None, False, [(2, "a\nb c"), (10, "a\nb d")]),
    ("[a:b:2][c:d:2]", 10, None, False, [(2, "ac"), (10, "bd")]),
    ("a [b:c:2] d [e:f:4] g", 10, None, False, [(2, "a b d e g"), (4, "a c d e g"), (10, "a c d f g")]),
    ("[a:b:5] AND [c:d:2]", 10, None, False, [(2, "a AND c"), (5, "a AND d"), (10, "b AND d")]),
    ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
     "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]", 100, None, False, [
         (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
         (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
         (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
         (75, "fantasy landscape with a lake and an oak in background masterful"),
         (100, "fantasy landscape with a lake and a christmas tree in background masterful")]),  # A1111's comment
    # hires pass: integers count from the first pass's start, "." numbers are 1.0 + fraction
    ("[a:b:3]", 10, 10, False, [(10, "b")]),
    ("[a:b:15]", 10, 10, False, [(5, "a"), (10, "b")]),
    ("[a:b:1.5]", 20, 10, False, [(5, "a"), (10, "b")]),
    ("[a:b:1.25]", 10, 20, False, [(5, "a"), (20, "b")]),
    ("[a:b:25]", 20, 10, False, [(5, "a"), (10, "b")]),
    ("[a:b:0.5]", 20, 10, False, [(10, "b")]),
    ("[a:b:2.0]", 10, 10, False, [(10, "a")]),
    ("[a|b]", 10, 4, False, [(1, "a"), (2, "b"), (3, "a"), (4, "b")]),
    ("test", 10, 6, False, [(6, "test")]),
    ("a|b", 10, 6, False, [(6, "a|b")]),
    # old (pre-1.6) timelines: < 1 is a fraction, else a step; hires uses the first pass's steps
    ("[a:b:1.0]", 10, None, True, [(1, "a"), (10, "b")]),
    ("[a:b:0.5]", 10, None, True, [(5, "a"), (10, "b")]),
    ("[a:b:2.5]", 10, None, True, [(2, "a"), (10, "b")]),
    ("[a:b:0.5]", 10, 10, True, [(5, "a"), (10, "b")]),
    ("[a:b:15]", 10, 20, True, [(10, "a")]),
]

# (prompt, [(sub-prompt text, weight), ...]) — A1111's AND splitting
MULTICOND = [
    ("cat", [("cat", 1.0)]),
    ("", [("", 1.0)]),
    ("a AND b", [("a", 1.0), (" b", 1.0)]),
    ("a:0.5 AND b:2", [("a", 0.5), (" b", 2.0)]),
    ("a AND b : 1.5 ", [("a", 1.0), (" b", 1.5)]),
    ("a AND b AND c:0.3", [("a", 1.0), (" b", 1.0), (" c", 0.3)]),
    ("a:-1 AND b", [("a", -1.0), (" b", 1.0)]),
    ("a:.5", [("a", 0.5)]),
    ("a:5.", [("a", 5.0)]),
    ("a: 1.5", [("a", 1.5)]),
    ("a:1:2", [("a:1", 2.0)]),
    ("a:abc", [("a:abc", 1.0)]),
    ("ratio 16:9", [("ratio 16", 9.0)]),  # A1111 quirk: a trailing ":number" is a weight
    ("(x:1.2)", [("(x:1.2)", 1.0)]),
    ("aANDb", [("aANDb", 1.0)]),
    ("a and b", [("a and b", 1.0)]),
    ("a AND", [("a", 1.0), ("", 1.0)]),
    ("  a  ", [("  a", 1.0)]),
    ("[a:b:0.5] AND c", [("[a:b:0.5]", 1.0), (" c", 1.0)]),
    ("a\nAND\nb", [("a", 1.0), ("\nb", 1.0)]),
]

# (prompt, text left, {kind: [items, ...]})
EXTRA_NETWORKS = [
    ("a <lora:x:0.5> b", "a  b", {"lora": [("x", "0.5")]}),
    ("<lora:x>", "", {"lora": [("x",)]}),
    ("<hypernet:h:1.0><lora:l:1:0.5>", "", {"hypernet": [("h", "1.0")], "lora": [("l", "1", "0.5")]}),
    ("<lora:x:te=0.3:unet=0.6>", "", {"lora": [("x", "te=0.3", "unet=0.6")]}),
    ("<lora:my-lora_v2.1:0.8>, cat", ", cat", {"lora": [("my-lora_v2.1", "0.8")]}),
    ("<lora x:1>", "<lora x:1>", {}),
    ("<lora:>", "<lora:>", {}),
    ("<lora:a:1> AND <lora:b:2>", " AND ", {"lora": [("a", "1"), ("b", "2")]}),
    ("<some_kind:a:b:c>", "", {"some_kind": [("a", "b", "c")]}),
    ("<lora:path/to/x:0.5>", "", {"lora": [("path/to/x", "0.5")]}),
    ("[<lora:x:1>:b:3]", "[:b:3]", {"lora": [("x", "1")]}),
]

# (tag, LoraRef)
LORAS = [
    ("<lora:x>", LoraRef("x", 1.0, 1.0, None)),
    ("<lora:x:0.5>", LoraRef("x", 0.5, 0.5, None)),
    ("<lora:x:0>", LoraRef("x", 0.0, 0.0, None)),
    ("<lora:x:-1>", LoraRef("x", -1.0, -1.0, None)),
    ("<lora:x:0.5:0.2>", LoraRef("x", 0.5, 0.2, None)),
    ("<lora:x:0.5:0.2:8>", LoraRef("x", 0.5, 0.2, 8)),
    ("<lora:x:te=0.3>", LoraRef("x", 0.3, 0.3, None)),
    ("<lora:x:unet=0.4>", LoraRef("x", 1.0, 0.4, None)),
    ("<lora:x:0.5:unet=0.1>", LoraRef("x", 0.5, 0.1, None)),
    ("<lora:x:te=0.2:0.9>", LoraRef("x", 0.2, 0.2, None)),  # named wins; unet follows te
    ("<lora:x:1:1:dyn=16>", LoraRef("x", 1.0, 1.0, 16)),
    ("<lyco:x:0.7>", LoraRef("x", 0.7, 0.7, None)),
]


@pytest.mark.parametrize("prompt,expected", ATTENTION, ids=[repr(c[0]) for c in ATTENTION])
def test_attention(prompt, expected):
    got = prompt_parser.parse_prompt_attention(prompt)
    assert got == [list(x) for x in expected]
    assert all(isinstance(chunk, list) for chunk in got)  # A1111's shape: lists, mutable


@pytest.mark.parametrize("prompt,steps,hires,old,expected", SCHEDULES,
                         ids=[f"{c[0]!r}-{c[1]}-{c[2]}-{c[3]}" for c in SCHEDULES])
def test_schedule(prompt, steps, hires, old, expected):
    got = prompt_parser.get_learned_conditioning_prompt_schedules([prompt], steps, hires, old)[0]
    assert got == [list(x) for x in expected]


@pytest.mark.parametrize("prompt,expected", MULTICOND, ids=[repr(c[0]) for c in MULTICOND])
def test_and(prompt, expected):
    assert prompts.split_and(prompt) == expected
    res_indexes, flat, _ = prompt_parser.get_multicond_prompt_list([prompt])
    assert [(flat[i], w) for i, w in res_indexes[0]] == expected


@pytest.mark.parametrize("prompt,text,kinds", EXTRA_NETWORKS, ids=[repr(c[0]) for c in EXTRA_NETWORKS])
def test_extra_networks(prompt, text, kinds):
    got_text, got = prompts.parse_extra_networks(prompt)
    assert got_text == text
    assert {k: [p.items for p in v] for k, v in got.items()} == kinds


@pytest.mark.parametrize("tag,expected", LORAS, ids=[c[0] for c in LORAS])
def test_lora_refs(tag, expected):
    _, networks = prompts.parse_extra_networks(tag)
    assert prompts.loras_from(networks) == [expected]


def test_table_is_big_enough():
    assert len(ATTENTION) + len(SCHEDULES) + len(MULTICOND) + len(EXTRA_NETWORKS) + len(LORAS) >= 150
