"""Pydantic request/response models with A1111's field names and defaults.

A1111 clients (bots, Krita/Photoshop plug-ins, `webuiapi`) send these exact payloads, so the names
and defaults follow A1111 1.10's `/sdapi/v1` models (steps 50, sampler_index "Euler", …), not the UI.
Unknown fields are ignored as A1111 ignores them, so newer clients keep working.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerationFields(_Lenient):
    """Fields shared by txt2img and img2img (A1111's StableDiffusionProcessing)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: Optional[list[str]] = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: Optional[str] = None
    scheduler: Optional[str] = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: Optional[bool] = None
    tiling: Optional[bool] = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: Optional[float] = None
    s_min_uncond: Optional[float] = None
    s_churn: Optional[float] = None
    s_tmax: Optional[float] = None
    s_tmin: Optional[float] = None
    s_noise: Optional[float] = None
    override_settings: Optional[dict[str, Any]] = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: Optional[str] = None
    refiner_switch_at: Optional[float] = None
    disable_extra_networks: bool = False
    comments: Optional[dict[str, Any]] = None
    force_task_id: Optional[str] = None
    sampler_index: str = "Euler"
    script_name: Optional[str] = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: Optional[str] = None


class HiresFields(_Lenient):
    """txt2img's hires fix (A1111's StableDiffusionProcessingTxt2Img)."""

    enable_hr: bool = False
    denoising_strength: Optional[float] = None
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: Optional[str] = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: Optional[str] = None
    hr_sampler_name: Optional[str] = None
    hr_scheduler: Optional[str] = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    firstpass_image: Optional[str] = None


class Txt2ImgRequest(GenerationFields, HiresFields):
    """POST /sdapi/v1/txt2img."""


class InitFields(_Lenient):
    """img2img / inpainting inputs (A1111's StableDiffusionProcessingImg2Img). Images are base64 or
    data URLs; URLs are never fetched."""

    init_images: Optional[list[str]] = None
    resize_mode: int = 0
    image_cfg_scale: Optional[float] = None
    mask: Optional[str] = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: Optional[int] = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: Optional[float] = None
    latent_mask: Optional[str] = None
    outpaint_pad: Optional[list[int]] = None  # Palette: pixels to add (left, right, up, down), filled and masked
    include_init_images: bool = False


class Img2ImgRequest(GenerationFields, InitFields):
    """POST /sdapi/v1/img2img."""

    denoising_strength: float = 0.75


class JobRequest(GenerationFields, HiresFields, InitFields):
    """POST /palette/v1/jobs: a txt2img job, or img2img when `init_images` is given."""


class GenerationResponse(BaseModel):
    images: list[str] = Field(default_factory=list, description="base64 PNGs with their `parameters` chunk")
    parameters: dict[str, Any] = Field(default_factory=dict, description="the request, echoed")
    info: str = Field("", description="JSON string: seed, all_seeds, all_prompts, infotexts, sd_model_name, …")


class ExtrasFields(_Lenient):
    """A1111's extras options: upscale, then GFPGAN and CodeFormer face restoration (each 0..1)."""

    resize_mode: int = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasFields):
    image: str = ""


class ExtrasSingleImageResponse(BaseModel):
    html_info: str = ""
    image: str = ""


class FileData(_Lenient):
    data: str
    name: str = ""


class ExtrasBatchImagesRequest(ExtrasFields):
    imageList: list[FileData] = Field(default_factory=list)


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str = ""
    images: list[str] = Field(default_factory=list)


class PNGInfoRequest(_Lenient):
    image: str = ""


class PNGInfoResponse(BaseModel):
    info: str = ""
    items: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_id: Optional[str] = None
    job_count: int = 0
    job_timestamp: str = ""
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    queued: int = 0


class ProgressResponse(BaseModel):
    progress: float = 0.0
    eta_relative: float = 0.0
    state: ProgressState = Field(default_factory=ProgressState)
    current_image: Optional[str] = None
    textinfo: Optional[str] = None


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: Optional[str] = None
    sha256: Optional[str] = None
    filename: str
    config: Optional[str] = None


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: Optional[list[str]] = None
    default_rho: float = -1.0
    need_inner_model: bool = False


class UpscalerItem(BaseModel):
    name: str
    model_name: Optional[str] = None
    model_path: Optional[str] = None
    model_url: Optional[str] = None
    scale: Optional[float] = None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: Optional[str] = Field(None, description="the folder its model file is read from")
    model_path: Optional[str] = Field(None, description="Palette: the model file in use, if any")
    unavailable: Optional[str] = Field(None, description="Palette: why it cannot run now (None when it can)")


class LatentUpscalerModeItem(BaseModel):
    name: str


class PromptStyleItem(BaseModel):
    name: str
    prompt: Optional[str] = None
    negative_prompt: Optional[str] = None


class JobCreated(BaseModel):
    id: str
    status: str
    position: Optional[int] = Field(None, description="0-based place among the waiting jobs")


class JobInfo(BaseModel):
    """A Palette queue job. `images`/`info` appear once it is done (images only with ?images=true)."""

    id: str
    label: str
    owner: Optional[str] = None
    status: str = Field(description="queued, running, done, failed or cancelled")
    position: Optional[int] = None
    progress: float = 0.0
    step: int = 0
    total_steps: int = 0
    job_index: int = 0
    job_count: int = 1
    eta_relative: Optional[float] = None
    error: Optional[str] = None
    info: Optional[str] = None
    images: Optional[list[str]] = None


class LoraItem(BaseModel):
    """A1111's `/sdapi/v1/loras` entry (A1111 returns plain dicts with these keys)."""

    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class EmbeddingItem(BaseModel):
    """A1111's EmbeddingItem. `shape` (vector width) and `vectors` (tokens it takes) are required ints in
    A1111; here they are null when the engine's listing does not give them (it does not open the file)."""

    step: Optional[int] = None
    sd_checkpoint: Optional[str] = None
    sd_checkpoint_name: Optional[str] = None
    shape: Optional[int] = None
    vectors: Optional[int] = None


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]
