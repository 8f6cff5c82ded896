"""A1111's "parameters" text (infotext): build it, parse it, map it to and from a GenerationRequest.

Layout, as A1111 writes it (processing.create_infotext):

    <prompt, may span lines>
    Negative prompt: <negative prompt, may span lines>      (line omitted when empty)
    Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, ...

Values holding `,` `:` `"` or a newline are written as JSON strings. Keys follow A1111's order so
the text is byte-for-byte what A1111 would write for the same job, and A1111 (or any tool reading
its format) can paste ours. Images carry the text in a PNG `parameters` chunk, or for JPEG/WEBP in
EXIF UserComment (UNICODE prefix + UTF-16BE), exactly where A1111 looks for it.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

from PIL import Image, PngImagePlugin

from modules.types import GenerationRequest

DEFAULT_VERSION = "Palette 0.1"
# Palette's own key (A1111 ignores keys it does not know): the dtypes and device the image was made
# with, which change its pixels slightly (A1111 records only "FP8 weight").
PRECISION_KEY = "Palette precision"

# A1111's fixed keys, in create_infotext's order; everything else follows in insertion order.
FIXED_KEYS = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
    "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength", "Conditional mask weight", "Clip skip",
    "ENSD", "Token merging ratio", "Token merging ratio hr", "Init image hash", "RNG", "Tiling",
)
TRAILING_KEYS = ("Version", "User")

# A1111 1.10's schedulers (label, name, aliases): a sampler name ending in one is an old fused name.
SCHEDULERS = (
    ("Automatic", "automatic"), ("Uniform", "uniform"), ("Karras", "karras"), ("Exponential", "exponential"),
    ("Polyexponential", "polyexponential"), ("SGM Uniform", "sgm_uniform", "SGMUniform"),
    ("KL Optimal", "kl_optimal"), ("Align Your Steps", "align_your_steps"), ("Simple", "simple"),
    ("Normal", "normal"), ("DDIM", "ddim"), ("Beta", "beta"),
)
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")  # by inpainting_fill

# --- formatting ----------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A value as A1111 prints it, except that whole floats lose their ".0" (CFG scale: 7)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    return str(value)


def quote(text: Any) -> str:
    """JSON-quote a value that would otherwise break the `k: v, k: v` line (A1111's quote, plus `"`)."""
    text = format_value(text)
    if any(c in text for c in ',:"\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    """Undo `quote`; anything that is not a valid JSON string stays as it is."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def build(
    params: Mapping[str, Any] | GenerationRequest,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    **request_kwargs: Any,
) -> str:
    """The infotext for `params` (A1111 keys in order; None values left out).

    Given a GenerationRequest instead, the params come from `params_for(request, **request_kwargs)`
    and the prompts default to the request's.
    """
    if isinstance(params, GenerationRequest):
        request = params
        params = params_for(request, **request_kwargs)
        prompt = request.prompt if prompt is None else prompt
        negative_prompt = request.negative_prompt if negative_prompt is None else negative_prompt
    elif request_kwargs:
        raise TypeError(f"build(): {', '.join(request_kwargs)} only apply when building from a GenerationRequest")
    line = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt or ''}{negative}\n{line}".strip()


def format_hashes(hashes: Mapping[str, str]) -> str:
    """`Lora hashes` / `TI hashes` value: "name: hash, name: hash" (names lose `:` and `,`)."""
    return ", ".join(f"{re.sub(r'[:,]', '', name)}: {h}" for name, h in hashes.items())


def parse_hashes(value: str) -> dict[str, str]:
    """Inverse of `format_hashes`."""
    out = {}
    for part in value.split(","):
        name, sep, h = part.partition(":")
        if sep:
            out[name.strip()] = h.strip()
    return out


# --- request → params ----------------------------------------------------------------------------


