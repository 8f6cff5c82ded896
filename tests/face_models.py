"""Random-weight face-restoration models in the real key layouts, and a drawn face Haar finds.

The state dicts come from spandrel's own architecture classes (the layouts the released GFPGAN,
RestoreFormer and CodeFormer files have), wrapped as `{"params_ema": …}` like those files. GFPGAN and
CodeFormer are full size (spandrel fixes their widths: ~86M and ~94M parameters); RestoreFormer takes
its widths from the state dict, so a tiny one runs in well under a second.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFilter


def restoreformer_tiny(seed: int = 0) -> dict[str, torch.Tensor]:
    """RestoreFormer with spandrel's fixed resolution (512) and attention level (16), tiny widths."""
    from spandrel.architectures.RestoreFormer import RestoreFormer

    torch.manual_seed(seed)
    model = RestoreFormer(n_embed=16, embed_dim=8, ch=32, ch_mult=(1, 1, 1, 1, 1, 1), num_res_blocks=1,
                          z_channels=32, head_size=8)
    return {k: v.clone() for k, v in model.state_dict().items()}


def gfpgan_full(seed: int = 0) -> dict[str, torch.Tensor]:
    """GFPGANv1Clean exactly as spandrel builds it for GFPGANv1.3/v1.4 files (random init)."""
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(seed)
    model = GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                   num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    return {k: v.clone() for k, v in model.state_dict().items()}


def codeformer_full(seed: int = 0) -> dict[str, torch.Tensor]:
    """CodeFormer as spandrel_extra_arches builds it (the codeformer-v0.2.0 layout), random init."""
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    torch.manual_seed(seed)
    return {k: v.clone() for k, v in CodeFormer().state_dict().items()}


def save_pth(sd: dict[str, torch.Tensor], path: Path) -> Path:
    """As the released files: a pickle holding `{"params_ema": state_dict}`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": sd}, path)
    return path


def drawn_face(size: int = 360, centre: tuple[int, int] | None = None, scale: float = 1.0,
               background: tuple[int, int, int] = (90, 110, 140)) -> Image.Image:
    """A flat cartoon face (hair, skin oval, brows, eyes, nose shading, mouth) that OpenCV's
    frontal-face cascade finds (and, from `scale` 1.5, its eye cascade too); the face spans about
    110×160 px × `scale` around `centre`."""
    cx, cy = centre or (size // 2, size // 2)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)

    def oval(x0: float, y0: float, x1: float, y1: float, fill: tuple[int, int, int]) -> None:
        draw.ellipse([cx + x0 * scale, cy + y0 * scale, cx + x1 * scale, cy + y1 * scale], fill=fill)

    oval(-62, -90, 62, 30, (50, 35, 25))  # hair
    oval(-55, -75, 55, 85, (224, 182, 150))  # skin
    for ex in (-27, 27):  # eye socket, brow, white, iris, pupil, upper lid: what the eye cascade needs
        oval(ex - 16, -26, ex + 16, -2, (190, 145, 115))
        draw.rectangle([cx + (ex - 15) * scale, cy - 34 * scale, cx + (ex + 15) * scale, cy - 27 * scale],
                       fill=(60, 40, 30))
        oval(ex - 12, -19, ex + 12, -9, (245, 240, 235))
        oval(ex - 6, -20, ex + 6, -8, (110, 70, 40))
        oval(ex - 3, -17, ex + 3, -11, (15, 10, 10))
        draw.arc([cx + (ex - 12) * scale, cy - 21 * scale, cx + (ex + 12) * scale, cy - 7 * scale], 180, 360,
                 fill=(50, 30, 25), width=max(1, int(2 * scale)))
    draw.polygon([(cx - 3 * scale, cy - 5 * scale), (cx - 10 * scale, cy + 25 * scale),
                  (cx + 10 * scale, cy + 25 * scale), (cx + 3 * scale, cy - 5 * scale)], fill=(200, 155, 125))
    oval(-12, 20, 12, 30, (170, 120, 100))  # nostrils' shadow
    oval(-22, 40, 22, 52, (150, 60, 60))  # lips
    return image.filter(ImageFilter.GaussianBlur(1.2 * scale))
