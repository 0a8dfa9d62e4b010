"""Base class of the weight-normalization family of conv layers."""
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .filter_stats import fan_in

#: Filters with fewer elements than this give noisy statistics (paper Sec. 6.7, Table IX).
MIN_FAN_IN = 16


class NormalizedConv2d(nn.Conv2d):
    """A ``Conv2d`` that convolves with ``normalize(weight)`` instead of ``weight``.

    Subclasses set ``norm_family`` (see ``norm_family.NORM_FAMILIES``) and implement
    :meth:`normalize`. In eval mode under ``torch.no_grad`` the normalized weight is cached
    until the weight changes, so inference costs the same as a plain conv.
    """

    norm_family: str = ''
    #: Whether ``normalize`` subtracts the filter mean (its output is undefined for n = 1).
    centered: bool = True

    def __init__(self, *args, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if eps < 0:
            raise ValueError(f'{type(self).__name__}: eps must be >= 0, got {eps}')
        self.eps = eps
        self._cache: Optional[Tuple[tuple, Tensor]] = None
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

    def normalize(self, weight: Tensor) -> Tensor:
        """The normalized weight that the convolution uses."""
        raise NotImplementedError

    def normalized_weight(self) -> Tensor:
        """``normalize(weight)``, cached while the module is frozen for inference.

        The cache is keyed by the weight's version counter (bumped by every in-place write:
        optimizer steps, ``load_state_dict``) and data pointer (a new tensor: ``.to()``,
        ``.half()``); the check costs two attribute reads, so eval costs what a plain conv does.
        """
        w = self.weight
        if self.training or torch.is_grad_enabled():
            if self._cache is not None:
                self._cache = None
            return self.normalize(w)
        key = (w._version, w.data_ptr())
        cache = self._cache
        if cache is None or cache[0] != key:
            cache = self._cache = (key, self.normalize(w))
        return cache[1]

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, eps={self.eps}'
