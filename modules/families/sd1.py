"""Stable Diffusion 1.x: OpenAI CLIP ViT-L/14 text encoder (768), eight attention heads per block.

The context width is not part of the signature: SD1-layout models with a narrower text encoder
(Palette's demo model, distilled models) are SD1 too; their widths come from the tensor shapes."""
from .base import Family, TextEncoderSlot

SD1 = Family(
    name="SD1",
    needs_adm=False,
    marker_key="cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    head_layout=("num_heads", 8),
    text_encoders=(TextEncoderSlot("cond_stage_model.transformer.", "hf", "clip_l", pad_with_eos=True),),
    vae_scaling=0.18215,
    default_resolution=512,
)
