"""UI bindings without a browser: every widget edits the right GenerationRequest field, and back."""
from __future__ import annotations

import json

import gradio as gr
import pytest

from modules.queue import JobQueue
from modules.types import RESIZE_MODES, GenerationRequest
from tests.ui_fixtures import FakeEngine
from webui import bindings
from webui.styles import Style, StyleDatabase

# The label a user reads → the request field the widget must edit.
LABELS = {
    "prompt": "Prompt", "negative_prompt": "Negative prompt", "sampler_name": "Sampling method",
    "scheduler": "Schedule type", "steps": "Sampling steps", "cfg_scale": "CFG Scale", "width": "Width",
    "height": "Height", "n_iter": "Batch count", "batch_size": "Batch size", "seed": "Seed",
    "subseed": "Variation seed", "subseed_strength": "Variation strength",
    "seed_resize_from_w": "Resize seed from width", "seed_resize_from_h": "Resize seed from height",
    "checkpoint": "Stable Diffusion checkpoint", "vae": "SD VAE", "clip_skip": "Clip skip",
    "enable_hr": "Enable hires. fix", "hr_upscaler": "Upscaler", "hr_second_pass_steps": "Hires steps (0 = same)",
    "hr_denoising_strength": "Denoising strength", "hr_scale": "Upscale by",
    "hr_resize_x": "Resize width to (0 = use scale)", "hr_resize_y": "Resize height to (0 = use scale)",
    "hr_sampler_name": "Hires sampling method", "hr_scheduler": "Hires schedule type",
    "hr_prompt": "Hires prompt (empty = same)", "hr_negative_prompt": "Hires negative prompt (empty = same)",
    "init_images": "Image for img2img", "resize_mode": "Resize mode", "denoising_strength": "Denoising strength",
}

# A request where every UI field differs from its default.
CHANGED = GenerationRequest(
    prompt="a red fox", negative_prompt="blurry", sampler_name="DPM++ 2M", scheduler="Karras", steps=33,
    cfg_scale=5.5, width=640, height=448, n_iter=3, batch_size=2, seed=1234, subseed=99, subseed_strength=0.25,
    seed_resize_from_w=512, seed_resize_from_h=384, checkpoint="beta.safetensors", vae="fake-vae.safetensors",
    clip_skip=2, enable_hr=True, hr_upscaler="Latent (nearest-exact)", hr_second_pass_steps=12,
    hr_denoising_strength=0.45, hr_scale=1.5, hr_resize_x=1024, hr_resize_y=768, hr_sampler_name="Euler",
    hr_scheduler="Exponential", hr_prompt="sharp", hr_negative_prompt="soft", init_images=("IMG",),
    resize_mode=2, denoising_strength=0.3,
)


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    engine = FakeEngine(tmp_path_factory.mktemp("ui"))
    queue = JobQueue(engine)
    from webui.app import build_ui

    demo = build_ui(engine, queue)
    yield demo.palette_context
    queue.shutdown()


@pytest.mark.parametrize("tab, names", [("txt2img", bindings.TXT2IMG_FIELDS), ("img2img", bindings.IMG2IMG_FIELDS)])
def test_every_widget_is_bound_to_the_field_its_label_names(ui, tab, names):
    widgets = ui.widgets[tab]
    assert set(widgets) == set(names)
    for name, widget in widgets.items():
        assert widget.label == LABELS[name], (name, widget.label)
        assert name in GenerationRequest.field_names()


@pytest.mark.parametrize("tab, names", [("txt2img", bindings.TXT2IMG_FIELDS), ("img2img", bindings.IMG2IMG_FIELDS)])
def test_each_field_alone_round_trips(tab, names):
    base_values = bindings.values_from_request(GenerationRequest(), names)
    default = bindings.request_from_values(base_values)  # what the untouched widgets submit
    for name in names:
        values = {**base_values, name: bindings.values_from_request(CHANGED, (name,))[name]}
        request = bindings.request_from_values(values)
        assert getattr(request, name) == getattr(CHANGED, name), name
        others = [n for n in names if n != name and getattr(request, n) != getattr(default, n)]
        assert others == [], f"setting {name} also changed {others}"


def test_whole_request_round_trip_and_widget_types():
    names = tuple(dict.fromkeys(bindings.TXT2IMG_FIELDS + bindings.IMG2IMG_FIELDS))
    values = bindings.values_from_request(CHANGED, names)
    assert values["resize_mode"] == RESIZE_MODES[2] and values["init_images"] == "IMG"
    again = bindings.request_from_values(values)
    assert all(getattr(again, n) == getattr(CHANGED, n) for n in names)
    # sliders send floats, empty numbers send None: both become the field's type
    coerced = bindings.request_from_values({"steps": 20.0, "seed": None, "cfg_scale": 7, "width": 512.0})
    assert (coerced.steps, coerced.seed, coerced.cfg_scale, coerced.width) == (20, -1, 7.0, 512)
    assert isinstance(coerced.steps, int) and isinstance(coerced.cfg_scale, float)


