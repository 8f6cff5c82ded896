"""Reusable widget groups: top bar, prompt box, sampler row, size, batch, seed, hires fix, output panel.

Each builder returns widgets keyed by the GenerationRequest field they edit (see bindings.py), so the
tabs can hand the whole dict to an event as keyword inputs.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules.types import RESIZE_MODES, GenerationRequest
from webui import bindings

DEFAULTS = bindings.values_from_request(GenerationRequest())
DICE, RECYCLE, SWAP = "\U0001f3b2", "\u267b", "\u21c5"


def checkpoint_choices(engine: Any) -> list[tuple[str, str]]:
    """(label with [hash], file name) pairs; only reads the folder, never loads a model."""
    return [(info.title, info.name) for info in engine.list_checkpoints()]


def checkpoint_value(engine: Any) -> str | None:
    current = engine.current_checkpoint
    if current is not None:
        return current.name
    names = [name for _, name in checkpoint_choices(engine)]
    wanted = engine.settings.sd_model_checkpoint
    return wanted if wanted in names else (names[0] if names else None)


def vae_choices(engine: Any) -> list[str]:
    names = []
    for path in engine.list_vaes():
        names.append(path.name)
    return [bindings.AUTOMATIC_VAE, "None", *names]


@dataclass
class TopBar:
    widgets: dict[str, Any]
    refresh: gr.Button
    status: gr.HTML


def top_bar(engine: Any) -> TopBar:
    with gr.Row(elem_id="palette-topbar"):
        checkpoint = gr.Dropdown(
            checkpoint_choices(engine), value=checkpoint_value(engine), label="Stable Diffusion checkpoint",
            elem_id="checkpoint", scale=4,
        )
        refresh = gr.Button("\U0001f504", elem_id="refresh-models", scale=0, min_width=48)
        vae = gr.Dropdown(vae_choices(engine), value=engine.settings.sd_vae, label="SD VAE", elem_id="sd-vae", scale=2)
        clip_skip = gr.Slider(1, 12, value=engine.settings.CLIP_stop_at_last_layers, step=1, label="Clip skip",
                              elem_id="clip-skip", scale=2)
    status = gr.HTML("", elem_id="model-status")
    return TopBar({"checkpoint": checkpoint, "vae": vae, "clip_skip": clip_skip}, refresh, status)


@dataclass
class PromptBox:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    prompt_tokens: gr.HTML
    negative_tokens: gr.HTML
    styles: gr.Dropdown
    apply_styles: gr.Button
    save_style: gr.Button
    style_name: gr.Textbox


EMPTY_COUNT = "<span class='token-counter'>0/75</span>"  # shown before any text: building never asks the engine
TOKEN_DEBOUNCE_MS = 400  # script.js waits this long after the last change before counting


def token_label(engine: Any, text: str, *, is_positive: bool = True, steps: float | None = 20,
                styles: list[str] | None = None, style_store: Any = None) -> str:
    """A1111's `N/75` counter from `engine.token_count` (runs in Gradio's worker threads, never on the
    event loop). As A1111 (`include_styles_into_token_counters`, on by default) the selected styles are
    merged in first, and prompt editing is scheduled over the Steps slider. A failure shows `?` with the
    reason, and never an error popup while typing."""
    try:
        text = text or ""
        if styles and style_store is not None:
            merged = style_store.apply(list(styles), text if is_positive else "", "" if is_positive else text)
            text = merged[0] if is_positive else merged[1]
        count, limit = bindings.token_count(engine, text, is_positive=is_positive, steps=int(steps or 20))
    except Exception as exc:  # noqa: BLE001 - a counter must not break typing
        return f"<span class='token-counter' title='{html.escape(str(exc), quote=True)}'>?/75</span>"
    return f"<span class='token-counter'>{count}/{limit}</span>"


def wire_token_counter(engine: Any, box: gr.Textbox, counter: gr.HTML, steps: gr.Slider, styles: gr.Dropdown,
                       style_store: Any, *, is_positive: bool = True) -> None:
    """Debounced like A1111's: every change (typing, paste, Send to, another style) only restarts a timer
    in the browser; when it fires, a hidden button asks the server for the count of the latest text, with
    the selected styles merged in and prompt editing scheduled over the Steps slider (A1111's
    `update_token_counter(text, steps, styles)`). The negative box counts with `is_positive=False`."""
    button = gr.Button("count tokens", visible="hidden", elem_id=f"{box.elem_id}-token-button")
    soon = f"() => window.paletteCountTokensSoon('{box.elem_id}', {TOKEN_DEBOUNCE_MS})"
    box.change(None, js=soon, api_visibility="private")
    styles.change(None, js=soon, api_visibility="private")

    def count(text: str, steps_value: float, names: list[str] | None) -> str:
        return token_label(engine, text, is_positive=is_positive, steps=steps_value, styles=names,
                           style_store=style_store)

    button.click(count, inputs=[box, steps, styles], outputs=counter, queue=False,
                 show_progress="hidden", trigger_mode="always_last", api_visibility="private")


def wire_token_counters(engine: Any, prompts: "PromptBox", steps: gr.Slider, style_store: Any) -> None:
    """Both counters of a tab, once its Steps slider exists (it is built after the prompt boxes)."""
    wire_token_counter(engine, prompts.prompt, prompts.prompt_tokens, steps, prompts.styles, style_store)
    wire_token_counter(engine, prompts.negative_prompt, prompts.negative_tokens, steps, prompts.styles, style_store,
                       is_positive=False)


def prompt_box(tab: str, style_names: list[str]) -> PromptBox:
    """The prompt and negative boxes with their counters (wired by `wire_token_counters` once the tab
    has its Steps slider) and the styles controls."""
    with gr.Row():
        with gr.Column(scale=6):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="Prompt (Ctrl+Enter to generate)",
                                elem_id=f"{tab}-prompt")
            prompt_tokens = gr.HTML(EMPTY_COUNT, elem_id=f"{tab}-prompt-tokens")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{tab}-negative-prompt")
            negative_tokens = gr.HTML(EMPTY_COUNT, elem_id=f"{tab}-negative-tokens")
        with gr.Column(scale=2, min_width=200):
            styles = gr.Dropdown(style_names, value=[], multiselect=True, label="Styles", elem_id=f"{tab}-styles")
            with gr.Row():
                apply_styles = gr.Button("Apply styles to prompt", size="sm", elem_id=f"{tab}-apply-styles")
            with gr.Row():
                style_name = gr.Textbox(label="New style name", scale=3, elem_id=f"{tab}-style-name")
                save_style = gr.Button("Save style", size="sm", scale=1, elem_id=f"{tab}-save-style")
    return PromptBox(prompt, negative, prompt_tokens, negative_tokens, styles, apply_styles, save_style, style_name)


def sampler_row(engine: Any, tab: str) -> dict[str, Any]:
    samplers, schedules = bindings.sampler_choices(engine), bindings.schedule_choices(engine)
    with gr.Row():
        sampler = gr.Dropdown(samplers, value=DEFAULTS["sampler_name"] if DEFAULTS["sampler_name"] in samplers else samplers[0],
                              label="Sampling method", elem_id=f"{tab}-sampler")
        scheduler = gr.Dropdown(schedules, value="Automatic" if "Automatic" in schedules else schedules[0],
                                label="Schedule type", elem_id=f"{tab}-scheduler")
        steps = gr.Slider(1, 150, value=DEFAULTS["steps"], step=1, label="Sampling steps", elem_id=f"{tab}-steps")
    return {"sampler_name": sampler, "scheduler": scheduler, "steps": steps}


def size_rows(tab: str) -> tuple[dict[str, Any], gr.Button]:
    with gr.Row():
        with gr.Column(scale=4):
            width = gr.Slider(64, 2048, value=DEFAULTS["width"], step=8, label="Width", elem_id=f"{tab}-width")
            height = gr.Slider(64, 2048, value=DEFAULTS["height"], step=8, label="Height", elem_id=f"{tab}-height")
        swap = gr.Button(SWAP, scale=0, min_width=48, elem_id=f"{tab}-swap-size")
        with gr.Column(scale=2):
            n_iter = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{tab}-batch-count")
            batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{tab}-batch-size")
    swap.click(lambda w, h: (h, w), inputs=[width, height], outputs=[width, height], queue=False,
               api_visibility="private")
    cfg = gr.Slider(1.0, 30.0, value=DEFAULTS["cfg_scale"], step=0.5, label="CFG Scale", elem_id=f"{tab}-cfg")
    return {"width": width, "height": height, "n_iter": n_iter, "batch_size": batch_size, "cfg_scale": cfg}, swap


@dataclass
class SeedRow:
    widgets: dict[str, Any]
    reuse_seed: gr.Button
    reuse_subseed: gr.Button


def seed_row(tab: str) -> SeedRow:
    with gr.Row():
        seed = gr.Number(value=-1, precision=0, label="Seed", elem_id=f"{tab}-seed", scale=4)
        random_seed = gr.Button(DICE, scale=0, min_width=48, elem_id=f"{tab}-random-seed")
        reuse_seed = gr.Button(RECYCLE, scale=0, min_width=48, elem_id=f"{tab}-reuse-seed")
    with gr.Accordion("Extra", open=False, elem_id=f"{tab}-seed-extras"):
        with gr.Row():
            subseed = gr.Number(value=-1, precision=0, label="Variation seed", elem_id=f"{tab}-subseed", scale=4)
            random_subseed = gr.Button(DICE, scale=0, min_width=48, elem_id=f"{tab}-random-subseed")
            reuse_subseed = gr.Button(RECYCLE, scale=0, min_width=48, elem_id=f"{tab}-reuse-subseed")
            subseed_strength = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength", scale=4,
                                         elem_id=f"{tab}-subseed-strength")
        with gr.Row():
            resize_w = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width", elem_id=f"{tab}-seed-resize-w")
            resize_h = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height", elem_id=f"{tab}-seed-resize-h")
    for button, target in ((random_seed, seed), (random_subseed, subseed)):
        button.click(lambda: -1, outputs=target, queue=False, api_visibility="private")
    widgets = {"seed": seed, "subseed": subseed, "subseed_strength": subseed_strength,
               "seed_resize_from_w": resize_w, "seed_resize_from_h": resize_h}
    return SeedRow(widgets, reuse_seed, reuse_subseed)


def generation_controls(engine: Any, tab: str) -> tuple[dict[str, Any], SeedRow]:
    """The controls every generating tab shares: sampler and steps, size and batch, CFG, seeds."""
    widgets = sampler_row(engine, tab)
    size, _ = size_rows(tab)
    seeds = seed_row(tab)
    return widgets | size | seeds.widgets, seeds


def hires_fix(engine: Any, tab: str) -> dict[str, Any]:
    samplers = [bindings.SAME_SAMPLER, *bindings.sampler_choices(engine)]
    schedules = [bindings.SAME_SCHEDULER, *bindings.schedule_choices(engine)]
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{tab}-hires"):
        enable = gr.Checkbox(False, label="Enable hires. fix", elem_id=f"{tab}-enable-hr")
        with gr.Row():
            names = getattr(engine, "hr_upscaler_names", None)  # Latent modes, PIL filters, model files
            upscaler = gr.Dropdown(names() if names else list(bindings.HR_UPSCALERS), value="Latent", label="Upscaler",
                                   elem_id=f"{tab}-hr-upscaler")
            hr_steps = gr.Slider(0, 150, value=0, step=1, label="Hires steps (0 = same)", elem_id=f"{tab}-hr-steps")
            denoise = gr.Slider(0, 1, value=0.7, step=0.01, label="Denoising strength", elem_id=f"{tab}-hr-denoise")
        with gr.Row():
            scale = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by", elem_id=f"{tab}-hr-scale")
            resize_x = gr.Slider(0, 2048, value=0, step=8, label="Resize width to (0 = use scale)", elem_id=f"{tab}-hr-resize-x")
            resize_y = gr.Slider(0, 2048, value=0, step=8, label="Resize height to (0 = use scale)", elem_id=f"{tab}-hr-resize-y")
        with gr.Row():
            hr_sampler = gr.Dropdown(samplers, value=samplers[0], label="Hires sampling method", elem_id=f"{tab}-hr-sampler")
            hr_scheduler = gr.Dropdown(schedules, value=schedules[0], label="Hires schedule type", elem_id=f"{tab}-hr-scheduler")
        hr_prompt = gr.Textbox(label="Hires prompt (empty = same)", lines=1, elem_id=f"{tab}-hr-prompt")
        hr_negative = gr.Textbox(label="Hires negative prompt (empty = same)", lines=1, elem_id=f"{tab}-hr-negative")
    return {
        "enable_hr": enable, "hr_upscaler": upscaler, "hr_second_pass_steps": hr_steps,
        "hr_denoising_strength": denoise, "hr_scale": scale, "hr_resize_x": resize_x, "hr_resize_y": resize_y,
        "hr_sampler_name": hr_sampler, "hr_scheduler": hr_scheduler, "hr_prompt": hr_prompt,
        "hr_negative_prompt": hr_negative,
    }


def img2img_inputs(tab: str) -> dict[str, Any]:
    init = gr.Image(type="pil", label="Image for img2img", sources=["upload", "clipboard"], elem_id=f"{tab}-init-image",
                    height=360)
    resize = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode", elem_id=f"{tab}-resize-mode")
    denoise = gr.Slider(0, 1, value=DEFAULTS["denoising_strength"], step=0.01, label="Denoising strength",
                        elem_id=f"{tab}-denoise")
    return {"init_images": init, "resize_mode": resize, "denoising_strength": denoise}


@dataclass
class OutputPanel:
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    infotext: gr.HTML
    send: dict[str, gr.Button] = field(default_factory=dict)
    open_folder: gr.Button | None = None
    last: gr.State | None = None  # {"images", "infotexts", "seeds", "subseeds", "selected"}


def output_panel(tab: str, is_local: bool, send_targets: tuple[str, ...]) -> OutputPanel:
    with gr.Row():
        generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}-generate", scale=3)
        interrupt = gr.Button("Interrupt", elem_id=f"{tab}-interrupt", scale=1)
        skip = gr.Button("Skip", elem_id=f"{tab}-skip", scale=1)
    progress = gr.HTML("", elem_id=f"{tab}-progress")
    preview = gr.Image(label="Live preview", visible=False, interactive=False, elem_id=f"{tab}-preview", height=256)
    gallery = gr.Gallery(label="Output", columns=2, height=512, object_fit="contain", format="png",
                         interactive=False, elem_id=f"{tab}-gallery")
    with gr.Row():
        send = {t: gr.Button(f"Send to {t}", size="sm", elem_id=f"{tab}-send-to-{t}") for t in send_targets}
        open_folder = gr.Button("Open outputs folder", size="sm", visible=is_local, elem_id=f"{tab}-open-folder")
    infotext = gr.HTML("", elem_id=f"{tab}-infotext", elem_classes=["infotext"])
    last = gr.State({"images": [], "infotexts": [], "seeds": [], "subseeds": [], "selected": 0})
    return OutputPanel(generate, interrupt, skip, progress, preview, gallery, infotext, send, open_folder, last)


def escaped(text: str) -> str:
    """Infotext (user-controlled prompt text) as HTML: escaped, line breaks kept."""
    return "<div class='infotext-body'>" + html.escape(text or "").replace("\n", "<br>") + "</div>"
