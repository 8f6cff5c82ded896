"""Inpainting and outpainting: the mask maths (pure functions) and the per-job state the pipeline uses.

Follows A1111's img2img-with-mask (processing.py / masking.py), so its infotexts reproduce:
1. the mask (white = redraw) is thresholded at 128 (kept soft for soft inpainting), optionally
   inverted ("Inpaint not masked"), padded for outpainting, then Gaussian-blurred (kernel
   2·int(2.5·r+0.5)+1, σ = r, each axis, as A1111 through OpenCV);
2. "Whole picture": image and mask are resized to the working size; "Only masked": the box around the
   blurred mask plus padding, widened to the working aspect ratio, is cut out and resized to the
   working size, then pasted back into the full-size image at the end;
3. masked content: `fill` (the hole filled from blurred surroundings), `original`, `latent noise`
   (the masked latent replaced by the seed's noise), `latent nothing` (zeros);
4. sampling: after every denoiser call denoised = init·(1−m) + denoised·m in latent space (m = the
   latent mask, rounded to 0/1), and once more on the final latent; 9-channel inpainting checkpoints
   also get c_concat = [mask, VAE(masked image)] where the masked image is
   lerp(image, image·(1−mask), inpainting_mask_weight) (A1111's "Conditional mask weight");
5. the decoded image is composited with the original through the blurred mask (×2 for "Whole
   picture", as A1111), so pixels outside the mask and its blur are the input's, bit for bit.

Soft inpainting (A1111's built-in extension, its step blend): the mask stays soft and each step blends
with t = m^(σ^bias · preservation), keeping the vectors' magnitudes (`contrast` is the power).
The final composite uses the soft blurred mask itself; A1111's difference-driven composite is not done.

Outpainting: `outpaint_pad` (left, right, up, down pixels) grows the canvas, fills the new area by
stretching the edge pixels and blurring them, and masks it; in "Resize and fill" mode the bands the
resize adds are masked too. The result has the canvas size (with padding) and the original pixels.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from modules.types import GenerationRequest
from modules.validation import RequestError

MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")  # by inpainting_fill
INPAINT_AREAS = ("Whole picture", "Only masked")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
MAX_MASK_BLUR = 64
MAX_PADDING = 256
MAX_OUTPAINT = 2048
Box = tuple[int, int, int, int]  # left, top, right, bottom (PIL's crop box)


# ---- validation (called from modules.validation before any model work) -----------------------------

def validate(request: GenerationRequest) -> None:
    """Ranges of the inpaint fields, and the mask against the init images (sizes, emptiness)."""
    from modules.validation import _finite, _integer

    _integer("mask_blur", request.mask_blur, 0, MAX_MASK_BLUR)
    _integer("inpainting_fill", request.inpainting_fill, 0, len(MASKED_CONTENT) - 1)
    _integer("inpaint_full_res_padding", request.inpaint_full_res_padding, 0, MAX_PADDING)
    _integer("inpainting_mask_invert", request.inpainting_mask_invert, 0, 1)
    _finite("initial_noise_multiplier", request.initial_noise_multiplier, 0.0, 1.5)
    _finite("soft_inpainting_schedule_bias", request.soft_inpainting_schedule_bias, 0.0, 8.0)
    _finite("soft_inpainting_preservation", request.soft_inpainting_preservation, 0.0, 8.0)
    _finite("soft_inpainting_contrast", request.soft_inpainting_contrast, 1.0, 32.0)
    pad = request.outpaint_pad
    if not (isinstance(pad, (tuple, list)) and len(pad) == 4):
        raise RequestError("outpaint_pad", f"must be four pixel counts (left, right, up, down), got {pad!r}")
    for side, value in zip(("left", "right", "up", "down"), pad):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_OUTPAINT:
            raise RequestError("outpaint_pad", f"{side} must be a whole number of pixels 0–{MAX_OUTPAINT}, got {value!r}")
    if not is_masked(request):
        if request.mask is not None or any(pad):
            raise RequestError("mask", "a mask or outpainting needs an init image (init_images is empty)")
        return
    sizes = {im.size for im in request.init_images}
    if len(sizes) > 1:
        raise RequestError("init_images", "inpainting uses one mask for all init images, so they must have one "
                                          f"size; got {', '.join(f'{w}×{h}' for w, h in sorted(sizes))}")
    build_mask(request)  # raises for size mismatches and empty masks


def is_masked(request: GenerationRequest) -> bool:
    """An img2img request with a mask or outpainting: the inpaint mode."""
    return request.is_img2img and (request.mask is not None or any(request.outpaint_pad))


# ---- masks in pixels ----------------------------------------------------------------------------------

def binary_mask(mask: Image.Image, *, round_: bool = True) -> Image.Image:
    """Mode-L mask, white = redraw. An RGBA mask with real transparency is read from its alpha (what a
    brush layer gives); `round_` thresholds at 128 as A1111 does (soft inpainting keeps the greys)."""
    if mask.mode in ("RGBA", "LA", "PA") and mask.getextrema()[-1] != (255, 255):
        grey = mask.getchannel("A")
    else:
        grey = mask.convert("L")
    return grey.point(lambda v: 255 if v > 128 else 0) if round_ else grey


def invert_mask(mask: Image.Image) -> Image.Image:
    return Image.eval(mask.convert("L"), lambda v: 255 - v)


def blur_mask(mask: Image.Image, radius: int) -> Image.Image:
    """A1111's mask blur: a Gaussian of σ = radius along x, then along y (OpenCV, reflect-101 edges)."""
    if radius <= 0:
        return mask.convert("L")
    size = 2 * int(2.5 * radius + 0.5) + 1
    arr = np.asarray(mask.convert("L"), dtype=np.uint8)
    arr = cv2.GaussianBlur(arr, (size, 1), radius)
    arr = cv2.GaussianBlur(arr, (1, size), radius)
    return Image.fromarray(arr, "L")


