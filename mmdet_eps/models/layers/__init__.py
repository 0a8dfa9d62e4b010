"""The weight-normalization family of conv layers, their per-filter statistics and the grouped
normalization that batches many of them."""
from .filter_group import FilterGroup, FilterGroups
from .filter_normalize import (
                               FilterNorm,
                               normalize_batch,
                               normalize_filter_batch,
                               normalize_filters,
                               standardize_filters,
)
from .filter_stats import fan_in, filter_moments, filter_norm, unit_filters
from .norm_family import NORM_FAMILIES, check_family, get_norm_family, is_centered, scale_divisor
from .normalized_conv import NormalizedConv2d
from .wn_conv import CWNConv, WNConv
from .ws_conv import WSConv

__all__ = [
    'FilterGroup', 'FilterGroups', 'FilterNorm', 'normalize_batch',
    'normalize_filter_batch',
    'normalize_filters', 'standardize_filters', 'fan_in', 'filter_moments', 'filter_norm',
    'unit_filters', 'NORM_FAMILIES', 'check_family', 'get_norm_family',
    'is_centered', 'scale_divisor', 'NormalizedConv2d', 'WSConv', 'WNConv', 'CWNConv'
]