def test_special_values_map_to_none():
    values = bindings.values_from_request(GenerationRequest(), ("vae", "hr_sampler_name", "hr_scheduler", "init_images"))
    assert values == {"vae": "Automatic", "hr_sampler_name": "Use same sampler",
                      "hr_scheduler": "Use same scheduler", "init_images": None}
    request = bindings.request_from_values(values)
    assert (request.hr_sampler_name, request.hr_scheduler, request.init_images) == (None, None, ())
    assert request.vae == "Automatic"  # explicit, so another session's VAE choice never leaks into this job


def test_unknown_widget_key_is_an_error():
    with pytest.raises(KeyError, match="no GenerationRequest field"):
        bindings.request_from_values({"stepz": 3})


def test_default_widget_values_are_valid_choices(ui):
    for tab in ("txt2img", "img2img"):
        for name, widget in ui.widgets[tab].items():
            if isinstance(widget, gr.Slider):
                assert widget.minimum <= widget.value <= widget.maximum, name
            if isinstance(widget, (gr.Dropdown, gr.Radio)) and widget.value is not None:
                assert widget.value in [c[1] for c in widget.choices], (name, widget.value)


A1111_TEXT = (
    "a cat wearing a hat, (masterpiece:1.2)\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567, Size: 640x448, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Denoising strength: 0.45, "
    "Hires upscale: 1.5, Hires steps: 10, Hires upscaler: Latent (nearest-exact), Version: v1.10.1"
)


def test_infotext_params_fill_the_widgets():
    values = bindings.values_from_infotext(A1111_TEXT, bindings.TXT2IMG_FIELDS)
    assert values["prompt"] == "a cat wearing a hat, (masterpiece:1.2)"
    assert values["negative_prompt"] == "blurry, lowres"
    assert (values["steps"], values["sampler_name"], values["scheduler"]) == (28, "DPM++ 2M", "Karras")
    assert (values["cfg_scale"], values["seed"], values["width"], values["height"]) == (6.5, 1234567, 640, 448)
    assert values["clip_skip"] == 2
    assert values["enable_hr"] is True and values["hr_scale"] == 1.5 and values["hr_second_pass_steps"] == 10
    assert values["hr_upscaler"] == "Latent (nearest-exact)" and values["hr_denoising_strength"] == 0.45
    assert "checkpoint" not in values and "vae" not in values  # pasting never switches the model


def test_infotext_without_negative_or_hires():
    values = bindings.values_from_infotext("just a prompt\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512",
                                           bindings.IMG2IMG_FIELDS)
    assert values["prompt"] == "just a prompt" and values["negative_prompt"] == ""
    assert "init_images" not in values


def test_token_counter_shows_what_the_engine_counts():
    from webui.components import token_label

    class Counting:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def token_count(self, prompt: str, *, steps: int = 20, is_positive: bool = True) -> tuple[int, int]:
            self.seen.append(prompt)
            self.steps = steps
            return 80, 150

    class Broken:
        def token_count(self, prompt: str, *, steps: int = 20, is_positive: bool = True) -> tuple[int, int]:
            raise RuntimeError("no tokenizer <yet>")

    engine = Counting()
    assert token_label(engine, "a cat <lora:x:1>") == "<span class='token-counter'>80/150</span>"
    assert engine.seen == ["a cat <lora:x:1>"]  # the engine removes tags, not the UI
    assert token_label(engine, None) == "<span class='token-counter'>80/150</span>" and engine.seen[-1] == ""
    assert token_label(Broken(), "x") == "<span class='token-counter' title='no tokenizer &lt;yet&gt;'>?/75</span>"


def test_token_counter_merges_the_selected_styles_and_schedules_over_the_steps(tmp_path):
    """A1111's update_token_counter(text, steps, styles): styles in (include_styles_into_token_counters is
    on by default), the positive box gets the styles' prompts, the negative box their negative prompts."""
    from webui.components import token_label
    from webui.styles import Style, StyleDatabase

    store = StyleDatabase(tmp_path / "styles.csv")
    store.save(Style("film", "{prompt}, 35mm film, grain", "digital"))

    class Counting:
        seen: list[tuple[str, int, bool]] = []

        def token_count(self, prompt: str, *, steps: int = 20, is_positive: bool = True) -> tuple[int, int]:
            self.seen.append((prompt, steps, is_positive))
            return 1, 75

    engine = Counting()
    token_label(engine, "a cat", steps=33, styles=["film"], style_store=store)
    token_label(engine, "blurry", is_positive=False, steps=7, styles=["film"], style_store=store)
    token_label(engine, "a cat", steps=5, styles=[], style_store=store)
    assert engine.seen == [("a cat, 35mm film, grain", 33, True), ("blurry, digital", 7, False), ("a cat", 5, True)]


