"""The SSVI guide: :class:`MaskedAutoNormal`, its site plan and its initialization.

- :mod:`~pyro_ssvi.guides.sites`: which latents are weight sites (masked) and which are dense,
  per-site shapes and active counts (pure functions, shared with :mod:`pyro_ssvi.flops`);
- :mod:`~pyro_ssvi.guides.init`: picklable init strategies and the initial masks;
- :mod:`~pyro_ssvi.guides.flat`: one step's per-entry math of all weight sites on flat vectors;
- :mod:`~pyro_ssvi.guides.summary`: medians, quantiles and the per-site table;
- :mod:`~pyro_ssvi.guides.masked`: the guide itself.
"""

from .init import INIT_LOC_KEY, init_to_normal, initial_mask
from .masked import MaskedAutoNormal
from .sites import LatentInfo, SiteInfo, num_active_entries, plan_site, softplus_inverse

__all__ = [
    "INIT_LOC_KEY",
    "LatentInfo",
    "MaskedAutoNormal",
    "SiteInfo",
    "init_to_normal",
    "initial_mask",
    "num_active_entries",
    "plan_site",
    "softplus_inverse",
]
