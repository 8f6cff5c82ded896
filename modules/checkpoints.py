"""Checkpoint file → ModelBundle (UNet, text encoders, VAE), with a report of every key's fate.

Networks are built on the `meta` device and the file's tensors are *assigned* into them, so nothing
is initialised twice and tensors already in the compute dtype stay memory-mapped. Every key of the file
is accounted for: used, ignored by name (buffers every real file carries, like `alphas_cumprod` or
`position_ids`), or reported as unexpected. A real checkpoint of a known family loads with zero
missing and zero unexpected keys.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch

from modules.detection import Detection, detect
from modules.devices import DevicePlan
from modules.families import UNET_PREFIX, VAE_PREFIX
from modules.nn.assign import assign_weights
from modules.nn.unet import UNetModel, transformer_matmul_parameters
from modules.nn.vae import AutoencoderKL
from modules.patcher import ModelPatcher
from modules.text_encoding import TextEncoderStack
from modules.vae import VAE
from modules.weights_io import WeightFileError, open_weights

# Keys real checkpoints carry that are not parameters of any network (DDPM buffers, EMA bookkeeping).
IGNORED_KEY_PATTERNS = (
    re.compile(r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_alphas_cumprod|sqrt_one_minus_alphas_cumprod"
               r"|log_one_minus_alphas_cumprod|sqrt_recip_alphas_cumprod|sqrt_recipm1_alphas_cumprod"
               r"|posterior_variance|posterior_log_variance_clipped|posterior_mean_coef1|posterior_mean_coef2"
               r"|logvar|v_pred|ztsnr|edm_vpred|edm_mean|edm_std|lvlb_weights)$"),
    re.compile(r"^model_ema\."),
    re.compile(r"\.position_ids$"),
    re.compile(r"\.logit_scale$"),
    re.compile(r"\.attn_mask$"),
    re.compile(r"^cond_stage_model\.model\.(visual|logit_scale)"),
    re.compile(r"^conditioner\.embedders\.\d+\.model\.(visual|logit_scale)"),
)


@dataclass(frozen=True)
class LoadReport:
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    def summary(self) -> str:
        return f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.ignored)} ignored keys"


@dataclass
class ModelBundle:
    """One loaded checkpoint. The UNet is wrapped in a ModelPatcher so jobs patch clones, never it."""

    path: Path
    detection: Detection
    unet: ModelPatcher
    text: TextEncoderStack
    vae: VAE
    plan: DevicePlan
    report: LoadReport
    metadata: Mapping[str, str] = field(default_factory=dict)
    # One patcher per text encoder (same order as `text.units`), so LoRAs patch them like the UNet.
    text_patchers: tuple[ModelPatcher, ...] = ()

    def __post_init__(self) -> None:
        if not self.text_patchers:
            self.text_patchers = tuple(ModelPatcher(unit.model) for unit in self.text.units)

    @property
    def family(self):  # noqa: ANN201 - Family, kept short
        return self.detection.family

    def with_unet(self, unet: ModelPatcher) -> "ModelBundle":
        """A shallow copy using another (patched clone of the) UNet."""
        return ModelBundle(self.path, self.detection, unet, self.text, self.vae, self.plan, self.report, self.metadata,
                           self.text_patchers)


def _is_ignored(key: str) -> bool:
    return any(p.search(key) for p in IGNORED_KEY_PATTERNS)


class EmaOnlyView(Mapping[str, Any]):
    """An EMA-only LDM file seen as a normal one: `model_ema.<name without dots>` → `model.diffusion_model.<name>`."""

    def __init__(self, sd: Mapping[str, Any], mapping: Mapping[str, str]) -> None:
        self._sd = sd
        self._map = dict(mapping)  # unet key (with prefix) → ema key
        used = set(self._map.values())
        self._keys = list(self._map) + [k for k in sd.keys() if k not in used]
        self.metadata = getattr(sd, "metadata", {})

    def __getitem__(self, key: str) -> Any:
        return self._sd[self._map.get(key, key)]

    def __contains__(self, key: object) -> bool:
        return key in self._map or key in self._sd

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def ema_only_view(sd: Mapping[str, Any]) -> Mapping[str, Any]:
    """If the file has EMA UNet weights but no `model.diffusion_model.*`, map them back to their names
    (LDM's EMA drops the dots, so the names come from the published UNet layouts)."""
    if UNET_PREFIX + "input_blocks.0.0.weight" in sd or "model_ema.diffusion_modelinput_blocks00weight" not in sd:
        return sd
    from modules.nn.unet import published_configs

    for config in published_configs().values():
        with torch.device("meta"):
            keys = list(UNetModel(config).state_dict().keys())
        mapping = {UNET_PREFIX + k: "model_ema." + ("diffusion_model." + k).replace(".", "") for k in keys}
        if all(v in sd for v in mapping.values()):
            return EmaOnlyView(sd, mapping)
    return sd


def _prefixed(sd: Mapping[str, Any], prefix: str):
    def source(key: str):
        full = prefix + key
        if full in sd:
            return full, sd[full]
        return None

    return source


def load_checkpoint(
    path: Path,
    plan: DevicePlan,
    *,
    family_override: str | None = None,
    prediction_override: str | None = None,
) -> ModelBundle:
    """Read, validate, detect and build. Raises WeightFileError / UnknownModelError with the file name;
    nothing about any previously loaded model is touched."""
    path = Path(path)
    return build_bundle(ema_only_view(open_weights(path)), path, plan, family_override=family_override,
                        prediction_override=prediction_override)


# The mixed plan (bf16 matmuls in the transformer blocks, devices.py) pays off at real models' width: an
# SD1.5 step ran ~1.3x faster (docs/benchmarks.md), while the 32-channel demo model ran ~5-10% slower.
MIXED_MIN_CHANNELS = 320


def build_bundle(
    sd: Mapping[str, Any],
    path: Path,
    plan: DevicePlan,
    *,
    family_override: str | None = None,
    prediction_override: str | None = None,
) -> ModelBundle:
    """Detect and build from an opened state dict (values: LazyTensors, tensors, or meta tensors)."""
    detection = detect(sd, path, family_override=family_override, prediction_override=prediction_override)
    family = detection.family

    with torch.device("meta"):
        unet = UNetModel(detection.unet_config, dtype=plan.unet_dtype)
        autoencoder = AutoencoderKL(detection.vae_config)
    if plan.transformer_dtype is not None and detection.unet_config.model_channels < MIXED_MIN_CHANNELS:
        plan = replace(plan, transformer_dtype=None)  # narrow layers: the casts cost more than bf16 saves
    mixed = dict.fromkeys(transformer_matmul_parameters(unet), plan.transformer_dtype) if plan.transformer_dtype else {}
    missing_unet, used_unet = assign_weights(unet, _prefixed(sd, UNET_PREFIX), plan.unet_dtype, plan.device,
                                             overrides=mixed)
    missing_vae, used_vae = assign_weights(autoencoder, _prefixed(sd, VAE_PREFIX), plan.vae_dtype, plan.device)
    text, text_used, text_missing = TextEncoderStack.from_state_dict(sd, family, plan)
    if text.context_dim != detection.unet_config.context_dim:
        raise WeightFileError(
            f"{path.name}: text encoders give {text.context_dim}-wide context but the UNet expects "
            f"{detection.unet_config.context_dim}: the file mixes parts of different models"
        )

    used = used_unet | used_vae | set(text_used)
    ignored, unexpected = [], []
    for key in sd.keys():
        if key in used:
            continue
        (ignored if _is_ignored(key) else unexpected).append(key)
    report = LoadReport(
        missing=tuple(UNET_PREFIX + k for k in missing_unet) + tuple(VAE_PREFIX + k for k in missing_vae)
        + tuple(text_missing),
        unexpected=tuple(unexpected),
        ignored=tuple(ignored),
    )
    if report.missing:
        shown = ", ".join(report.missing[:5])
        raise WeightFileError(
            f"{path.name}: incomplete {detection.label} checkpoint: {len(report.missing)} weights missing ({shown} …)"
        )
    vae = VAE(autoencoder, scaling=family.vae_scaling, shift=family.vae_shift, dtype=plan.vae_dtype, device=plan.device)
    metadata = getattr(sd, "metadata", {}) or {}
    return ModelBundle(path, detection, ModelPatcher(unet), text, vae, plan, report, metadata)
