"""Pyro effect handlers used by SSVI (one messenger per module, a lowercase handler for each)."""

from .lrt import LRTMessenger, lrt
from .mask_prior import MaskPriorMessenger, mask_prior
from .scale_latents import ScaleLatentsMessenger, scale_latents
from .weights import RetainWeightGradsMessenger, UseMeansMessenger, use_means

__all__ = [
    "LRTMessenger",
    "MaskPriorMessenger",
    "RetainWeightGradsMessenger",
    "ScaleLatentsMessenger",
    "UseMeansMessenger",
    "lrt",
    "mask_prior",
    "scale_latents",
    "use_means",
]
