"""Base class of the weight-normalization family of conv layers."""
import warnings
from typing import Optional, Protocol, Tuple

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


class NormalizedConv2d(nn.Conv2d):
    """A ``Conv2d`` that convolves with its weight normalized per output filter.

    Subclasses set ``norm_family`` (see ``norm_family.NORM_FAMILIES``). Alone, a layer normalizes
    its own weight in every forward. As a member of a :class:`~.filter_group.FilterGroup` (a
    WS-ResNet stage groups its convs), it takes its normalized weight from the group while the
    group holds one (for one forward of the group's region). Nothing is cached across calls: the
    weight is read afresh every forward, so every write to it is seen, and nothing is handed to
    the ε-shifted step, which computes from the parameter itself.

    Args:
        eps (float): Added to the per-filter scale (std for WS, norm for WN/CWN).
            Defaults to 1e-5.
        fused (bool, optional): Normalize alone with the fused CPU ops or torch ops (see
            ``filter_normalize.normalize_batch``; in a group, the group's setting applies).
            Defaults to None: fused where they apply.
        *args, **kwargs: As ``nn.Conv2d``.
    """

    norm_family: str = ''

    def __init__(self, *args, eps: float = 1e-5, fused: Optional[bool] = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fused = fused
        if not eps >= 0:
            raise ValueError(f'{type(self).__name__}: eps must be >= 0, got {eps}')
        self.eps = float(eps)
        #: The group this layer belongs to and its index there (set by the group).
        self.filter_group: Optional[WeightSource] = None
        self.group_index = 0
        self._spec: Optional[FilterNorm] = None
        n = fan_in(self.weight)
        if self.centered and n < 2:
            raise ValueError(f'{type(self).__name__} needs at least 2 elements per filter to '
                             f'standardize, got {n} (in_channels/groups * kernel area)')
        if self.in_channels // self.groups == 1 or n < MIN_FAN_IN:
            warnings.warn(
                f'{type(self).__name__}({self.in_channels}, {self.out_channels}, '
                f'groups={self.groups}) has {n} elements per filter: the paper found weight '
                'normalization of depthwise / tiny-fan-in convs harmful (Sec. 6.7); '
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
        return True

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
        return self._conv_forward(x, self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, eps={self.eps}'
