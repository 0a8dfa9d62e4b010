"""Weight initializers: mmengine's ``Pretrained`` guarded against weights trained without WS."""
from .pretrained_guard import (
    GuardedPretrainedInit,
    NonWSWeightsError,
    checkpoint_trained_with_ws,
    source_trained_with_ws,
    ws_conv_weight_keys,
)

__all__ = [
    'GuardedPretrainedInit', 'NonWSWeightsError', 'checkpoint_trained_with_ws',
    'source_trained_with_ws', 'ws_conv_weight_keys'
]