def params_for(
    request: GenerationRequest,
    *,
    seed: int,
    subseed: int | None = None,
    model_name: str | None = None,
    model_hash: str | None = None,
    vae_name: str | None = None,
    vae_hash: str | None = None,
    extra: Mapping[str, Any] | None = None,
    version: str | None = DEFAULT_VERSION,
    rng: str | None = "CPU",
) -> dict[str, Any]:
    """A1111's generation_params for one image of `request`, in A1111's key order.

    `seed`/`subseed` are this image's actual seeds. `extra` is what other parts add (Lora hashes,
    TI hashes, ENSD, Face restoration, a resolved "Schedule type", ...): a fixed key keeps its
    A1111 position, others follow the request's own keys. `rng` is "CPU" because Palette draws
    noise like A1111's "RNG: CPU" (without it A1111 would reproduce with GPU noise).
    """
    r = request
    p: dict[str, Any] = dict.fromkeys(FIXED_KEYS)
    p.update({
        "Steps": r.steps,
        "Sampler": r.sampler_name,
        "Schedule type": r.scheduler,
        "CFG scale": r.cfg_scale,
        "Seed": seed,
        "Size": f"{r.width}x{r.height}",
        "Model hash": model_hash,
        "Model": model_name,
        "VAE hash": vae_hash,
        "VAE": vae_name,
        "Variation seed": subseed if r.subseed_strength != 0 else None,
        "Variation seed strength": r.subseed_strength if r.subseed_strength != 0 else None,
        "Seed resize from": (f"{r.seed_resize_from_w}x{r.seed_resize_from_h}"
                             if r.seed_resize_from_w > 0 and r.seed_resize_from_h > 0 else None),
        "Clip skip": r.clip_skip if r.clip_skip > 1 else None,
        "RNG": rng,
    })
    if r.is_img2img:
        p["Denoising strength"] = r.denoising_strength
        if r.mask is not None or any(r.outpaint_pad):
            if r.inpainting_mask_invert:
                p["Mask mode"] = "Inpaint not masked"
            if r.mask_blur > 0:
                p["Mask blur"] = r.mask_blur
            if r.inpaint_full_res:
                p["Inpaint area"] = "Only masked"
                p["Masked area padding"] = r.inpaint_full_res_padding
            if r.inpainting_fill != 1:
                p["Masked content"] = MASKED_CONTENT[r.inpainting_fill]
            if r.soft_inpainting:  # A1111's soft inpainting extension's keys
                p["Soft inpainting enabled"] = True
                p["Soft inpainting schedule bias"] = r.soft_inpainting_schedule_bias
                p["Soft inpainting preservation strength"] = r.soft_inpainting_preservation
                p["Soft inpainting transition contrast boost"] = r.soft_inpainting_contrast
            if any(r.outpaint_pad):  # Palette's own: left right up down, in pixels
                p["Outpaint padding"] = " ".join(str(v) for v in r.outpaint_pad)
    elif r.enable_hr:
        p["Denoising strength"] = r.hr_denoising_strength
        if r.hr_sampler_name is not None and r.hr_sampler_name != r.sampler_name:
            p["Hires sampler"] = r.hr_sampler_name
        p["Hires prompt"] = r.hr_prompt if r.hr_prompt and r.hr_prompt != r.prompt else None
        p["Hires negative prompt"] = (r.hr_negative_prompt if r.hr_negative_prompt
                                      and r.hr_negative_prompt != r.negative_prompt else None)
        if r.hr_scheduler is not None and r.hr_scheduler != r.scheduler:
            p["Hires schedule type"] = r.hr_scheduler
        if r.hr_resize_x == 0 and r.hr_resize_y == 0:
            p["Hires upscale"] = r.hr_scale
        else:
            p["Hires resize"] = f"{r.hr_resize_x}x{r.hr_resize_y}"
        if r.hr_second_pass_steps:
            p["Hires steps"] = r.hr_second_pass_steps
        p["Hires upscaler"] = r.hr_upscaler
    # "Conditional mask weight" is not read from override_settings here: A1111 writes it only when the
    # model takes inpainting conditioning (a 9-channel UNet, txt2img included), so the pipeline passes
    # it in `extra` from the inpaint job; a 4-channel model never writes it, whatever the setting.
    for key, value in (extra or {}).items():
        p[key] = value
    emphasis = r.override_settings.get("emphasis")
    if emphasis is not None and emphasis != "Original" and "Emphasis" not in p:
        p["Emphasis"] = emphasis
    if r.eta is not None and "Eta" not in p and "Eta DDIM" not in p:  # `extra` knows the sampler's key
        p["Eta"] = r.eta
    p["Sigma churn"] = r.s_churn if r.s_churn != 0 else None
    p["Sigma tmin"] = r.s_tmin if r.s_tmin != 0 else None
    p["Sigma tmax"] = r.s_tmax if r.s_tmax not in (0, math.inf) else None
    if p.get("Sigma noise") is None:
        p["Sigma noise"] = r.s_noise if r.s_noise != 1.0 else None
    if r.is_img2img and r.initial_noise_multiplier != 1.0:
        p["Noise multiplier"] = r.initial_noise_multiplier
    for key in TRAILING_KEYS:  # always last, as in A1111
        value = p.pop(key, None)
        p[key] = value
    if p["Version"] is None:
        p["Version"] = version
    return {k: v for k, v in p.items() if v is not None}


