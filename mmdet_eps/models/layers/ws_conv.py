"""Weight-standardized convolution (Qiao et al.), the layer the paper regularizes."""
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.registry import MODELS

from .filter_stats import fan_in
from .norm_family import scale_divisor
from .normalized_conv import NormalizedConv2d


@MMDET_MODELS.register_module()  # mmdet's own names ('mmdet.X') keep working
@MODELS.register_module()  # root: found from every toolbox's scope, or none
class WSConv(NormalizedConv2d):
    """Conv2d with each output filter standardized to ``(W - m) / (std + eps)``.

    The defaults equal mmcv's ``ConvWS2d``, so the authors' ImageNet WS-ResNets and mmdet's GN+WS
    checkpoints keep their function; except that a depthwise conv is left plain, as in the paper
    (``normalize_depthwise=True`` standardizes it as ``ConvWS2d`` does).

    Args:
        eps (float): Added to the std. Defaults to 1e-5.
        unbiased (bool): Unbiased std (divisor n - 1, mmcv and the authors' code) or the
            population std of the paper (divisor n). Defaults to True.
        *args, **kwargs: As :class:`NormalizedConv2d` (``normalize_depthwise``) and
            ``nn.Conv2d``.
    """

    norm_family = 'ws'

    def __init__(self, *args, eps: float = 1e-5, unbiased: bool = True, **kwargs) -> None:
        self.unbiased = bool(unbiased)
        super().__init__(*args, eps=eps, **kwargs)

    @property
    def divisor(self) -> int:
        return scale_divisor('ws', fan_in(self.weight), int(self.unbiased))

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, unbiased={self.unbiased}'
