"""ResNet and ResNeXt with weight-standardized convolutions.

Thin subclasses of mmdet's backbones: same arguments, same state-dict keys; the default
``conv_cfg`` differs, and the normalized convs are normalized in groups (``group_by``), a few
kernels per group instead of a few per conv.
"""
from typing import List, Optional

from mmdet.models.backbones import ResNet, ResNeXt
from mmdet.registry import MODELS
from mmdet.utils import ConfigType
from torch import nn

from mmdet_eps.models.layers import FilterGroups, group_normalized_convs

#: ``'stage'``: one set of groups per residual stage (DDP overlap kept); ``'backbone'``: one for
#: the whole backbone (fewest groups); None: every conv normalizes itself.
GROUP_BY = ('stage', 'backbone', None)


class _GroupedNormMixin:
    """Attaches :class:`FilterGroups` to the backbone's stages or to the whole backbone."""

    def _group_convs(self, group_by: Optional[str]) -> None:
        if group_by not in GROUP_BY:
            raise ValueError(f'{type(self).__name__}: group_by must be one of {GROUP_BY}, '
                             f'got {group_by!r}')
        self.group_by = group_by
        regions: List[nn.Module] = []
        if group_by == 'stage':
            regions = [getattr(self, name) for name in self.res_layers]
        elif group_by == 'backbone':
            regions = [self]
        self.filter_groups: List[FilterGroups] = group_normalized_convs(regions)


def _ws_conv_cfg(conv_cfg: Optional[ConfigType]) -> ConfigType:
    return dict(type='WSConv') if conv_cfg is None else conv_cfg


@MODELS.register_module()
class WSResNet(_GroupedNormMixin, ResNet):
    """mmdet's ResNet (depths 18-152) with ``WSConv`` as its default conv.

    Args:
        conv_cfg (dict, optional): Conv layer config. Defaults to ``dict(type='WSConv')``.
        group_by (str, optional): How the normalized convs are batched: ``'stage'`` (one
            autograd node per filter shape and stage, so DDP can all-reduce a stage's gradients
            while earlier stages run their backward), ``'backbone'`` (per filter shape over the
            whole backbone: fewest ops) or None (each conv alone). The stem conv normalizes
            itself under ``'stage'``. Defaults to ``'stage'``.
        *args, **kwargs: As mmdet's ``ResNet``.
    """

    def __init__(self, *args, conv_cfg: Optional[ConfigType] = None,
                 group_by: Optional[str] = 'stage', **kwargs) -> None:
        super().__init__(*args, conv_cfg=_ws_conv_cfg(conv_cfg), **kwargs)
        self._group_convs(group_by)


@MODELS.register_module()
class WSResNeXt(_GroupedNormMixin, ResNeXt):
    """mmdet's ResNeXt (``groups``, ``base_width``) with ``WSConv`` as its default conv.

    Args:
        conv_cfg (dict, optional): Conv layer config. Defaults to ``dict(type='WSConv')``.
        group_by (str, optional): As :class:`WSResNet`. Defaults to ``'stage'``.
        *args, **kwargs: As mmdet's ``ResNeXt``.
    """

    def __init__(self, *args, conv_cfg: Optional[ConfigType] = None,
                 group_by: Optional[str] = 'stage', **kwargs) -> None:
        super().__init__(*args, conv_cfg=_ws_conv_cfg(conv_cfg), **kwargs)
        self._group_convs(group_by)
