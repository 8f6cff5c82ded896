"""Stable Diffusion 1.x: OpenAI CLIP ViT-L/14 text encoder (768), eight attention heads per block."""
from .base import Family, TextEncoderSlot

SD1 = Family(
    name="SD1",
    unet_match={"context_dim": 768, "adm_in_channels": None},
    head_layout=("num_heads", 8),
    text_encoders=(TextEncoderSlot("cond_stage_model.transformer.", "hf", "clip_l", pad_with_eos=True),),
    vae_scaling=0.18215,
    default_resolution=512,
)