def crop_region(mask: Image.Image, padding: int) -> Box | None:
    """The box around the mask's non-zero pixels grown by `padding` and clipped to the image; None when
    the mask is empty."""
    box = mask.convert("L").getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def _grow(lo: int, hi: int, want: int, limit: int) -> tuple[int, int]:
    """Widen [lo, hi) by `want` pixels around its centre, shifted back inside [0, limit)."""
    lo, hi = lo - want // 2, hi + want - want // 2
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def expand_region(box: Box, width: int, height: int, image_width: int, image_height: int) -> Box:
    """Widen `box` to the working aspect ratio width:height (so the crop is not distorted when it is
    resized to the working size), staying inside the image where it can."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    if w / h > width / height:
        y1, y2 = _grow(y1, y2, int(w * height / width - h), image_height)
    else:
        x1, x2 = _grow(x1, x2, int(h * width / height - w), image_width)
    return x1, y1, x2, y2


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Masked content "fill": the hole takes the colours around it, by compositing ever sharper blurs
    of the unmasked part (A1111's masking.fill: radii 256, 64, 16, 4, 2, 0)."""
    rgba = image.convert("RGBA")
    keep = invert_mask(mask.convert("L").resize(image.size))
    rgba.putalpha(keep)
    premultiplied = rgba.convert("RGBa")
    out = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        layer = premultiplied.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            out.alpha_composite(layer)
    return out.convert("RGB")


