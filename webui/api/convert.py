"""A1111 payloads ⇄ Palette's GenerationRequest / Result.

This is the only code that knows both A1111's API names and Palette's dataclass fields; every value
is checked here or by `modules.validation` before a job is queued, and reported by field name.
"""
from __future__ import annotations

import time
from dataclasses import MISSING, fields
from typing import Any

from modules.config import Settings
from modules.types import GenerationRequest, Result
from modules.sd_upscale import is_script as is_sd_upscale
from modules.validation import RequestError
from webui.api.context import ApiContext, JobMeta, jsonable
from webui.api.images import decode_image, encode_png
from webui.api.models import GenerationFields

MAX_INIT_IMAGES = 64
SAME_SAMPLER = ("", "Use same sampler")
SAME_SCHEDULER = ("", "Use same scheduler")
_SETTINGS = {f.name: f for f in fields(Settings)}


def coerce_option(key: str, value: Any, where: str | None) -> Any:
    """One settings value, typed like its default and within its choices/range (422 names `where`,
    or the option itself when the body is the options dict)."""
    f = _SETTINGS[key]
    default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
    kind = type(default)

    def bad(message: str) -> RequestError:
        return RequestError(where or key, f"{key} {message}")

    if kind is bool:
        if not isinstance(value, bool):
            raise bad(f"must be true or false, got {value!r}")
    elif kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad(f"must be a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise bad(f"must be a number, got {value!r}") from None
        if kind is int and not number.is_integer():
            raise bad(f"must be an integer, got {value!r}")
        value = int(number) if kind is int else number
        lo, hi = f.metadata.get("minimum"), f.metadata.get("maximum")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise bad(f"must be between {lo} and {hi}, got {value}")
    elif not isinstance(value, kind):
        raise bad(f"must be a {kind.__name__}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise bad(f"must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def split_options(values: dict[str, Any], where: str | None) -> tuple[dict[str, Any], list[str]]:
    """(known options, coerced; names of unknown ones, which A1111 clients send and we ignore)."""
    known, unknown = {}, []
    for key, value in values.items():
        if key in _SETTINGS:
            known[key] = coerce_option(key, value, where)
        else:
            unknown.append(key)
    return known, unknown


def _schedule(value: str | None, field_name: str, same: tuple[str, ...] = ()) -> str | None:
    from modules.sampling.schedules import resolve_schedule_name

    if value is None or value in same:
        return None
    try:
        return resolve_schedule_name(value)
    except ValueError as exc:
        raise RequestError(field_name, str(exc)) from None


def _notes(body: Any) -> list[str]:
    """What was accepted but has no effect yet, said plainly in `info`."""
    notes = []
    ignored = [str(k) for k in (body.alwayson_scripts or {}) if str(k).lower() != "soft inpainting"]
    if ignored:
        notes.append(f"alwayson_scripts ignored ({', '.join(ignored)}): "
                     "no feature in Palette owns these scripts yet")
    if body.script_name and not (getattr(body, "init_images", None) and is_sd_upscale(body.script_name)):
        notes.append(f"script_name {body.script_name!r} ignored: scripts are not supported yet")
    if body.tiling:
        notes.append("tiling ignored: not supported yet")
    for name in ("refiner_checkpoint", "hr_checkpoint_name"):
        value = getattr(body, name, None)
        if value and value not in ("None", "Use same checkpoint"):
            notes.append(f"{name} ignored: refiner / hires checkpoints are not supported yet")
    return notes


def to_request(ctx: ApiContext, body: GenerationFields, *, img2img: bool) -> tuple[GenerationRequest, JobMeta]:
    """Validate and convert a txt2img / img2img / job payload (runs in a worker thread)."""
    notes = _notes(body)
    overrides, unknown = split_options(dict(body.override_settings or {}), "override_settings")
    if unknown:
        notes.append(f"override_settings ignored (unknown options): {', '.join(unknown)}")
    checkpoint = None
    wanted = overrides.pop("sd_model_checkpoint", None)
    if wanted:
        try:
            checkpoint = ctx.engine.find_checkpoint(wanted).name
        except FileNotFoundError as exc:
            raise RequestError("override_settings", f"sd_model_checkpoint: {exc}") from None
    if overrides and not body.override_settings_restore_afterwards:
        notes.append("override_settings_restore_afterwards=false keeps only sd_model_checkpoint; "
                     f"{', '.join(overrides)} applied to this job only")
    prompt, negative = body.prompt, body.negative_prompt
    if body.styles:
        prompt, negative = ctx.styles.apply(list(body.styles), prompt, negative)
    values: dict[str, Any] = dict(
        prompt=prompt, negative_prompt=negative, steps=body.steps,
        sampler_name=body.sampler_name or body.sampler_index or "Euler",
        scheduler=_schedule(body.scheduler, "scheduler") or "Automatic",
        cfg_scale=body.cfg_scale, width=body.width, height=body.height, seed=body.seed, subseed=body.subseed,
        subseed_strength=body.subseed_strength, seed_resize_from_w=max(body.seed_resize_from_w, 0),
        seed_resize_from_h=max(body.seed_resize_from_h, 0), batch_size=body.batch_size, n_iter=body.n_iter,
        eta=body.eta, s_churn=body.s_churn or 0.0, s_tmin=body.s_tmin or 0.0,
        s_tmax=body.s_tmax or float("inf"), s_noise=1.0 if body.s_noise is None else body.s_noise,
        checkpoint=checkpoint, override_settings=overrides, styles=tuple(body.styles or ()),
        restore_faces=body.restore_faces,
        do_not_save=(not body.save_images) or body.do_not_save_samples,
    )
    if not img2img and hasattr(body, "enable_hr"):
        values.update(
            enable_hr=body.enable_hr, hr_scale=body.hr_scale, hr_upscaler=body.hr_upscaler or "Latent",
            hr_second_pass_steps=body.hr_second_pass_steps, hr_resize_x=body.hr_resize_x,
            hr_resize_y=body.hr_resize_y, hr_prompt=body.hr_prompt, hr_negative_prompt=body.hr_negative_prompt,
            hr_denoising_strength=0.7 if body.denoising_strength is None else body.denoising_strength,
            hr_sampler_name=None if body.hr_sampler_name in (None, *SAME_SAMPLER) else body.hr_sampler_name,
            hr_scheduler=_schedule(body.hr_scheduler, "hr_scheduler", SAME_SCHEDULER),
        )
    if img2img:
        values.update(_img2img_values(body))
    request = GenerationRequest(**values)
    ctx.engine.validate(request)
    restore = checkpoint is not None and body.override_settings_restore_afterwards
    return request, JobMeta(echo(body), notes, restore_checkpoint=restore)


def _img2img_values(body: Any) -> dict[str, Any]:
    images = body.init_images or []
    if not images:
        raise RequestError("init_images", "img2img needs at least one image (base64 or a data: URL)")
    if len(images) > MAX_INIT_IMAGES:
        raise RequestError("init_images", f"{len(images)} images sent; the limit is {MAX_INIT_IMAGES}")
    decoded = []
    for index, text in enumerate(images):
        try:
            decoded.append(decode_image(text, "init_images").convert("RGB"))
        except RequestError as exc:
            raise RequestError("init_images", f"image {index + 1}: {exc.message}") from None
    mask = decode_image(body.mask, "mask").convert("L") if body.mask else None
    strength = 0.75 if body.denoising_strength is None else body.denoising_strength
    return dict(
        init_images=tuple(decoded), denoising_strength=strength, resize_mode=body.resize_mode, mask=mask,
        mask_blur=body.mask_blur if body.mask_blur is not None else body.mask_blur_x,
        inpainting_fill=body.inpainting_fill, inpaint_full_res=body.inpaint_full_res,
        inpaint_full_res_padding=body.inpaint_full_res_padding, inpainting_mask_invert=body.inpainting_mask_invert,
        initial_noise_multiplier=1.0 if body.initial_noise_multiplier is None else body.initial_noise_multiplier,
        outpaint_pad=tuple(body.outpaint_pad) if body.outpaint_pad else (0, 0, 0, 0),
        **_soft_inpainting(body.alwayson_scripts),
    )


def _soft_inpainting(scripts: Any) -> dict[str, Any]:
    """A1111 clients turn soft inpainting on as the always-on script "soft inpainting" with args
    [enabled, schedule bias, preservation strength, transition contrast boost, …]."""
    entry = next((v for k, v in dict(scripts or {}).items() if str(k).lower() == "soft inpainting"), None)
    args = list(entry.get("args") or []) if isinstance(entry, dict) else []
    if not args or args[0] is not True:
        return {}
    names = ("soft_inpainting_schedule_bias", "soft_inpainting_preservation", "soft_inpainting_contrast")
    return {"soft_inpainting": True, **{n: float(v) for n, v in zip(names, args[1:4]) if isinstance(v, (int, float))}}


def echo(body: Any) -> dict[str, Any]:
    """The request as A1111 echoes it in `parameters` (input images only with include_init_images)."""
    data = body.model_dump()
    if "init_images" in data and not data.get("include_init_images"):
        data["init_images"] = None
        data["mask"] = None
    return jsonable(data)  # NaN/Infinity (which Python's JSON parser accepts) cannot go back out


def build_info(ctx: ApiContext, request: GenerationRequest, result: Result | None, meta: JobMeta | None,
               *, cancelled: bool = False) -> dict[str, Any]:
    """A1111's `info` keys from the request and Result, then the engine's own Result.info on top."""
    seeds = list(result.seeds) if result else []
    subseeds = list(result.subseeds) if result else []
    count = len(result.images) if result else 0
    current = ctx.engine.current_checkpoint
    info: dict[str, Any] = {
        "prompt": request.prompt, "all_prompts": list(result.prompts) if result and result.prompts else [request.prompt] * count,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": list(result.negative_prompts) if result and result.negative_prompts
        else [request.negative_prompt] * count,
        "seed": seeds[0] if seeds else request.seed, "all_seeds": seeds,
        "subseed": subseeds[0] if subseeds else request.subseed, "all_subseeds": subseeds,
        "subseed_strength": request.subseed_strength, "width": request.width, "height": request.height,
        "sampler_name": request.sampler_name, "scheduler": request.scheduler, "cfg_scale": request.cfg_scale,
        "steps": request.steps, "batch_size": request.batch_size, "restore_faces": False,
        "face_restoration_model": None, "sd_model_name": current.model_name if current else None,
        "sd_model_hash": current.short_hash if current else None, "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": request.seed_resize_from_w or -1, "seed_resize_from_h": request.seed_resize_from_h or -1,
        "denoising_strength": request.denoising_strength if request.is_img2img else
        (request.hr_denoising_strength if request.enable_hr else None),
        "extra_generation_params": {}, "index_of_first_image": 0,
        "infotexts": list(result.infotexts) if result else [], "styles": list(request.styles),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": False, "version": "Palette",
    }
    info.update(dict(result.info) if result else {})
    if result is not None and result.interrupted:
        info["interrupted"] = True
    if cancelled:
        info["cancelled"] = True
    if meta and meta.notes:
        info["notes"] = list(meta.notes)
    return info


def encode_result(result: Result | None) -> list[str]:
    """Each image as a base64 PNG carrying its own infotext (runs in a worker thread)."""
    if result is None:
        return []
    texts = list(result.infotexts) + [None] * (len(result.images) - len(result.infotexts))
    return [encode_png(image, text) for image, text in zip(result.images, texts)]