def precision_value(plan: Any) -> str:
    """The `PRECISION_KEY` value for a DevicePlan-like object: "unet fp16 / text fp16 / vae bf16 / cuda", or
    with bf16 transformer blocks in an fp32 UNet (the CPU default): "unet fp32+bf16 / text fp32 / …"."""
    short = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
    name = lambda dtype: short.get(str(dtype).replace("torch.", ""), str(dtype).replace("torch.", ""))  # noqa: E731
    mixed = getattr(plan, "transformer_dtype", None)
    unet = name(plan.unet_dtype) + (f"+{name(mixed)}" if mixed is not None else "")
    return (f"unet {unet} / text {name(plan.text_dtype)} / vae {name(plan.vae_dtype)} / "
            f"{getattr(plan.device, 'type', plan.device)}")


# --- parsing ---------------------------------------------------------------------------------

# `key: value,` where value is a JSON string or runs to the next comma (A1111's re_param).
re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
re_imagesize = re.compile(r"^(\d+)x(\d+)$")

PARSE_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("Clip skip", "1"), ("Hires sampler", "Use same sampler"), ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""), ("Hires negative prompt", ""), ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"), ("Inpaint area", "Whole picture"), ("Masked area padding", 32),
)
LATE_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("RNG", "GPU"), ("Schedule type", "Automatic"), ("Schedule max sigma", 0), ("Schedule min sigma", 0),
    ("Schedule rho", 0), ("VAE Encoder", "Full"), ("VAE Decoder", "Full"), ("FP8 weight", "Disable"),
)


def split_sampler_name(name: str) -> tuple[str, str | None]:
    """"DPM++ 2M Karras" → ("DPM++ 2M", "Karras"): A1111 < 1.9 fused the schedule into the name."""
    found = None
    for label, *names in SCHEDULERS:
        for option in (label, *names):
            if name.endswith(" " + option):
                found, name = label, name[: -(len(option) + 1)]
                break
    return name, found


def _version_key(text: Any) -> tuple[int, int, int, int] | None:
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:-(\d+))?", str(text or ""))
    if not m:
        return None
    major, minor, patch, post = m.groups()
    return int(major), int(minor), int(patch or 0), int(post or 0)


