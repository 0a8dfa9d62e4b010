"""The weight-normalization family: which modules hold normalized conv weights, and what each
family divides by. The one place the families are defined.

Per output filter with ``n`` elements, ``u = W - m`` (centered families) or ``u = W`` (WN), and
the family's scale is ``||u|| / sqrt(D)``:

- ``'ws'``  (W - m) / std:       centered, ``D = n`` (population std; ``n - 1`` unbiased)
- ``'cwn'`` (W - m) / ||W - m||: centered, ``D = 1``
- ``'wn'``  W / ||W||:           not centered, ``D = 1``

The layers normalize by this scale (plus their ``eps``), the ε-shifted regularizer shifts it
towards ε and the stability hook watches it, so the three can never disagree.
"""
from typing import Optional, Type, Union

from mmcv.cnn.bricks.conv_ws import ConvAWS2d, ConvWS2d
from torch import nn

NORM_FAMILIES = ('ws', 'wn', 'cwn')
#: Families whose filters are centered (mean subtracted) before scaling.
CENTERED_FAMILIES = ('ws', 'cwn')


def check_family(family: str) -> str:
    """``family`` if it names a member of :data:`NORM_FAMILIES`, else ``ValueError``."""
    if family not in NORM_FAMILIES:
        raise ValueError(f'family must be one of {NORM_FAMILIES}, got {family!r}')
    return family


def is_centered(family: str) -> bool:
    """Whether ``family`` subtracts the filter mean (WS, CWN) or not (WN)."""
    return check_family(family) in CENTERED_FAMILIES


def scale_divisor(family: str, n: int, correction: int = 0) -> int:
    """``D`` of the family's per-filter scale ``||u|| / sqrt(D)`` for filters of ``n`` elements
    (``correction=1``: WS's unbiased std, as mmcv's ``ConvWS2d`` and the authors' code)."""
    if check_family(family) == 'ws':
        if n - correction < 1:
            raise ValueError(f'a std with correction {correction} needs filters of more than '
                             f'{correction} element(s), got {n}')
        return n - correction
    return 1


def get_norm_family(module: Union[nn.Module, Type[nn.Module]]) -> Optional[str]:
    """The family of ``module``'s normalized ``weight`` (a module or a module class), or None for
    an ordinary one, or a normalized conv that leaves its weight plain (``normalizes`` False: a
    depthwise conv, paper Sec. 6.7).

    The optimizer constructor, the stability hook and the bake tool ask this, never the tensor
    rank, so plain FPN/RPN/head convs keep ordinary weight decay.
    """
    family = getattr(module, 'norm_family', None)
    if family:
        return family if getattr(module, 'normalizes', True) else None
    cls = module if isinstance(module, type) else type(module)
    if issubclass(cls, (ConvWS2d, ConvAWS2d)):
        return 'ws'
    return None
