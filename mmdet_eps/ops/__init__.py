"""Compiled ops (``csrc/``): fused per-filter normalization and ε-shifted step for CPU tensors."""
from .fused_filter_normalize import (
                                     FUSED_AVAILABLE,
                                     fused_eps_shift_,
                                     fused_filter_moments,
                                     fused_normalize_filters,
                                     fused_normalize_filters_backward,
                                     fused_unsupported,
                                     offsets_of,
)

__all__ = [
    'FUSED_AVAILABLE', 'fused_unsupported', 'fused_normalize_filters',
    'fused_normalize_filters_backward', 'fused_filter_moments', 'fused_eps_shift_', 'offsets_of'
]
