"""CSPNeXt (RTMDet's backbone) with weight-standardized convolutions.

mmdet's CSPNeXt hands ``conv_cfg`` to most of its ``ConvModule``s but not to the stem's nor to
each block's ``conv1``; :class:`WSCSPNeXt` builds mmdet's network, then gives those the same conv
layer, so every conv followed by a norm layer is a WS conv. Same arguments and state-dict keys as
mmdet's CSPNeXt.
"""
from typing import List, Optional, Tuple

from mmcv.cnn import ConvModule, build_conv_layer
from mmdet.models.backbones import CSPNeXt
from mmdet.registry import MODELS
from mmdet.utils import ConfigType
from torch import nn

from .grouped_norm import GroupedNormMixin, ws_conv_cfg


def replace_plain_convs(module: nn.Module, conv_cfg: ConfigType) -> None:
    """Rebuild the plain ``nn.Conv2d`` of every ``ConvModule`` in ``module`` as ``conv_cfg``
    says, with the same shape, settings and weights."""
    for conv_module in module.modules():
        if not isinstance(conv_module, ConvModule) or type(conv_module.conv) is not nn.Conv2d:
            continue
        plain = conv_module.conv
        conv = build_conv_layer(
            conv_cfg, plain.in_channels, plain.out_channels, plain.kernel_size,
            stride=plain.stride, padding=plain.padding, dilation=plain.dilation,
            groups=plain.groups, bias=plain.bias is not None, padding_mode=plain.padding_mode)
        conv.load_state_dict(plain.state_dict())
        conv_module.conv = conv


@MODELS.register_module()
class WSCSPNeXt(GroupedNormMixin, CSPNeXt):
    """mmdet's CSPNeXt with ``WSConv`` in every ``ConvModule``, the stem and each block's
    ``conv1`` included.

    Depthwise convs (the blocks' 5x5 ``DepthwiseSeparableConvModule``) get the same conv layer,
    which leaves them unnormalized by default (paper Sec. 6.7). The channel-attention ``fc``
    (a 1x1 conv on pooled features, with no norm after it) stays a plain conv, as fc layers do
    in the paper.

    Args:
        conv_cfg (dict, optional): Conv layer config of every ``ConvModule``. Defaults to
            ``dict(type='WSConv')``.
        group_by (str, optional): As :class:`WSResNet`, a region per stage being the stem
            with ``stage1``, then ``stage2``, ... Defaults to ``'auto'``.
        fused (bool, optional): As :class:`WSResNet`. Defaults to None.
        *args, **kwargs: As mmdet's ``CSPNeXt``.
    """

    def __init__(self, *args, conv_cfg: Optional[ConfigType] = None,
                 group_by: Optional[str] = 'auto', fused: Optional[bool] = None,
                 **kwargs) -> None:
        conv_cfg = ws_conv_cfg(conv_cfg)
        super().__init__(*args, conv_cfg=conv_cfg, **kwargs)
        replace_plain_convs(self, conv_cfg)
        self._group_convs(group_by, fused)

    def _stage_regions(self) -> Tuple[List[nn.Module], List[nn.Module]]:
        stem, *stages = [getattr(self, name) for name in self.layers]
        return [stem] + stages[:1], stages[1:]
