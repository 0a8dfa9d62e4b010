"""Weight-normalized (W/||W||) and centered weight-normalized convolutions."""
from typing import Optional

import torch
from mmdet.registry import MODELS
from torch import Tensor, nn

from .filter_normalize import normalize_filters
from .normalized_conv import NormalizedConv2d


@MODELS.register_module()
class WNConv(NormalizedConv2d):
    """Conv2d with each output filter scaled to unit norm, ``W / (||W|| + eps)``.

    With ``gain=True`` a learnable per-filter scale (initialised to 1) multiplies the result, as in
    Salimans & Kingma's weight normalization.
    """

    norm_family = 'wn'
    centered = False

    def __init__(self, *args, eps: float = 1e-5, gain: bool = False, **kwargs) -> None:
        super().__init__(*args, eps=eps, **kwargs)
        self.gain: Optional[nn.Parameter] = (
            nn.Parameter(torch.ones(self.out_channels)) if gain else None)

    def normalize(self, weight: Tensor) -> Tensor:
        out = normalize_filters(weight, self.eps, centered=False)
        if self.gain is not None:
            out = out * self.gain.view(-1, *(1, ) * (weight.dim() - 1))
        return out


@MODELS.register_module()
class CWNConv(NormalizedConv2d):
    """Conv2d with each output filter centered and scaled to unit norm,
    ``(W - m) / (||W - m|| + eps)``."""

    norm_family = 'cwn'

    def normalize(self, weight: Tensor) -> Tensor:
        return normalize_filters(weight, self.eps, centered=True)
