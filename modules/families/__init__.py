"""Model families, tried in order; the first whose UNet shape signature matches wins."""
from .base import UNET_PREFIX, VAE_PREFIX, VARIANTS_BY_IN_CHANNELS, Family, TextEncoderSlot
from .sd1 import SD1
from .sd2 import SD2
from .sdxl import SDXL, SDXL_REFINER

FAMILIES: tuple[Family, ...] = (SD1, SD2, SDXL, SDXL_REFINER)
FAMILIES_BY_NAME = {f.name: f for f in FAMILIES}

__all__ = [
    "FAMILIES",
    "FAMILIES_BY_NAME",
    "Family",
    "TextEncoderSlot",
    "SD1",
    "SD2",
    "SDXL",
    "SDXL_REFINER",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "VARIANTS_BY_IN_CHANNELS",
]
