"""Pyro effect handlers used by SSVI (one messenger per module, a lowercase handler for each)."""

from .lrt import LRTMessenger, lrt, lrt_noise
from .mask_prior import MaskPriorMessenger, mask_prior
from .scale_latents import ScaleLatentsMessenger, scale_latents
from .skip_draws import DrawNeeded, SkipDrawsMessenger, SkippedDraw
from .weights import RetainWeightGradsMessenger, UseMeansMessenger, UseValuesMessenger, use_means

__all__ = [
    "DrawNeeded",
    "LRTMessenger",
    "MaskPriorMessenger",
    "RetainWeightGradsMessenger",
    "ScaleLatentsMessenger",
    "SkipDrawsMessenger",
    "SkippedDraw",
    "UseMeansMessenger",
    "UseValuesMessenger",
    "lrt",
    "lrt_noise",
    "mask_prior",
    "scale_latents",
    "use_means",
]
