"""The stage sequence: txt2img, img2img and hires fix are modes of one function, not classes.

request → validate → seeds → prompts planned and encoded once per distinct text → for each batch:
noise from the seeds (CPU, A1111-identical) → (img2img: init latents + noise·σ at the start of the
schedule's tail) → sampler → (hires: upscale, second pass) → VAE decode → infotext → saved files.
Inpainting is img2img plus `modules.inpaint`: its job supplies the init latents, c_concat and the
per-step latent mask (a post_cfg hook) for each batch, and composites the decoded picture.
Everything a job needs arrives in its arguments; nothing here keeps state between jobs.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modules import infotext, inpaint, networks, outputs
from modules.checkpoints import ModelBundle
from modules.conditioning import EncodedPlan, EncodeOptions, encode_prompts
from modules.config import Settings
from modules.guidance import GuidedDenoiser, NetworkAdapter
from modules.prompts import parse_extra_networks_batch
from modules.sampling import noise as noise_mod
from modules.sampling.denoiser import DiscreteSchedule
from modules.sampling.samplers import (
    SamplerInfo, img2img_sigmas, infotext_fields, plan_kwargs, progress_total, resolve_sampler_name, resolve_scheduler,
    sampler_table, sigmas_for,
)
from modules.text_encoding import AdmParams
from modules.types import GenerationRequest, ProgressEvent, Result
from modules.validation import LATENT_UPSCALE_MODES, RequestError, validate_request
from modules.vae import cheap_preview

log = logging.getLogger(__name__)
VERSION = "Palette 0.1"


class _Interrupted(Exception):
    pass


class _Skipped(Exception):
    pass


@dataclass(frozen=True)
class PassPlan:
    """One sampling pass: which sampler, schedule and sigmas."""

    sampler: SamplerInfo
    scheduler: str
    steps: int  # the steps the user asked for (infotext)
    sigmas: torch.Tensor  # the part of the schedule this pass runs, ending in 0
    full_sigmas: torch.Tensor | None = None  # the whole schedule it was cut from
    table: DiscreteSchedule | None = None  # the noise table the pass samples on (LCM: its own)
    img2img: bool = False  # the start latent is a noised image (img2img, hires)


def resolve_sampler(name: str, scheduler: str | None) -> tuple[SamplerInfo, str]:
    """Sampler label/alias/fused name ("DPM++ 2M Karras") + schedule label → (SamplerInfo, schedule).
    An explicit schedule wins over one fused into the sampler name."""
    info, fused_schedule = resolve_sampler_name(name)
    if scheduler in (None, "", "Automatic") and fused_schedule:
        scheduler = fused_schedule
    return info, resolve_scheduler(info, scheduler)


def schedule_steps(info: SamplerInfo, steps: int) -> int:
    """The length, in denoiser calls, of the prompt-editing schedule (A1111's `total_steps`): the
    requested steps, doubled for second-order samplers; never the steps a pass really runs. img2img
    (denoise < 1) and hires passes run a shorter tail whose calls count from 0, so `[a:b:0.5]` there
    switches after half of the *requested* steps' calls (often never), as in A1111. DDIM with 30 steps
    visits 31 timesteps; its schedule is still 30 long."""
    return steps * (2 if info.second_order else 1)


def plan_pass(schedule: DiscreteSchedule, sampler: str, scheduler: str | None, steps: int,
              denoise: float | None) -> PassPlan:
    """txt2img: the whole schedule. img2img (A1111, without "img2img_fix_steps"): the tail of the
    `steps`-step schedule that starts int(denoise·steps) steps before the end."""
    info, label = resolve_sampler(sampler, scheduler)
    table = sampler_table(info, schedule)
    sigmas = sigmas_for(info, label, table, steps)
    if denoise is None:
        return PassPlan(info, label, steps, sigmas, sigmas, table)
    t_enc = int(min(denoise, 0.999) * steps)
    return PassPlan(info, label, steps, img2img_sigmas(info, sigmas, steps, t_enc), sigmas, table, True)


def plan_hires_pass(schedule: DiscreteSchedule, sampler: str, scheduler: str | None, steps: int,
                    denoise: float) -> PassPlan:
    """A1111's hires pass runs exactly `steps` steps, taken from the end of a longer schedule."""
    info, label = resolve_sampler(sampler, scheduler)
    total = max(int(steps / min(denoise, 0.999)), steps) if denoise > 0 else steps
    t_enc = steps - 1
    table = sampler_table(info, schedule)
    sigmas = sigmas_for(info, label, table, total)
    return PassPlan(info, label, steps, img2img_sigmas(info, sigmas, total, t_enc), sigmas, table, True)


# ---- images ------------------------------------------------------------------------------------------

def pil_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's resize modes 0 (just resize), 1 (crop and resize), 2 (resize and fill)."""
    image = image.convert("RGB")
    if mode == 0 or mode == 3:
        return image.resize((width, height), Image.LANCZOS)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == 1:
        w = width if ratio > src_ratio else image.width * height // image.height
        h = height if ratio <= src_ratio else image.height * width // image.width
        resized = image.resize((w, h), Image.LANCZOS)
        out = Image.new("RGB", (width, height))
        out.paste(resized, (width // 2 - w // 2, height // 2 - h // 2))
        return out
    w = width if ratio < src_ratio else image.width * height // image.height
    h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((w, h), Image.LANCZOS)
    out = Image.new("RGB", (width, height))
    out.paste(resized, (width // 2 - w // 2, height // 2 - h // 2))
    if ratio < src_ratio:  # bands above and below: stretch the first and last rows
        fill = height // 2 - h // 2
        if fill > 0:
            out.paste(resized.resize((width, fill), box=(0, 0, width, 0)), (0, 0))
            out.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)), (0, fill + h))
    elif ratio > src_ratio:  # bands left and right
        fill = width // 2 - w // 2
        if fill > 0:
            out.paste(resized.resize((fill, height), box=(0, 0, 0, height)), (0, 0))
            out.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)), (fill + w, 0))
    return out


