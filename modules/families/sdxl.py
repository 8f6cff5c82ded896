"""SDXL base and refiner (Podell et al. 2023, arXiv:2307.01952).

Base: CLIP ViT-L (768) + OpenCLIP ViT-bigG (1280) concatenated to a 2048 context; ADM vector of
2816 = pooled bigG (1280) + six 256-d Fourier embeddings (original size, crop, target size).
Refiner: bigG only (1280 context); ADM 2560 = pooled (1280) + five embeddings (size, crop, aesthetic).
"""
from .base import Family, TextEncoderSlot

SDXL = Family(
    name="SDXL",
    needs_adm=True,
    marker_key="conditioner.embedders.1.model.token_embedding.weight",
    head_layout=("num_head_channels", 64),
    text_encoders=(
        TextEncoderSlot("conditioner.embedders.0.transformer.", "hf", "clip_l", pad_with_eos=True),
        TextEncoderSlot("conditioner.embedders.1.model.", "open_clip", "clip_g", pad_with_eos=False),
    ),
    vae_scaling=0.13025,
    default_resolution=1024,
    sdxl_text=True,
    adm="sdxl",
)

SDXL_REFINER = Family(
    name="SDXL Refiner",
    needs_adm=True,
    marker_key="conditioner.embedders.0.model.token_embedding.weight",
    head_layout=("num_head_channels", 64),
    text_encoders=(TextEncoderSlot("conditioner.embedders.0.model.", "open_clip", "clip_g", pad_with_eos=False),),
    vae_scaling=0.13025,
    default_resolution=1024,
    sdxl_text=True,
    adm="refiner",
)
