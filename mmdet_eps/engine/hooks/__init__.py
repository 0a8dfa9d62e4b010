"""Training hooks: the weight-normalization stability monitor."""
from .weight_norm_stats_hook import WeightNormStatsHook, layer_stats

__all__ = ['WeightNormStatsHook', 'layer_stats']