def upscale_latents(latents: torch.Tensor, mode: str, height: int, width: int) -> torch.Tensor:
    """A1111's latent upscale modes."""
    size = (height // 8, width // 8)
    table = {
        "Latent": ("bilinear", False),
        "Latent (antialiased)": ("bilinear", True),
        "Latent (bicubic)": ("bicubic", False),
        "Latent (bicubic antialiased)": ("bicubic", True),
        "Latent (nearest)": ("nearest", False),
        "Latent (nearest-exact)": ("nearest-exact", False),
    }
    interp, antialias = table[mode]
    if interp.startswith("nearest"):
        return F.interpolate(latents, size=size, mode=interp)
    return F.interpolate(latents, size=size, mode=interp, antialias=antialias, align_corners=False)


# ---- the job ------------------------------------------------------------------------------------------

def _seeds(request: GenerationRequest) -> tuple[list[int], list[int]]:
    total = request.batch_size * request.n_iter
    seed = request.seed if request.seed != -1 else noise_mod.random_seed()
    subseed = request.subseed if request.subseed != -1 else noise_mod.random_seed()
    return [seed + i for i in range(total)], [subseed + i for i in range(total)]


def _adm(bundle: ModelBundle, width: int, height: int) -> AdmParams | None:
    if bundle.family.adm is None:
        return None
    return AdmParams(width=width, height=height, crop_top=0, crop_left=0, target_width=width, target_height=height)


def _hires_size(request: GenerationRequest) -> tuple[int, int]:
    if request.hr_resize_x or request.hr_resize_y:
        w = request.hr_resize_x or request.hr_resize_y * request.width // request.height
        h = request.hr_resize_y or request.hr_resize_x * request.height // request.width
        return w // 8 * 8, h // 8 * 8
    return int(request.width * request.hr_scale) // 8 * 8, int(request.height * request.hr_scale) // 8 * 8


class _Run:
    """Runs sampling passes for one job; reports progress and honours the cancel token."""

    def __init__(self, bundle: ModelBundle, settings: Settings, request: GenerationRequest, progress, cancel) -> None:
        self.bundle = bundle
        self.settings = settings
        self.request = request
        self.progress = progress
        self.cancel = cancel
        self.schedule = DiscreteSchedule.sd_default(family="sdxl" if bundle.family.adm else "sd1")
        self.job_index = 0
        self.job_count = request.n_iter
        self.first_pass_calls = 0
        self.vae = bundle.vae
        self.networks: Any = None  # networks.JobNetworks of the job
        self.started = time.monotonic()
        self.masking: inpaint.Batch | None = None  # inpaint: c_concat and the per-step latent mask

    def sample(self, plan: PassPlan, x: torch.Tensor, positive: EncodedPlan, negative: EncodedPlan,
               seeds: list[int], rng: Any, first_pass: bool) -> torch.Tensor:
        table = plan.table if plan.table is not None else self.schedule
        network = NetworkAdapter(
            self.bundle.unet.model, table.sigma_to_t, self.bundle.detection.prediction,
            dtype=self.bundle.plan.unet_dtype, device=self.bundle.plan.device,
            extra_channels=self.masking.image_cond(x) if self.masking is not None else None,
        )
        denoiser = GuidedDenoiser(network, positive, negative, self.request.cfg_scale * plan.sampler.cfg_scale_multiplier,
                                  post_cfg=tuple(self.bundle.unet.get_hooks("post_cfg"))
                                  + (self.masking.post_cfg if self.masking is not None else ()),
                                  always_uncond=plan.sampler.needs_uncond)
        total = progress_total(plan.sampler, plan.sigmas, img2img=plan.img2img)  # = the callbacks it makes
        every = self.settings.live_preview_every

        def callback(info: dict) -> None:
            step = int(info["i"]) + 1
            preview = None
            if self.progress is not None:
                if every and (step % every == 0 or step == total):
                    preview = tensor_to_pil(cheap_preview(info["denoised"], self.bundle.family.name))[0]
                self.progress(ProgressEvent(step, total, self.job_index, self.job_count, info["denoised"], preview))
            if self.cancel.interrupted.is_set():
                raise _Interrupted(info["denoised"])
            if self.cancel.skipped.is_set():
                raise _Skipped()

        kwargs = {**sampler_kwargs(plan.sampler, self.request, self.settings),
                  **plan_kwargs(plan.sampler, table, img2img=plan.img2img)}
        # A1111 sizes the Brownian tree on the full schedule, also for img2img's tail
        noise_sampler = rng.noise_sampler(plan.sampler, x, plan.sigmas, seeds, tree_sigmas=plan.full_sigmas)
        return plan.sampler.fn(denoiser, x, plan.sigmas, extra_args={}, callback=callback,
                               noise_sampler=noise_sampler, **kwargs)


def sampler_kwargs(info: SamplerInfo, request: GenerationRequest, settings: Settings) -> dict[str, Any]:
    """Per-sampler options the sampler function accepts (eta, s_noise, churn)."""
    accepted = info.options
    out: dict[str, Any] = dict(info.defaults)
    if "eta" in accepted:
        default = settings.eta_ddim if info.label.startswith("DDIM") else settings.eta_ancestral
        out["eta"] = request.eta if request.eta is not None else default
    if "s_noise" in accepted:
        out["s_noise"] = request.s_noise if request.s_noise != 1.0 else settings.s_noise
    if "s_churn" in accepted:
        out.update(s_churn=request.s_churn, s_tmin=request.s_tmin, s_tmax=request.s_tmax)
    return out


def generate(
    engine: Any,
    bundle: ModelBundle,
    request: GenerationRequest,
    *,
    settings: Settings,
    checkpoint: Any,
    progress: Callable[[ProgressEvent], None] | None,
    cancel: Any,
) -> Result:
    """Run a txt2img / img2img (+ hires fix) job; see the module docstring."""
    validate_request(request, upscalers=engine.hr_upscaler_names() if engine is not None else None)
    if bundle.detection.variant not in ("", "inpaint"):
        raise RequestError("checkpoint", f"{bundle.detection.label} checkpoints are not supported yet; "
                                         "use a normal or an inpainting checkpoint")
    restorer = engine.face_restorer_for(request, settings) if engine is not None else None
    prompts_clean, _ = parse_extra_networks_batch([request.prompt])
    nets = networks.prepare_job(getattr(engine, "networks", None), bundle, request)  # LoRAs, embeddings
    bundle = nets.bundle
    prompt = prompts_clean[0]
    negative = request.negative_prompt
    all_seeds, all_subseeds = _seeds(request)
    vae, vae_path = engine.vae_for(bundle, request.vae or settings.sd_vae) if engine is not None else (bundle.vae, None)
    run = _Run(bundle, settings, request, progress, cancel)
    run.vae = vae
    run.networks = nets
    options = EncodeOptions(
        clip_skip=request.clip_skip if request.clip_skip != 1 else settings.CLIP_stop_at_last_layers,
        emphasis=settings.emphasis,
        comma_padding_backtrack=settings.comma_padding_backtrack,
        embeddings=nets.embeddings,
        adm=_adm(bundle, request.width, request.height),
    )
    first = plan_pass(run.schedule, request.sampler_name, request.scheduler, request.steps,
                      request.denoising_strength if request.is_img2img else None)
    calls = schedule_steps(first.sampler, request.steps)
    run.first_pass_calls = calls
    with nets.text_applied():
        pos = encode_prompts(bundle.text, [prompt], calls, options)
        neg = encode_prompts(bundle.text, [negative], calls, options, negative=True)

    masked = inpaint.prepare(request, vae, mask_weight=settings.inpainting_mask_weight,
                             concat=bundle.detection.variant == "inpaint")
    init_latents = masked.init_latents if masked is not None else None
    if init_latents is None and request.is_img2img:
        mode = request.resize_mode
        pictures = [resize_image(mode, im, request.width, request.height) if mode != 3 else im for im in request.init_images]
        latents = vae.encode(pil_to_tensor(pictures))
        if mode == 3:
            latents = upscale_latents(latents, "Latent", request.height, request.width)
        init_latents = latents

    images, infotexts, seeds_out, subseeds_out, paths = [], [], [], [], []
    interrupted = False
    latent_shape = (bundle.family.latent_channels, request.height // 8, request.width // 8)
    with bundle.unet.applied():
        for it in range(request.n_iter):
            if cancel.interrupted.is_set():
                interrupted = True
                break
            cancel.skipped.clear()
            run.job_index = it
            seeds = all_seeds[it * request.batch_size:(it + 1) * request.batch_size]
            subseeds = all_subseeds[it * request.batch_size:(it + 1) * request.batch_size]
            rng = noise_mod.ImageRNG(latent_shape, seeds, subseeds=subseeds,
                                     subseed_strength=request.subseed_strength,
                                     seed_resize_from=(request.seed_resize_from_h, request.seed_resize_from_w))
            noise = rng.first()
            run.masking = part = masked.batch(seeds) if masked is not None else None
            try:
                if init_latents is None:
                    x = noise * first.sigmas[0]
                else:
                    base = init_latents[torch.arange(len(seeds)) % init_latents.shape[0]]
                    if part is not None:
                        base = part.start_latents(base)
                    x = base + noise * (first.sigmas[0] * request.initial_noise_multiplier)
                samples = run.sample(first, x, pos, neg, seeds, rng, True)
                if request.enable_hr and not request.is_img2img:
                    samples = _hires(run, bundle, request, samples, seeds, subseeds, options, engine)
            except _Skipped:
                continue
            except _Interrupted as stop:
                samples = stop.args[0]
                interrupted = True
            if part is not None:
                samples = part.final(samples)
            decoded = vae.decode(samples, tile_latent=max(settings.vae_tile_size // 8, 32))
            pictures = tensor_to_pil(decoded)
            if restorer is not None:  # A1111: faces restored before the inpaint paste-back
                pictures = [engine.face_restorers.restore(picture, restorer, 1.0,
                                                          codeformer_weight=settings.code_former_weight)[0]
                            for picture in pictures]
            if part is not None:  # inpaint: back to the full canvas, the original pasted over the unmasked part
                pictures = [part.finish(picture, j) for j, picture in enumerate(pictures)]
            if progress is not None and not interrupted:  # (interrupted: the Result follows at once)
                progress(ProgressEvent(0, 0, it, request.n_iter, images=tuple(pictures)))
            for j, picture in enumerate(pictures):
                index = it * request.batch_size + j
                text = _infotext(engine, bundle, checkpoint, request, all_seeds[index], all_subseeds[index], vae_path,
                                 first, settings,
                                 {**nets.infotext_params(), **(masked.infotext if masked is not None else {}),
                                  **({"Face restoration": restorer} if restorer else {})})
                images.append(picture)
                infotexts.append(text)
                seeds_out.append(all_seeds[index])
                subseeds_out.append(all_subseeds[index])
                if settings.samples_save and not request.do_not_save:
                    paths.append(str(_save(engine, settings, request, picture, text, all_seeds[index], checkpoint, prompt)))
            if interrupted:
                break
    grid_path = None
    if len(images) > 1 and settings.samples_save and not request.do_not_save:
        grid = outputs.make_grid(images)
        ctx = outputs.NameContext(seed=all_seeds[0], prompt=prompt, steps=request.steps)
        grid_path = str(outputs.save_image(grid, engine.output_dir(settings.outdir_grids), ctx,
                                           infotext=infotexts[0], pattern="grid-" + settings.samples_filename_pattern,
                                           fmt=settings.samples_format, per_date_folder=settings.save_to_dirs))
    info = {
        "seed": all_seeds[0], "all_seeds": seeds_out, "subseed": all_subseeds[0], "all_subseeds": subseeds_out,
        "prompt": request.prompt, "negative_prompt": negative, "all_prompts": [request.prompt] * len(images),
        "all_negative_prompts": [negative] * len(images), "infotexts": infotexts,
        "sd_model_name": checkpoint.model_name if checkpoint else bundle.path.stem,
        "sd_model_hash": _model_hash(engine, bundle), "sampler_name": first.sampler.label,
        "scheduler": first.scheduler, "cfg_scale": request.cfg_scale, "steps": request.steps,
        "width": request.width, "height": request.height, "model_family": bundle.detection.label,
        "is_using_inpainting_conditioning": bundle.detection.variant == "inpaint",
        "restore_faces": restorer is not None, "face_restoration_model": restorer,
        "elapsed_s": round(time.monotonic() - run.started, 3), "grid_path": grid_path, **nets.info(),
    }
    return Result(tuple(images), tuple(infotexts), tuple(seeds_out), tuple(subseeds_out),
                  tuple([request.prompt] * len(images)), tuple([negative] * len(images)), info, tuple(paths), interrupted)


def _hires(run: _Run, bundle: ModelBundle, request: GenerationRequest, samples: torch.Tensor,
           seeds: list[int], subseeds: list[int], options: EncodeOptions, engine: Any = None) -> torch.Tensor:
    """Hires fix: upscale the first pass (in latent space or through pixels), then an img2img pass."""
    width, height = _hires_size(request)
    if request.hr_upscaler in LATENT_UPSCALE_MODES:
        latents = upscale_latents(samples, request.hr_upscaler, height, width)
    else:
        from modules.upscalers import resize_for_hires

        pixels = tensor_to_pil(run.vae.decode(samples))
        latents = run.vae.encode(pil_to_tensor(resize_for_hires(engine, pixels, request.hr_upscaler, width, height)))
    steps = request.hr_second_pass_steps or request.steps
    same = ("", None, "Use same sampler", "Use same scheduler")
    plan = plan_hires_pass(run.schedule,
                           request.sampler_name if request.hr_sampler_name in same else request.hr_sampler_name,
                           request.scheduler if request.hr_scheduler in same else request.hr_scheduler,
                           steps, request.hr_denoising_strength)
    calls = schedule_steps(plan.sampler, steps)
    hr_options = EncodeOptions(options.clip_skip, options.emphasis, options.comma_padding_backtrack,
                               options.embeddings, _adm(bundle, width, height))
    hr_prompt = parse_extra_networks_batch([request.hr_prompt or request.prompt])[0][0]
    hr_negative = request.hr_negative_prompt or request.negative_prompt
    nets = run.networks.for_hires  # the hires prompt's own LoRAs, if it names others
    # A1111 schedules hires prompt edits against both passes: first-pass steps, then hires steps
    with nets.text_applied():
        pos = encode_prompts(bundle.text, [hr_prompt], run.first_pass_calls, hr_options, hires_steps=calls)
        neg = encode_prompts(bundle.text, [hr_negative], run.first_pass_calls, hr_options, negative=True, hires_steps=calls)
    rng = noise_mod.ImageRNG((latents.shape[1], height // 8, width // 8), seeds, subseeds=subseeds,
                             subseed_strength=request.subseed_strength,
                             seed_resize_from=(request.seed_resize_from_h, request.seed_resize_from_w))
    x = latents + rng.first() * plan.sigmas[0]
    if nets is run.networks:
        return run.sample(plan, x, pos, neg, seeds, rng, False)
    nets.bundle.unet.patch_model()  # swaps the first pass's LoRA patches for the hires prompt's
    try:
        return run.sample(plan, x, pos, neg, seeds, rng, False)
    finally:
        bundle.unet.patch_model()


def _model_hash(engine: Any, bundle: ModelBundle) -> str:
    return engine.model_hash(bundle.path) if engine is not None else ""


def _infotext(engine, bundle, checkpoint, request, seed, subseed, vae_path, plan, settings,  # noqa: ANN001
              networks_extra=None) -> str:
    # A1111 writes the schedule it resolved ("DPM++ 2M" + Automatic → Karras)
    extra = {"Schedule type": plan.scheduler} if plan.scheduler != "Automatic" else {}
    # and what else reproduces the image: the sampler options in effect, the precision, the networks
    extra.update(infotext_fields(plan.sampler, sampler_kwargs(plan.sampler, request, settings)))
    extra[infotext.PRECISION_KEY] = infotext.precision_value(bundle.plan)
    extra.update(networks_extra or {})
    params = infotext.params_for(
        request,
        seed=seed,
        subseed=subseed,
        model_name=checkpoint.model_name if checkpoint else bundle.path.stem,
        model_hash=_model_hash(engine, bundle),
        vae_name=vae_path.name if vae_path else None,
        vae_hash=engine.model_hash(vae_path)[:8] if (vae_path and engine is not None) else None,
        version=VERSION,
        extra=extra,
    )
    return infotext.build(params, request.prompt, request.negative_prompt)


def _save(engine, settings: Settings, request, picture, text, seed, checkpoint, prompt):  # noqa: ANN001
    folder = settings.outdir_img2img_samples if request.is_img2img else settings.outdir_txt2img_samples
    ctx = outputs.NameContext(seed=seed, prompt=prompt, steps=request.steps, sampler=request.sampler_name,
                              cfg=request.cfg_scale, width=request.width, height=request.height,
                              model_name=checkpoint.model_name if checkpoint else "")
    return outputs.save_image(picture, engine.output_dir(folder), ctx, infotext=text,
                              pattern=settings.samples_filename_pattern, fmt=settings.samples_format,
                              per_date_folder=settings.save_to_dirs)
