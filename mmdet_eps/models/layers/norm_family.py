"""Which modules hold weight-normalized conv weights, and of which family.

The optimizer constructor and the stability hook ask this, never the tensor rank, so plain
FPN/RPN/head convs keep ordinary weight decay.
"""
from typing import Optional

from mmcv.cnn.bricks.conv_ws import ConvAWS2d, ConvWS2d
from torch import nn

#: ``'ws'``: (W - m) / std; ``'wn'``: W / ||W||; ``'cwn'``: (W - m) / ||W - m||.
NORM_FAMILIES = ('ws', 'wn', 'cwn')


def get_norm_family(module: nn.Module) -> Optional[str]:
    """The family of ``module``'s normalized ``weight``, or None for an ordinary module."""
    family = getattr(module, 'norm_family', None)
    if family is not None:
        return family
    if isinstance(module, (ConvWS2d, ConvAWS2d)):
        return 'ws'
    return None
