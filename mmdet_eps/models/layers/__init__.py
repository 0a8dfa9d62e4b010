"""The weight-normalization family of conv layers and their per-filter statistics."""
from .filter_stats import fan_in, filter_moments, filter_norm
from .norm_family import NORM_FAMILIES, get_norm_family
from .normalized_conv import NormalizedConv2d
from .wn_conv import CWNConv, WNConv
from .ws_conv import WSConv

__all__ = [
    'fan_in', 'filter_moments', 'filter_norm', 'NORM_FAMILIES', 'get_norm_family',
    'NormalizedConv2d', 'WSConv', 'WNConv', 'CWNConv'
]
