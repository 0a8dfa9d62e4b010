"""Compiled ops (``csrc/``): fused per-filter normalization and ε-shifted step for CPU tensors,
and the one decision between them and torch ops (``dispatch``)."""
from .dispatch import Impl, exporting, select_impl
from .fused_filter_normalize import (
                                     FUSED_AVAILABLE,
                                     fused_eps_shift_,
                                     fused_normalize_filters,
                                     fused_normalize_filters_backward,
                                     fused_unsupported,
                                     offsets_of,
)

__all__ = [
    'FUSED_AVAILABLE', 'Impl', 'exporting', 'select_impl', 'fused_unsupported',
    'fused_normalize_filters', 'fused_normalize_filters_backward', 'fused_eps_shift_',
    'offsets_of'
]