def composite(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """generated where the mask is white, original where it is black, mixed between; mask 0 gives the
    original's pixel exactly."""
    m = np.asarray(mask.convert("L"), dtype=np.float32)[..., None] / 255.0
    gen = np.asarray(generated.convert("RGB"), dtype=np.float32)
    org = np.asarray(original.convert("RGB"), dtype=np.float32)
    out = np.where(m == 0, org, np.round(gen * m + org * (1 - m)))
    return Image.fromarray(out.clip(0, 255).astype(np.uint8), "RGB")


def overlay_mask(blurred: Image.Image, *, whole_picture: bool, soft: bool) -> Image.Image:
    """The mask the final composite uses: for "Whole picture" A1111 doubles the blurred mask, so the
    seam's midpoint is already fully generated; soft inpainting keeps it soft."""
    if whole_picture and not soft:
        return Image.eval(blurred.convert("L"), lambda v: min(255, v * 2))
    return blurred.convert("L")


def outpaint_canvas(image: Image.Image, left: int, right: int, up: int, down: int) -> tuple[Image.Image, Image.Image]:
    """(the image on a larger canvas with the new area filled, the mask of the new area).

    The fill stretches the outermost row/column of pixels outwards (corners take the corner pixel),
    then blurs the new area so the streaks become soft colour that diffusion can reshape."""
    arr = np.asarray(image.convert("RGB"))
    padded = np.pad(arr, ((up, down), (left, right), (0, 0)), mode="edge")
    canvas = Image.fromarray(padded, "RGB")
    mask = Image.new("L", canvas.size, 255)
    mask.paste(0, (left, up, left + image.width, up + image.height))
    widest = max(left, right, up, down)
    if widest:
        blurred = canvas.filter(ImageFilter.GaussianBlur(max(2.0, widest / 4)))
        canvas.paste(blurred, (0, 0), mask)
        canvas.paste(image.convert("RGB"), (left, up))
    return canvas, mask


def resize_fill_bands(image_size: tuple[int, int], width: int, height: int) -> Image.Image:
    """Mask of the bands "Resize and fill" adds around the resized image (white = added)."""
    src_w, src_h = image_size
    if width / height < src_w / src_h:
        w, h = width, src_h * width // src_w
    else:
        w, h = src_w * height // src_h, height
    mask = Image.new("L", (width, height), 255)
    x, y = width // 2 - w // 2, height // 2 - h // 2
    mask.paste(0, (x, y, x + w, y + h))
    return mask


def _resize(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    from modules.pipeline import resize_image  # the img2img resize modes live with the pipeline

    return resize_image(mode, image, width, height)


# ---- the mask the job uses -----------------------------------------------------------------------------

@dataclass(frozen=True)
class CanvasMask:
    """The init images on their canvas (padded when outpainting) and the unblurred mask over it."""

    canvases: tuple[Image.Image, ...]
    mask: Image.Image  # mode L, canvas size, white = redraw


def _check_size(mask: Image.Image, image: Image.Image) -> Image.Image:
    """A mask of the image's size, or of the same shape (a mask drawn on a smaller preview) resized
    to it; any other shape is an error, because where it would land is a guess."""
    if mask.size == image.size:
        return mask
    if abs(mask.width * image.height - mask.height * image.width) <= max(mask.width, mask.height):
        return mask.resize(image.size, Image.NEAREST)
    raise RequestError("mask", f"the mask is {mask.width}×{mask.height} but the image is {image.width}×{image.height}; "
                               "a mask must have the image's size or at least its aspect ratio")


def build_mask(request: GenerationRequest) -> CanvasMask:
    """Threshold, invert and pad the mask; refuse one that leaves nothing to redraw."""
    images = [im.convert("RGB") for im in request.init_images]
    first = images[0]
    soft = request.soft_inpainting
    if request.mask is not None:
        if not isinstance(request.mask, Image.Image):
            raise RequestError("mask", f"must be an image, got {type(request.mask).__name__}")
        mask = _check_size(binary_mask(request.mask, round_=not soft), first)
        if request.inpainting_mask_invert:
            mask = invert_mask(mask)
    else:
        mask = Image.new("L", first.size, 0)
    left, right, up, down = request.outpaint_pad
    if any(request.outpaint_pad):
        pairs = [outpaint_canvas(im, left, right, up, down) for im in images]
        images = [c for c, _ in pairs]
        grown = pairs[0][1]
        grown.paste(mask, (left, up))
        mask = grown
    bands = not request.inpaint_full_res and request.resize_mode == 2 and not any(request.outpaint_pad)
    if mask.getbbox() is None and not (bands and resize_fill_bands(first.size, request.width, request.height).getbbox()):
        hint = ("with \"Inpaint not masked\" an all-white mask" if request.inpainting_mask_invert and request.mask is not None
                else "an all-black mask")
        raise RequestError("mask", f"the mask is empty: {hint} leaves nothing to redraw. Paint the area to change "
                                   "in white (or use img2img to change the whole picture)")
    return CanvasMask(tuple(images), mask)


# ---- latents ----------------------------------------------------------------------------------------------

def latent_mask(mask: Image.Image, height: int, width: int, *, round_: bool = True) -> torch.Tensor:
    """[1, 1, h, w] in [0,1], 1 = redraw: the pixel mask shrunk (bicubic, as A1111) and rounded to 0/1."""
    small = np.asarray(mask.convert("L").resize((width, height), Image.BICUBIC), dtype=np.float32) / 255.0
    if round_:
        small = np.around(small)
    return torch.from_numpy(small.copy())[None, None]


def soft_blend(init: torch.Tensor, current: torch.Tensor, t: torch.Tensor, contrast: float) -> torch.Tensor:
    """Lerp between latents with the per-pixel weight t, then rescale each latent vector to the
    power-`contrast` mean of the two magnitudes (A1111 soft inpainting's latent_blend), so a
    half-way pixel keeps its detail instead of fading towards zero."""
    mixed = init * (1 - t) + current * t
    norm = lambda v: torch.linalg.vector_norm(v, dim=1, keepdim=True).double()  # noqa: E731
    t1 = t[:, :1].double()
    want = (norm(init).pow(contrast) * (1 - t1) + norm(current).pow(contrast) * t1).pow(1 / contrast)
    return mixed * (want / (norm(mixed) + 1e-5)).to(mixed.dtype)


@dataclass(frozen=True)
class SoftOptions:
    schedule_bias: float = 1.0  # A1111 "Schedule bias" (mask_blend_power)
    preservation: float = 0.5  # "Preservation strength" (mask_blend_scale)
    contrast: float = 4.0  # "Transition contrast boost" (inpaint_detail_preservation)


@dataclass(frozen=True)
class LatentBlend:
    """post_cfg hook `(denoised, x, sigma) -> denoised`: keep the unmasked latent at every step."""

    init: torch.Tensor  # [B, C, h, w] the clean init latents of this batch
    mask: torch.Tensor  # [1 or B, 1, h, w], 1 = redraw
    soft: SoftOptions | None = None

    def __call__(self, denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        init, mask = self.init.to(denoised), self.mask.to(denoised)
        if self.soft is None:
            return init * (1 - mask) + denoised * mask
        s = float(sigma.reshape(-1)[0])
        t = mask.pow(s ** self.soft.schedule_bias * self.soft.preservation).expand_as(denoised)
        return soft_blend(init, denoised, t, self.soft.contrast)

    def final(self, samples: torch.Tensor) -> torch.Tensor:
        """After sampling (A1111's last blend; soft inpainting keeps the sampled latent)."""
        if self.soft is not None:
            return samples
        return self.init.to(samples) * (1 - self.mask.to(samples)) + samples * self.mask.to(samples)


def concat_conditioning(vae: Any, pictures: torch.Tensor, mask: torch.Tensor, weight: float,
                        latent_hw: tuple[int, int]) -> torch.Tensor:
    """c_concat for 9-channel inpainting models: [B, 1 + C, h, w] = mask, then the VAE latent of the
    masked picture. pictures: [B, 3, H, W] in [0,1]; mask: [1, 1, H, W], 1 = redraw. The masked
    picture is lerp(p, p·(1−mask), weight) in [−1, 1] (grey where masked at weight 1)."""
    source = pictures * 2 - 1
    masked = torch.lerp(source, source * (1 - mask), weight)
    latents = vae.encode((masked + 1) / 2)
    small = F.interpolate(mask, size=latent_hw)  # nearest, as A1111
    return torch.cat([small.expand(latents.shape[0], -1, -1, -1).to(latents), latents], dim=1)


def _pixels(images: Sequence[Image.Image]) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


# ---- the job -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Batch:
    """What one batch of the loop needs: start latents, the per-step hook, c_concat and the paste-back."""

    job: "InpaintJob"
    rows: tuple[int, ...]  # which init image each batch position uses
    init: torch.Tensor | None  # start latents (masked content applied), or None: the pipeline's own
    blend: LatentBlend | None

    @property
    def post_cfg(self) -> tuple[Callable[..., torch.Tensor], ...]:
        return (self.blend,) if self.blend is not None else ()

    def start_latents(self, base: torch.Tensor) -> torch.Tensor:
        return self.init if self.init is not None else base

    def image_cond(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.job.image_cond(self.rows, x)

    def final(self, samples: torch.Tensor) -> torch.Tensor:
        return self.blend.final(samples) if self.blend is not None else samples

    def finish(self, picture: Image.Image, position: int) -> Image.Image:
        return self.job.finish(picture, self.rows[position])


@dataclass
class InpaintJob:
    """Everything prepared once per job; `batch()` hands out per-batch views."""

    vae: Any
    weight: float  # inpainting_mask_weight
    concat: bool  # a 9-channel inpainting checkpoint
    fill: int = 1
    init_latents: torch.Tensor | None = None  # [N, C, h, w] or None (txt2img / unmasked img2img)
    mask: torch.Tensor | None = None  # latent mask [1, 1, h, w]
    soft: SoftOptions | None = None
    pictures: torch.Tensor | None = None  # working pictures (after fill) [N, 3, H, W], for c_concat
    pixel_mask: torch.Tensor | None = None  # [1, 1, H, W] for c_concat
    originals: tuple[Image.Image, ...] = ()  # what the result is composited over
    overlay: Image.Image | None = None  # composite mask at the originals' size
    paste_box: Box | None = None  # "Only masked" / outpainting: where the working image goes back
    infotext: dict[str, Any] = field(default_factory=dict)
    _conds: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def batch(self, seeds: Sequence[int]) -> Batch:
        source = self.init_latents if self.init_latents is not None else self.pictures
        count = source.shape[0] if source is not None else 1
        rows = tuple(i % count for i in range(len(seeds)))
        init = blend = None
        if self.init_latents is not None and self.mask is not None:
            init = self.init_latents[list(rows)]
            if self.fill == 2:  # latent noise: the seed's own noise, as A1111's create_random_tensors
                from modules.sampling.noise import ImageRNG

                noise = ImageRNG(init.shape[1:], list(seeds)).first()
                init = init * (1 - self.mask) + noise * self.mask
            blend = LatentBlend(init, self.mask, self.soft)
        return Batch(self, rows, init, blend)

    def image_cond(self, rows: Sequence[int], x: torch.Tensor) -> torch.Tensor | None:
        """c_concat for the rows of a batch at x's size (None for 4-channel models). A size the job did
        not prepare (the hires pass) gets A1111's txt2img conditioning: full mask, masked picture grey."""
        if not self.concat:
            return None
        size = (x.shape[-2], x.shape[-1])
        if size not in self._conds:
            if self.pictures is not None and self.pictures.shape[-2] == size[0] * 8 and self.pictures.shape[-1] == size[1] * 8:
                mask = self.pixel_mask if self.pixel_mask is not None else torch.ones(1, 1, *self.pictures.shape[-2:])
                self._conds[size] = concat_conditioning(self.vae, self.pictures, mask, self.weight, size)
            else:
                grey = torch.full((1, 3, size[0] * 8, size[1] * 8), 0.5)
                self._conds[size] = concat_conditioning(self.vae, grey, torch.ones(1, 1, *grey.shape[-2:]), 1.0, size)
        cond = self._conds[size]
        if cond.shape[0] == 1:
            return cond
        if len(set(rows)) == 1:  # one row serves the whole batch (NetworkAdapter repeats it)
            return cond[rows[0]:rows[0] + 1]
        return cond[list(rows)]

    def finish(self, picture: Image.Image, row: int) -> Image.Image:
        """Paste back ("Only masked" / outpainting) and composite over the original through the mask."""
        if self.overlay is None:
            return picture
        original = self.originals[row]
        if self.paste_box is not None:
            x1, y1, x2, y2 = self.paste_box
            full = original.copy()
            full.paste(_resize(1, picture, x2 - x1, y2 - y1), (x1, y1))
            picture = full
        return composite(picture, original, self.overlay)


def prepare(request: GenerationRequest, vae: Any, *, mask_weight: float, concat: bool) -> InpaintJob | None:
    """The inpaint state of a job: None for plain txt2img/img2img on a 4-channel model."""
    if not is_masked(request):
        if not concat:
            return None
        job = InpaintJob(vae, mask_weight, concat, infotext={"Conditional mask weight": mask_weight})
        if request.is_img2img:  # A1111: the whole picture is "masked" (mask of ones)
            mode = 0 if request.resize_mode == 3 else request.resize_mode
            job.pictures = _pixels([_resize(mode, im, request.width, request.height) for im in request.init_images])
        return job
    if concat and len({im.tobytes() for im in request.init_images}) > 1 and re.search(r"\bAND\b", request.prompt):
        raise RequestError("prompt", "AND prompts with several different init images are not supported on "
                                     "inpainting checkpoints; use one init image or a prompt without AND")
    canvas = build_mask(request)
    soft = request.soft_inpainting
    width, height = request.width, request.height
    blurred = blur_mask(canvas.mask, request.mask_blur)
    outpaint = any(request.outpaint_pad)
    paste_box = None
    if request.inpaint_full_res or outpaint:
        full = (0, 0, blurred.width, blurred.height)
        box = crop_region(blurred, request.inpaint_full_res_padding) if request.inpaint_full_res else full
        if request.inpaint_full_res:
            box = expand_region(box, width, height, blurred.width, blurred.height)
        work_mask = _resize(2, blurred.crop(box), width, height).convert("L")
        work = [_resize(2, im.crop(box), width, height) for im in canvas.canvases]
        originals = canvas.canvases
        overlay = overlay_mask(blurred, whole_picture=not request.inpaint_full_res, soft=soft)
        paste_box = box
    else:
        mode = 0 if request.resize_mode == 3 else request.resize_mode
        work_mask = _resize(mode, blurred, width, height).convert("L")
        if mode == 2:
            bands = blur_mask(resize_fill_bands(canvas.canvases[0].size, width, height), request.mask_blur)
            work_mask = Image.fromarray(np.maximum(np.asarray(work_mask), np.asarray(bands)), "L")
        work = [_resize(mode, im, width, height) for im in canvas.canvases]
        originals = tuple(work)
        overlay = overlay_mask(work_mask, whole_picture=True, soft=soft)
    if request.inpainting_fill == 0:
        work = [fill_masked(im, work_mask) for im in work]
    pictures = _pixels(work)
    latents = vae.encode(pictures)
    h, w = latents.shape[-2:]
    mask = latent_mask(work_mask, h, w, round_=not soft)
    if request.inpainting_fill == 3:
        latents = latents * (1 - mask)
    pixel_mask = torch.from_numpy(np.asarray(work_mask, dtype=np.float32) / 255.0)[None, None]
    if not soft:
        pixel_mask = pixel_mask.round()
    options = SoftOptions(request.soft_inpainting_schedule_bias, request.soft_inpainting_preservation,
                          request.soft_inpainting_contrast) if soft else None
    return InpaintJob(vae, mask_weight, concat, request.inpainting_fill, latents, mask, options, pictures, pixel_mask,
                      tuple(originals), overlay, paste_box,
                      {"Conditional mask weight": mask_weight} if concat else {})
