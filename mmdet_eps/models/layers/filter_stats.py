"""Per-filter statistics of a conv weight: the one place they are computed.

The layers, the ε-shifted regularizer and the stability hook all derive their numbers from
:func:`filter_moments`, so they can never disagree and one faster kernel speeds all three.
"""
from typing import Tuple

import torch
from torch import Tensor


def filter_moments(weight: Tensor, correction: int = 0) -> Tuple[Tensor, Tensor]:
    """Mean and variance of each output filter, shaped ``(C_out, 1, ..., 1)``.

    One fused ``var_mean`` pass; ``correction=0`` is the population variance the paper uses,
    ``correction=1`` the unbiased one of mmcv's ``ConvWS2d``.
    """
    flat = weight.reshape(weight.shape[0], -1)
    var, mean = torch.var_mean(flat, dim=1, correction=correction, keepdim=True)
    shape = (weight.shape[0], ) + (1, ) * (weight.dim() - 1)
    return mean.view(shape), var.view(shape)


def fan_in(weight: Tensor) -> int:
    """Number of elements n in one output filter."""
    return weight[0].numel()


def filter_norm(weight: Tensor, centered: bool) -> Tensor:
    """``||W - m||`` (centered, from the population variance) or ``||W||`` per filter."""
    if centered:
        _, var = filter_moments(weight)
        return (var * fan_in(weight)).sqrt()
    flat = weight.reshape(weight.shape[0], -1)
    norm = torch.linalg.vector_norm(flat, dim=1)
    return norm.view((weight.shape[0], ) + (1, ) * (weight.dim() - 1))
