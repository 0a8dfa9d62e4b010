"""ResNet and ResNeXt with weight-standardized convolutions.

Thin subclasses of mmdet's backbones: same arguments, same state-dict keys, only the default
``conv_cfg`` differs, so any member of the family is one ``conv_cfg=dict(type=...)`` away.
"""
from typing import Optional

from mmdet.models.backbones import ResNet, ResNeXt
from mmdet.registry import MODELS
from mmdet.utils import ConfigType


def _ws_conv_cfg(conv_cfg: Optional[ConfigType]) -> ConfigType:
    return dict(type='WSConv') if conv_cfg is None else conv_cfg


@MODELS.register_module()
class WSResNet(ResNet):
    """mmdet's ResNet (depths 18-152) with ``WSConv`` as its default conv."""

    def __init__(self, *args, conv_cfg: Optional[ConfigType] = None, **kwargs) -> None:
        super().__init__(*args, conv_cfg=_ws_conv_cfg(conv_cfg), **kwargs)


@MODELS.register_module()
class WSResNeXt(ResNeXt):
    """mmdet's ResNeXt (``groups``, ``base_width``) with ``WSConv`` as its default conv."""

    def __init__(self, *args, conv_cfg: Optional[ConfigType] = None, **kwargs) -> None:
        super().__init__(*args, conv_cfg=_ws_conv_cfg(conv_cfg), **kwargs)