def _old_first_pass(width: int, height: int) -> tuple[int, int]:
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def parse(text: str) -> dict[str, Any]:
    """A1111's parse_generation_parameters: {"Prompt", "Negative prompt", key: value, ...}.

    Values stay strings as in A1111; `WxH` values are split into `key-1`/`key-2`; A1111's defaults
    are filled in (e.g. "Clip skip": "1", "RNG": "GPU", "Schedule type": "Automatic"); old fused
    sampler names are split into Sampler + Schedule type; old "First pass size" hires infotexts
    and old versions' compatibility flags are handled as A1111 does.
    """
    res: dict[str, Any] = {}
    prompt, negative, in_negative = "", "", False
    *lines, last = text.strip().split("\n")
    if len(re_param.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[16:].strip()
        if in_negative:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative

    for key, value in re_param.findall(last):
        if value[:1] == '"' and value[-1:] == '"':
            value = unquote(value)
        m = re_imagesize.match(value)
        if m is not None:
            res[f"{key}-1"], res[f"{key}-2"] = m.group(1), m.group(2)
        else:
            res[key] = value

    for key, default in PARSE_DEFAULTS[:1]:
        res.setdefault(key, default)
    if "Hypernet" in res:
        res["Prompt"] += f"<hypernet:{res['Hypernet']}:{res.get('Hypernet strength', '1.0')}>"
    if "Hires resize-1" not in res:
        res["Hires resize-1"] = 0
        res["Hires resize-2"] = 0
    for key, default in PARSE_DEFAULTS[1:]:
        res.setdefault(key, default)
    _restore_old_hires(res)
    for key, default in LATE_DEFAULTS:
        res.setdefault(key, default)
    if res["FP8 weight"] != "Disable":
        res.setdefault("Cache FP16 weight for LoRA", False)

    if "Sampler" in res:
        sampler, schedule = split_sampler_name(res["Sampler"])
        if schedule is not None:  # as in A1111, the name's suffix wins over a Schedule type key
            res["Sampler"], res["Schedule type"] = sampler, schedule
    if res.get("Hires sampler") not in (None, "Use same sampler"):
        sampler, schedule = split_sampler_name(res["Hires sampler"])
        if schedule is not None:
            res["Hires sampler"] = sampler
            res.setdefault("Hires schedule type", schedule)
    _backcompat(res)
    return res


def _restore_old_hires(res: dict[str, Any]) -> None:
    """Infotexts from before A1111 1.0 gave the final size plus a "First pass size"."""
    first_w, first_h = res.get("First pass size-1"), res.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    first_w, first_h = int(first_w), int(first_h)
    width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))
    if first_w == 0 or first_h == 0:
        first_w, first_h = _old_first_pass(width, height)
    res["Size-1"], res["Size-2"] = first_w, first_h
    res["Hires resize-1"], res["Hires resize-2"] = width, height


def _backcompat(res: dict[str, Any]) -> None:
    """A1111's infotext_versions.backcompat: flags that make old images reproduce."""
    version = _version_key(res.get("Version"))
    if version is None:
        return
    if version < (1, 6, 0, 0) and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = True
    if version < (1, 6, 0, 0) and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if version < (1, 7, 0, 225):
        res["Downcast alphas_cumprod"] = True


# --- params → request ------------------------------------------------------------------------


def _pair(params: Mapping[str, Any], key: str) -> tuple[int, int] | None:
    """A `WxH` value, whether parsed (key-1/key-2) or as built (one "WxH" string)."""
    if f"{key}-1" in params:
        return int(params[f"{key}-1"]), int(params[f"{key}-2"])
    value = params.get(key)
    if value is None:
        return None
    m = re_imagesize.match(str(value))
    if m is None:
        raise ValueError(f"infotext {key}: {value!r} is not WIDTHxHEIGHT")
    return int(m.group(1)), int(m.group(2))


def _float(value: Any) -> float:
    return float(value)


def _int(value: Any) -> int:
    return int(float(value)) if isinstance(value, str) and "." in value else int(value)


