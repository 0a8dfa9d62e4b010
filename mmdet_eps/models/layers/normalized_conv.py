"""Base class of the weight-normalization family of conv layers."""
import warnings
from typing import Optional, Protocol, Set, Tuple

from mmengine.logging import MMLogger
from torch import Tensor, nn

from .filter_normalize import FilterNorm, normalize_batch
from .filter_stats import fan_in
from .norm_family import is_centered, scale_divisor


class WeightSource(Protocol):
    """What a grouped layer takes its normalized weight from (``filter_group.FilterGroup``):
    the members' normalized weights during one forward of the group's region, else None."""
    weights: Optional[Tuple[Tensor, ...]]

#: Filters with fewer elements than this give noisy statistics (paper Sec. 6.7, Table IX).
MIN_FAN_IN = 16
#: (logger, layer class) pairs already told that depthwise convs are left plain.
_TOLD_PLAIN_DEPTHWISE: Set[Tuple[str, str]] = set()


def is_depthwise(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` filters each input channel on its own (groups == in_channels > 1)."""
    return conv.groups == conv.in_channels > 1


def _log_plain_depthwise(layer: str) -> None:
    """Say once per logger (once per run) that ``layer``'s depthwise convs are left plain."""
    logger = MMLogger.get_current_instance()
    if (logger.instance_name, layer) in _TOLD_PLAIN_DEPTHWISE:
        return
    _TOLD_PLAIN_DEPTHWISE.add((logger.instance_name, layer))
    logger.info(f'{layer}: depthwise convs (groups == in_channels > 1) convolve with their raw '
                'weights and get plain weight decay, as in the paper (Sec. 6.7, Table IX); '
                'normalize_depthwise=True in conv_cfg normalizes them too.')


class NormalizedConv2d(nn.Conv2d):
    """A ``Conv2d`` that convolves with its weight normalized per output filter.

    Subclasses set ``norm_family`` (see ``norm_family.NORM_FAMILIES``). Alone, a layer normalizes
    its own weight in every forward. As a member of a :class:`~.filter_group.FilterGroup` (a
    WS-ResNet stage groups its convs), it takes its normalized weight from the group while the
    group holds one (for one forward of the group's region). Nothing is cached across calls: the
    weight is read afresh every forward, so every write to it is seen, and nothing is handed to
    the ε-shifted step, which computes from the parameter itself.

    A depthwise conv (``groups == in_channels > 1``) is left plain by default, as in the paper
    (Sec. 6.7, Table IX: normalizing filters of 9-25 elements costs accuracy): it convolves with
    its raw weight, and :func:`~.norm_family.get_norm_family` reports no family, so it gets plain
    weight decay and joins no group.

    Args:
        eps (float): Added to the per-filter scale (std for WS, norm for WN/CWN).
            Defaults to 1e-5.
        fused (bool, optional): Normalize alone with the fused CPU ops or torch ops (see
            ``filter_normalize.normalize_batch``; in a group, the group's setting applies).
            Defaults to None: fused where they apply.
        normalize_depthwise (bool): Normalize a depthwise conv too (WSConv: mmcv ``ConvWS2d``
            numerics). Defaults to False.
        *args, **kwargs: As ``nn.Conv2d``.
    """

    norm_family: str = ''
    #: Whether the forward normalizes the weight (False: a depthwise conv left plain).
    normalizes: bool = True

    def __init__(self, *args, eps: float = 1e-5, fused: Optional[bool] = None,
                 normalize_depthwise: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fused = fused
        if not eps >= 0:
            raise ValueError(f'{type(self).__name__}: eps must be >= 0, got {eps}')
        self.eps = float(eps)
        if not isinstance(normalize_depthwise, bool):
            raise ValueError(f'{type(self).__name__}: normalize_depthwise must be True or False, '
                             f'got {normalize_depthwise!r}')
        self.normalizes = normalize_depthwise or not is_depthwise(self)
        #: The group this layer belongs to and its index there (set by the group).
        self.filter_group: Optional[WeightSource] = None
        self.group_index = 0
        self._spec: Optional[FilterNorm] = None
        n = fan_in(self.weight)
        if not self.normalizes:
            _log_plain_depthwise(type(self).__name__)
        elif self.centered and n < 2:
            raise ValueError(f'{type(self).__name__} needs at least 2 elements per filter to '
                             f'standardize, got {n} (in_channels/groups * kernel area)')
        elif n < MIN_FAN_IN and not is_depthwise(self):
            warnings.warn(
                f'{type(self).__name__}({self.in_channels}, {self.out_channels}, '
                f'groups={self.groups}) has {n} elements per filter: the paper found weight '
                'normalization of tiny-fan-in convs harmful (Sec. 6.7); '
                'consider a plain conv here.', stacklevel=2)

    @property
    def centered(self) -> bool:
        """Whether the filter mean is subtracted."""
        return is_centered(self.norm_family)

    @property
    def divisor(self) -> int:
        """``D`` of the scale ``||u|| / sqrt(D)`` this layer divides by (before ``eps``)."""
        return scale_divisor(self.norm_family, fan_in(self.weight))

    @property
    def groupable(self) -> bool:
        """Whether the plain normalized weight is all this layer convolves with, so that it can
        be normalized together with others."""
        return self.normalizes

    def filter_norm(self) -> FilterNorm:
        """This layer's normalization settings, rebuilt only when they change."""
        spec = self._spec
        divisor = self.divisor
        if spec is None or spec.eps != self.eps or spec.divisor != divisor:
            spec = self._spec = FilterNorm.build(fan_in(self.weight), self.eps, self.centered,
                                                 divisor)
        return spec

    def group_key(self) -> tuple:
        """Layers normalized together must agree on this."""
        return (self.filter_norm()[:3], tuple(self.weight.shape[1:]))

    def normalize(self, weight: Tensor) -> Tensor:
        """``weight`` normalized per filter: what this layer convolves with."""
        return normalize_batch([self.filter_norm()], [[weight]], self.fused)[0][0]

    def normalized_weight(self) -> Tensor:
        """This layer's normalized weight: its group's while the group holds one, else computed
        now."""
        group = self.filter_group
        if group is not None and group.weights is not None:
            return group.weights[self.group_index]
        return self.normalize(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.normalized_weight() if self.normalizes else self.weight
        return self._conv_forward(x, weight, self.bias)

    def extra_repr(self) -> str:
        plain = '' if self.normalizes else ', normalizes=False'
        return f'{super().extra_repr()}, eps={self.eps}{plain}'
