"""modules.prompts beyond the case table: plans for the engine, tags, errors, facade shapes."""
from __future__ import annotations

import random
import time

import pytest

from modules import prompt_editing, prompt_parser, prompts
from modules.types import LoraRef


def test_plan_encodes_each_distinct_text_once():
    plan = prompts.plan_conditioning(["a [b:c:2] AND d:0.5", "a [b:c:2] AND d:0.5", "d"], steps=4)
    assert plan.texts == ("a b", "a c", " d", "d")
    assert len(plan.batch) == 3 and plan.batch[0] == plan.batch[1]
    assert plan.steps == 4
    assert plan.change_steps() == (2, 4)
    # A1111's counter: the first entry with step <= end_at_step, 0-based sampler steps
    assert plan.at_step(0) == [[(0, 1.0), (2, 0.5)], [(0, 1.0), (2, 0.5)], [(3, 1.0)]]
    assert plan.at_step(2) == plan.at_step(0)
    assert plan.at_step(3) == [[(1, 1.0), (2, 0.5)], [(1, 1.0), (2, 0.5)], [(3, 1.0)]]


def test_negative_prompts_are_not_split_on_and():
    plan = prompts.plan_conditioning(["ugly AND bad:0.5", ""], steps=10, multicond=False)
    assert plan.texts == ("ugly AND bad:0.5", "")
    assert plan.at_step(0) == [[(0, 1.0)], [(1, 1.0)]]


def test_plan_for_hires_pass_uses_hires_timeline():
    plan = prompts.plan_conditioning(["[a:b:25]", "[a:b:1.5]"], steps=20, hires_steps=10)
    assert plan.steps == 10
    assert plan.batch[0][0].schedule == ((5, 0), (10, 1))
    assert plan.batch[1][0].schedule == ((5, 0), (10, 1))
    old = prompts.plan_conditioning(["[a:b:25]"], steps=20, hires_steps=10, use_old_scheduling=True)
    assert old.steps == 20 and old.texts == ("a",)  # 25 > 20 steps: "a" throughout


def test_text_at_step_off_by_one_is_a1111s():
    schedule = prompts.schedules_for(["[a:b:3]"], 10)[0]
    assert schedule == [(3, "a"), (10, "b")]
    assert [prompts.text_at_step(schedule, s) for s in range(6)] == ["a", "a", "a", "a", "b", "b"]
    assert prompts.index_at_step(schedule, 99) == 0  # past the end: A1111 falls back to entry 0


def test_schedules_for_returns_independent_lists_for_equal_prompts():
    a, b = prompts.schedules_for(["x [y:2]", "x [y:2]"], 5)
    assert a == b and a is not b


def test_parse_prompt_collects_tags_loras_and_and_parts():
    parsed = prompts.parse_prompt("cat <lora:fluffy:0.6> AND dog:0.4 <lyco:style:1:0.5> <hypernet:h:1>")
    assert parsed.text == "cat  AND dog:0.4  "
    assert parsed.loras == (LoraRef("fluffy", 0.6, 0.6), LoraRef("style", 1.0, 0.5))
    assert set(parsed.networks) == {"lora", "lyco", "hypernet"}
    assert parsed.subprompts == (("cat", 1.0), (" dog", 0.4))


def test_batch_extra_networks_come_from_the_first_prompt():
    texts, networks = prompts.parse_extra_networks_batch(["a <lora:x:1>", "b <lora:y:1>"])
    assert texts == ["a ", "b "]
    assert [p.items for p in networks["lora"]] == [("x", "1")]
    assert prompts.parse_extra_networks_batch([]) == ([], {})


def test_extra_network_params_positional_and_named():
    params = prompts.ExtraNetworkParams(("name", "0.5", "te=1", "a=b=c"))
    assert params.positional == ["name", "0.5", "a=b=c"]  # A1111 splits "=" at most twice
    assert params.named == {"te": "1"}


@pytest.mark.parametrize("tag,message", [
    ("<lora::0.5>", "name is missing"),
    ("<lora:x:strong>", "not a number"),
    ("<lora:x:1:1:1.5>", "dyn"),
    ("<lora:x:te=inf>", "finite"),
    ("<lora:x:a=b=c>", "not a number"),
])
def test_bad_lora_tags_explain_themselves(tag, message):
    _, networks = prompts.parse_extra_networks(tag)
    with pytest.raises(ValueError, match=message):
        prompts.loras_from(networks)


def test_bad_attention_weight_explains_itself():
    with pytest.raises(ValueError, match="not a number"):
        prompts.parse_prompt_attention("(cat:1.2.3)")
    # without an open bracket the same text is harmless
    assert prompts.parse_prompt_attention("cat:1.2.3)") == [["cat:1.2.3)", 1.0]]


def test_parse_attention_tuples_for_text_encoding():
    assert prompts.parse_attention("a (b) BREAK c") == [("a ", 1.0), ("b", 1.1), ("", 1.0), ("BREAK", -1), ("c", 1.0)]


def test_facade_keeps_a1111_names():
    for name in ("parse_prompt_attention", "get_learned_conditioning_prompt_schedules",
                 "get_multicond_prompt_list", "re_attention", "re_break", "re_AND", "re_weight",
                 "ScheduledPromptConditioning"):
        assert hasattr(prompt_parser, name), name
    res_indexes, flat, index = prompt_parser.get_multicond_prompt_list(["a AND b:0.5", "b:0.5 AND a"])
    assert res_indexes == [[(0, 1.0), (1, 0.5)], [(2, 0.5), (3, 1.0)]]
    assert flat == ["a", " b", "b", " a"] and index == {"a": 0, " b": 1, "b": 2, " a": 3}
    out = prompt_parser.get_learned_conditioning_prompt_schedules(["x", "[x:y:2]"], 4)
    assert out == [[[4, "x"]], [[2, "x"], [4, "y"]]]
    assert prompt_parser.re_break.split("a BREAK b") == ["a", "b"]


def test_random_prompts_give_well_formed_schedules():
    rnd = random.Random(1234)
    alphabet = list("ab [](): |\\") + ["1", ".5", "1.5", "\n", "-1"]
    for _ in range(300):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 20)))
        for steps, hires in ((10, None), (10, 6)):
            schedule = prompts.schedules_for([text], steps, hires)[0]
            ends = [end for end, _ in schedule]
            assert ends == sorted(set(ends)) and ends[-1] == (hires or steps) and ends[0] >= 1
            prompts.parse_prompt_attention(text.replace(":", " "))  # never raises without weights


def test_unparseable_prompts_are_reported_as_none():
    assert prompt_editing.parse("a | b") is None
    assert prompt_editing.parse("a \\") is None
    assert prompt_editing.parse("a [b|c]") is not None


def test_pathological_nesting_is_fast():
    text = "[" * 3000 + "a:b:3" + "(" * 3000
    start = time.perf_counter()
    prompts.schedules_for([text], 20)
    prompts.parse_prompt_attention(text)
    assert time.perf_counter() - start < 2.0


def test_too_deep_nesting_is_used_unchanged():
    deep = "[" * 2000 + "a:b:3" + "]" * 2000
    assert prompts.schedules_for([deep], 20)[0] == [(20, deep)]
    nested = "[" * 50 + "a:b:3" + "]" * 50  # ordinary depths still parse
    assert prompts.schedules_for([nested], 20)[0][0][0] == 3