def request_from_params(params: Mapping[str, Any], base: GenerationRequest | None = None) -> GenerationRequest:
    """A GenerationRequest carrying everything `params` says; the rest comes from `base`.

    Accepts `parse()` output or `params_for()` output. Whether "Denoising strength" is the
    img2img or the hires strength follows `base` (img2img when it has init images) and the
    presence of Hires keys, like A1111's paste buttons.
    """
    base = base or GenerationRequest()
    c: dict[str, Any] = {}
    g = params.get
    if "Prompt" in params:
        c["prompt"] = g("Prompt")
    if "Negative prompt" in params:
        c["negative_prompt"] = g("Negative prompt")
    if "Steps" in params:
        c["steps"] = _int(g("Steps"))
    if "Sampler" in params:
        sampler, schedule = split_sampler_name(str(g("Sampler")))
        c["sampler_name"] = sampler
        if schedule is not None:
            c["scheduler"] = schedule
    if "Schedule type" in params and "scheduler" not in c:
        c["scheduler"] = g("Schedule type")
    if "CFG scale" in params:
        c["cfg_scale"] = _float(g("CFG scale"))
    if "Seed" in params:
        c["seed"] = _int(g("Seed"))
    size = _pair(params, "Size")
    if size:
        c["width"], c["height"] = size
    if "Variation seed strength" in params:
        c["subseed_strength"] = _float(g("Variation seed strength"))
        if "Variation seed" in params:
            c["subseed"] = _int(g("Variation seed"))
    seed_resize = _pair(params, "Seed resize from")
    if seed_resize:
        c["seed_resize_from_w"], c["seed_resize_from_h"] = seed_resize
    c["clip_skip"] = _int(g("Clip skip", 1))
    if "Model" in params:
        c["checkpoint"] = g("Model")
    elif "Model hash" in params:
        c["checkpoint"] = g("Model hash")
    if "VAE" in params:
        c["vae"] = g("VAE")
    if "Eta" in params or "Eta DDIM" in params:  # A1111: "Eta DDIM" for DDIM/PLMS/UniPC, else "Eta"
        c["eta"] = _float(g("Eta") if "Eta" in params else g("Eta DDIM"))
    for key, name in (("Sigma churn", "s_churn"), ("Sigma tmin", "s_tmin"), ("Sigma tmax", "s_tmax"),
                      ("Sigma noise", "s_noise")):
        if key in params:
            c[name] = _float(g(key))
    if "Emphasis" in params:
        c["override_settings"] = {**base.override_settings, "emphasis": g("Emphasis")}
    if "Conditional mask weight" in params:  # A1111 maps it to the inpainting_mask_weight setting
        c["override_settings"] = {**c.get("override_settings", base.override_settings),
                                  "inpainting_mask_weight": _float(g("Conditional mask weight"))}

    hires_resize = _pair(params, "Hires resize") or (0, 0)
    hires = any(k in params for k in ("Hires upscale", "Hires upscaler", "Hires steps")) or hires_resize != (0, 0)
    if base.is_img2img:
        if "Denoising strength" in params:
            c["denoising_strength"] = _float(g("Denoising strength"))
        _inpaint_fields(params, base, c)
    elif "Denoising strength" in params and hires:
        c["enable_hr"] = True
        c["hr_denoising_strength"] = _float(g("Denoising strength"))
        c["hr_resize_x"], c["hr_resize_y"] = hires_resize
        if "Hires upscale" in params:
            c["hr_scale"] = _float(g("Hires upscale"))
        if "Hires upscaler" in params:
            c["hr_upscaler"] = g("Hires upscaler")
        c["hr_second_pass_steps"] = _int(g("Hires steps", 0))
        hr_sampler = g("Hires sampler", "Use same sampler")
        c["hr_sampler_name"] = None if hr_sampler == "Use same sampler" else hr_sampler
        hr_schedule = g("Hires schedule type", "Use same scheduler")
        c["hr_scheduler"] = None if hr_schedule == "Use same scheduler" else hr_schedule
        if c["hr_sampler_name"] is not None:
            name, schedule = split_sampler_name(c["hr_sampler_name"])
            c["hr_sampler_name"] = name
            if schedule is not None and c["hr_scheduler"] is None:
                c["hr_scheduler"] = schedule
        c["hr_prompt"] = g("Hires prompt", "") or ""
        c["hr_negative_prompt"] = g("Hires negative prompt", "") or ""
    elif "Denoising strength" in params:
        c["denoising_strength"] = _float(g("Denoising strength"))
    return base.replace(**c)


def _inpaint_fields(params: Mapping[str, Any], base: GenerationRequest, c: dict[str, Any]) -> None:
    g = params.get
    if "Mask blur" in params:
        c["mask_blur"] = _int(g("Mask blur"))
    if "Mask mode" in params:
        c["inpainting_mask_invert"] = 1 if g("Mask mode") == "Inpaint not masked" else 0
    if "Masked content" in params:
        content = g("Masked content")
        if content not in MASKED_CONTENT:
            raise ValueError(f"infotext Masked content: {content!r} is not one of {', '.join(MASKED_CONTENT)}")
        c["inpainting_fill"] = MASKED_CONTENT.index(content)
    if "Inpaint area" in params:
        c["inpaint_full_res"] = g("Inpaint area") == "Only masked"
    if "Masked area padding" in params:
        c["inpaint_full_res_padding"] = _int(g("Masked area padding"))
    if "Noise multiplier" in params:
        c["initial_noise_multiplier"] = _float(g("Noise multiplier"))
    if str(g("Soft inpainting enabled", "")).lower() == "true":
        c["soft_inpainting"] = True
        for key, name in (("Soft inpainting schedule bias", "soft_inpainting_schedule_bias"),
                          ("Soft inpainting preservation strength", "soft_inpainting_preservation"),
                          ("Soft inpainting transition contrast boost", "soft_inpainting_contrast")):
            if key in params:
                c[name] = _float(g(key))
    if "Outpaint padding" in params:
        parts = str(g("Outpaint padding")).split()
        if len(parts) != 4:
            raise ValueError(f"infotext Outpaint padding: {g('Outpaint padding')!r} is not four numbers")
        c["outpaint_pad"] = tuple(_int(v) for v in parts)


