"""Weight-standardized convolution (Qiao et al.), the layer the paper regularizes."""
from mmdet.registry import MODELS
from torch import Tensor

from .filter_normalize import standardize_filters
from .normalized_conv import NormalizedConv2d


@MODELS.register_module()
class WSConv(NormalizedConv2d):
    """Conv2d with each output filter standardized to ``(W - m) / (std + eps)``.

    The defaults (unbiased std, ``eps=1e-5`` added to the std) equal mmcv's ``ConvWS2d``, so the
    authors' ImageNet WS-ResNets and mmdet's GN+WS checkpoints keep their function;
    ``unbiased=False`` gives the paper's population-std form.
    """

    norm_family = 'ws'

    def __init__(self, *args, eps: float = 1e-5, unbiased: bool = True, **kwargs) -> None:
        self.unbiased = unbiased
        super().__init__(*args, eps=eps, **kwargs)

    def normalize(self, weight: Tensor) -> Tensor:
        return standardize_filters(weight, self.eps, correction=int(self.unbiased))

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, unbiased={self.unbiased}'
