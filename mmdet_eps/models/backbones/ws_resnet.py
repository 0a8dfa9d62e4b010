"""ResNet and ResNeXt with weight-standardized convolutions.

Thin subclasses of mmdet's backbones: same arguments, same state-dict keys; the default
``conv_cfg`` differs, and the normalized convs are normalized in groups (``group_by``), a few
kernels per group instead of a few per conv.
"""
from typing import List, Optional, Tuple

from mmdet.models.backbones import ResNet, ResNeXt
from mmdet.registry import MODELS
from mmdet.utils import ConfigType
from torch import nn

from .grouped_norm import GroupedNormMixin, ws_conv_cfg


class _ResNetStages(GroupedNormMixin):
    """ResNet's stages for ``group_by='stage'``: the stem with the first residual stage."""

    def _stage_regions(self) -> Tuple[List[nn.Module], List[nn.Module]]:
        stages = [getattr(self, name) for name in self.res_layers]
        stem = [getattr(self, 'stem' if self.deep_stem else 'conv1')]
        return stem + stages[:1], stages[1:]


@MODELS.register_module()
class WSResNet(_ResNetStages, ResNet):
    """mmdet's ResNet (depths 18-152) with ``WSConv`` as its default conv.

    Args:
        conv_cfg (dict, optional): Conv layer config. Defaults to ``dict(type='WSConv')``.
        group_by (str, optional): How the normalized convs are batched (per filter shape, one
            autograd node per region): ``'stage'`` (a region per residual stage, the stem with
            the first: DDP all-reduces a stage's gradients while earlier stages run their
            backward), ``'backbone'`` (one region: fewest ops), None (each conv alone) or
            ``'auto'`` (``'stage'`` if built in a distributed run of several processes, else
            ``'backbone'``). Defaults to ``'auto'``.
        fused (bool, optional): Normalize with the fused CPU ops (one op forward and one
            backward per region, ``mmdet_eps.ops``) or torch ops (a few per filter shape, any
            device). Defaults to None: fused where they apply (CPU weights, extension built).
        *args, **kwargs: As mmdet's ``ResNet``.
    """

    def __init__(self, *args, conv_cfg: Optional[ConfigType] = None,
                 group_by: Optional[str] = 'auto', fused: Optional[bool] = None,
                 **kwargs) -> None:
        super().__init__(*args, conv_cfg=ws_conv_cfg(conv_cfg), **kwargs)
        self._group_convs(group_by, fused)


@MODELS.register_module()
class WSResNeXt(_ResNetStages, ResNeXt):
    """mmdet's ResNeXt (``groups``, ``base_width``) with ``WSConv`` as its default conv.

    Args:
        conv_cfg (dict, optional): Conv layer config. Defaults to ``dict(type='WSConv')``.
        group_by (str, optional): As :class:`WSResNet`. Defaults to ``'auto'``.
        fused (bool, optional): As :class:`WSResNet`. Defaults to None.
        *args, **kwargs: As mmdet's ``ResNeXt``.
    """

    def __init__(self, *args, conv_cfg: Optional[ConfigType] = None,
                 group_by: Optional[str] = 'auto', fused: Optional[bool] = None,
                 **kwargs) -> None:
        super().__init__(*args, conv_cfg=ws_conv_cfg(conv_cfg), **kwargs)
        self._group_convs(group_by, fused)
