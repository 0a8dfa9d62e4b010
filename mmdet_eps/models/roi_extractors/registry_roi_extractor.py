"""mmdet's SingleRoIExtractor, able to use RoI layers registered in mmdet's MODELS."""
from typing import List

from mmcv import ops
from mmdet.models.roi_heads.roi_extractors import SingleRoIExtractor
from mmdet.registry import MODELS
from mmdet.utils import ConfigType
from torch import nn


@MODELS.register_module()
class RegistryRoIExtractor(SingleRoIExtractor):
    """``SingleRoIExtractor`` whose ``roi_layer.type`` may also name a layer registered in mmdet's
    MODELS (such as ``DenseRoIAlign``); mmdet itself only looks names up in ``mmcv.ops``, which
    keep their meaning here.

    Args:
        roi_layer (dict): Config of the RoI layer: ``type`` names an ``mmcv.ops`` layer or one
            registered in mmdet's MODELS; the other keys are its arguments.
        out_channels (int): Channels of the input feature maps.
        featmap_strides (list[int]): Strides of the input feature maps.
        finest_scale (int): Scale threshold of the mapping to levels. Defaults to 56.
        init_cfg (dict or list[dict], optional): Initialization config. Defaults to None.
    """

    def build_roi_layers(self, layer_cfg: ConfigType,
                         featmap_strides: List[int]) -> nn.ModuleList:
        layer_type = layer_cfg['type']
        if isinstance(layer_type, str) and not hasattr(ops, layer_type):
            layer_cls = MODELS.get(layer_type)
            if layer_cls is None:
                raise KeyError(f'roi_layer.type={layer_type!r} is neither in mmcv.ops nor '
                               'registered in mmdet MODELS (is custom_imports set?)')
            layer_cfg = {**layer_cfg, 'type': layer_cls}
        return super().build_roi_layers(layer_cfg, featmap_strides)
