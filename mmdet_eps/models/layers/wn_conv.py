"""Weight-normalized (W/||W||) and centered weight-normalized convolutions."""
from typing import Optional

import torch
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.registry import MODELS
from torch import Tensor, nn

from .normalized_conv import NormalizedConv2d


@MMDET_MODELS.register_module()  # mmdet's own names ('mmdet.X') keep working
@MODELS.register_module()  # root: found from every toolbox's scope, or none
class WNConv(NormalizedConv2d):
    """Conv2d with each output filter scaled to unit norm, ``W / (||W|| + eps)``.

    Args:
        eps (float): Added to the norm. Defaults to 1e-5.
        gain (bool): Multiply by a learnable per-filter scale initialised to 1, as in Salimans
            & Kingma's weight normalization (not on a depthwise conv left plain). Defaults to
            False.
        *args, **kwargs: As :class:`NormalizedConv2d` (``normalize_depthwise``) and
            ``nn.Conv2d``.
    """

    norm_family = 'wn'

    def __init__(self, *args, eps: float = 1e-5, gain: bool = False, **kwargs) -> None:
        super().__init__(*args, eps=eps, **kwargs)
        self.gain: Optional[nn.Parameter] = (
            nn.Parameter(torch.ones(self.out_channels)) if gain and self.normalizes else None)

    @property
    def groupable(self) -> bool:
        return super().groupable and self.gain is None

    def _scaled(self, out: Tensor) -> Tensor:
        if self.gain is None:
            return out
        return out * self.gain.view(-1, *(1, ) * (out.dim() - 1))

    def normalize(self, weight: Tensor) -> Tensor:
        return self._scaled(super().normalize(weight))


@MMDET_MODELS.register_module()  # mmdet's own names ('mmdet.X') keep working
@MODELS.register_module()  # root: found from every toolbox's scope, or none
class CWNConv(NormalizedConv2d):
    """Conv2d with each output filter centered and scaled to unit norm,
    ``(W - m) / (||W - m|| + eps)``.

    Args:
        eps (float): Added to the norm. Defaults to 1e-5.
        *args, **kwargs: As :class:`NormalizedConv2d` (``normalize_depthwise``) and
            ``nn.Conv2d``.
    """

    norm_family = 'cwn'