def test_negative_box_counts_and_as_text_like_a1111():
    """A1111 counts the negative box with `is_positive=False`: `AND` is not split into parts there
    (the negative prompt has no composable parts), so "cat AND dog" is 3 tokens, not max(1, 1)."""
    from modules.networks import token_count
    from webui.components import prompt_box, wire_token_counters

    class Engine:
        def token_count(self, prompt: str, *, steps: int = 20, is_positive: bool = True) -> tuple[int, int]:
            return token_count(None, None, prompt, steps=steps, is_positive=is_positive)

    with gr.Blocks() as demo:
        prompts = prompt_box("txt2img", [])
        wire_token_counters(Engine(), prompts, gr.Slider(1, 150, value=20), None)
    counters = {demo.blocks[f.targets[0][0]].elem_id: f.fn for f in demo.fns.values() if f.fn is not None}
    assert counters["txt2img-prompt-token-button"]("cat AND dog", 20, []) == "<span class='token-counter'>1/75</span>"
    assert counters["txt2img-negative-prompt-token-button"]("cat AND dog", 20, []) == "<span class='token-counter'>3/75</span>"


def test_styles_apply_and_save(tmp_path):
    db = StyleDatabase(tmp_path / "styles.csv")
    assert db.names() == []
    db.save(Style("cinematic", "cinematic still of {prompt}, film grain", "cartoon"))
    db.save(Style("sharp", "sharp focus"))
    assert db.names() == ["cinematic", "sharp"]
    prompt, negative = db.apply(["cinematic", "sharp", "missing"], "a fox", "blurry")
    assert prompt == "cinematic still of a fox, film grain, sharp focus"
    assert negative == "blurry, cartoon"
    assert (tmp_path / "styles.csv").read_text().splitlines()[0] == "name,prompt,negative_prompt"


def test_settings_tab_covers_every_option_and_saves(tmp_path):
    from dataclasses import fields

    from modules import config as config_mod
    from webui.context import UIContext
    from webui.tabs import settings as settings_tab

    grouped = settings_tab.groups()
    assert sorted(f.name for fs in grouped.values() for f in fs) == sorted(f.name for f in fields(config_mod.Settings))
    engine = FakeEngine(tmp_path)
    ctx = UIContext(engine, None)
    current = engine.settings.to_dict()
    for f in fields(config_mod.Settings):  # each widget shows the value that reads back unchanged
        widget = settings_tab.widget_for(f, settings_tab.widget_value(f.name, current[f.name]))
        assert settings_tab.to_setting(f.name, widget.value) == current[f.name], f.name
    values = {n: settings_tab.widget_value(n, v) for n, v in engine.settings.to_dict().items()}
    values["live_preview_every"] = 3.0
    values["family_overrides"] = json.dumps({"a.safetensors": "sd2"})
    message = settings_tab.apply(ctx, values)
    assert "live_preview_every" in message and "family_overrides" in message
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["live_preview_every"] == 3 and saved["family_overrides"] == {"a.safetensors": "sd2"}
    bad = settings_tab.apply(ctx, {**values, "family_overrides": "[1, 2"})
    assert "Not saved" in bad and "family_overrides" in bad


def test_building_the_ui_loads_no_model_and_shows_loading(tmp_path):
    import threading

    from webui.app import build_ui, model_status

    engine = FakeEngine(tmp_path)
    queue = JobQueue(engine)
    release = threading.Event()
    queue.submit_task(lambda: release.wait(10), label="Loading alpha.safetensors")
    try:
        demo = build_ui(engine, queue)
        assert engine.current_checkpoint is None and engine.calls == []
        text, busy = model_status(demo.palette_context)
        assert busy and "Loading alpha.safetensors" in text
    finally:
        release.set()
        queue.shutdown()
    assert model_status(demo.palette_context) == ("<span class='model-idle'>No model loaded yet; it loads with the first job.</span>", False)


def test_ui_builds_on_the_real_engine_without_loading(tmp_path):
    """The UI only calls what modules.engine.Engine really has (the fake could drift)."""
    from modules.engine import Engine
    from modules.paths import ModelPaths
    from webui.app import build_ui, model_status

    engine = Engine(ModelPaths.create(tmp_path), settings_path=tmp_path / "config.json", outputs_root=tmp_path)
    queue = JobQueue(engine)
    try:
        ctx = build_ui(engine, queue).palette_context
        assert engine.current_checkpoint is None
        assert "No model loaded yet" in model_status(ctx)[0]
        assert bindings.sampler_choices(engine) and bindings.schedule_choices(engine)[0] == "Automatic"
    finally:
        queue.shutdown()
