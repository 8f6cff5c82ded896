"""Stable Diffusion 2.x: OpenCLIP ViT-H/14 text encoder (1024), 64-channel heads, linear projections.

The 512 models predict noise (eps); the 768 models predict v. The file does not always say which, so
the loader decides by, in order: a per-model setting, a `v_pred` key, a sidecar `<name>.yaml` with
`parameterization: "v"`, and a weight heuristic (see checkpoints.guess_sd2_prediction).
"""
from .base import Family, TextEncoderSlot

SD2 = Family(
    name="SD2",
    needs_adm=False,
    marker_key="cond_stage_model.model.token_embedding.weight",
    head_layout=("num_head_channels", 64),
    text_encoders=(TextEncoderSlot("cond_stage_model.model.", "open_clip", "clip_h", pad_with_eos=False),),
    vae_scaling=0.18215,
    default_resolution=512,
)