def request_from_infotext(text: str, base: GenerationRequest | None = None) -> GenerationRequest:
    """`request_from_params(parse(text), base)`: what "Send to txt2img" does with pasted text."""
    return request_from_params(parse(text), base)


# --- images ----------------------------------------------------------------------------------

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
_UNICODE = b"UNICODE\x00"
_ASCII = b"ASCII\x00\x00\x00"
_JIS = b"JIS\x00\x00\x00\x00\x00"


def write_image(image: Image.Image, fp: Any, **params: Any) -> None:
    """`image.save(fp, **params)` that leaves `image` untouched. PIL keeps a save's options on the image
    object (`encoderinfo`), and a save still in flight on another thread wins over a new one's: Gradio
    encoding a just-decoded picture for the gallery (with its own empty `pnginfo`) while the worker wrote
    it to outputs dropped the file's `parameters` chunk. Saving a copy gives each save its own options."""
    image.copy().save(fp, **params)


def embed_in_png(text: str, existing: Mapping[str, Any] | None = None) -> PngImagePlugin.PngInfo:
    """A PngInfo with `parameters` = text (iTXt when not Latin-1), after any `existing` chunks."""
    info = PngImagePlugin.PngInfo()
    for key, value in {**(existing or {}), "parameters": text}.items():
        info.add_text(key, str(value))
    return info


def user_comment(text: str) -> bytes:
    """EXIF UserComment bytes as piexif writes them for A1111: "UNICODE\\0" + UTF-16BE."""
    return _UNICODE + text.encode("utf-16-be", errors="replace")


def exif_with_infotext(text: str) -> Image.Exif:
    """An Exif block whose Exif IFD holds the infotext as UserComment."""
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = user_comment(text)
    return exif


def save_with_infotext(image: Image.Image, path: str | Path, text: str | None, *, quality: int = 80,
                       lossless: bool = False) -> Path:
    """Save `image` with its infotext where A1111 puts it: PNG chunk, or EXIF for JPEG/WEBP."""
    path = Path(path)
    ext = path.suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt == "PNG":
        write_image(image, path, format="PNG", pnginfo=embed_in_png(text) if text is not None else None)
    elif fmt in ("JPEG", "WEBP"):
        if fmt == "JPEG" and image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        kwargs: dict[str, Any] = {"quality": quality}
        if fmt == "WEBP":
            kwargs["lossless"] = lossless
        if text is not None:
            kwargs["exif"] = exif_with_infotext(text)
        write_image(image, path, format=fmt, **kwargs)
    else:
        raise ValueError(f"cannot store generation parameters in {path.name!r}: use .png, .jpg or .webp")
    return path


def decode_user_comment(data: bytes | str) -> str:
    """UserComment bytes → text, for every prefix piexif knows (UTF-16 byte order guessed if odd)."""
    if isinstance(data, str):
        return data
    prefix, body = data[:8], data[8:]
    if prefix == _UNICODE:
        even_zeros = body[0::2].count(0)
        odd_zeros = body[1::2].count(0)
        return body.decode("utf-16-le" if odd_zeros > even_zeros else "utf-16-be", errors="replace")
    if prefix == _ASCII:
        return body.decode("ascii", errors="replace")
    if prefix == _JIS:
        return body.decode("shift_jis", errors="replace")
    if prefix == b"\x00" * 8:
        return body.decode("utf-8", errors="ignore").rstrip("\x00")
    return data.decode("utf-8", errors="ignore")


def read_infotext(image: Image.Image) -> str | None:
    """The infotext of an image: the PNG `parameters` chunk, or EXIF UserComment (which wins)."""
    text = (image.info or {}).get("parameters")
    try:
        comment = image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    except Exception:  # a broken EXIF block must not hide a PNG chunk
        comment = None
    if comment:
        decoded = decode_user_comment(comment)
        if decoded:
            text = decoded
    return text
