"""Per-filter statistics of a conv weight, computed from the weight as it is.

Unit filters: ``sqrt(n) * u / ||u||`` per output filter (``u = W - m``, or ``W`` for WN), the
direction of ``u`` at a fixed scale. The ε-shifted gradient is ``λ W - λ ε sqrt(D / n) * unit``
(see ``engine/optimizers/eps_shifted_regularizer``): the step computes them from the
parameters when it runs, as torch's weight decay reads the weights, so every write to a weight
before the step is seen and nothing passes from a forward to the step.
"""
import math
from typing import Tuple

import torch
from torch import Tensor


def fan_in(weight: Tensor) -> int:
    """Number of elements n in one output filter (from the shape: no tensor op)."""
    return math.prod(weight.shape[1:])


def filter_dims(weight: Tensor) -> Tuple[int, ...]:
    """The dims of one filter: every dim but the first."""
    return tuple(range(1, weight.dim()))


def filter_moments(weight: Tensor, correction: int = 0) -> Tuple[Tensor, Tensor]:
    """Mean and variance of each output filter, shaped ``(C_out, 1, ..., 1)``.

    ``correction=0`` is the population variance the paper uses, ``correction=1`` the unbiased one
    of mmcv's ``ConvWS2d`` (divisor ``max(0, n - correction)``, as ``torch.var``). Two passes
    (mean, then the centered sum of squares): accurate, and on CPU far faster than
    ``torch.var_mean``.
    """
    dims = filter_dims(weight)
    mean = weight.mean(dims, keepdim=True)
    sq = torch.linalg.vector_norm(weight - mean, dim=dims, keepdim=True).square_()
    return mean, sq.div_(max(0, fan_in(weight) - correction))


def filter_norm(weight: Tensor, centered: bool) -> Tensor:
    """``||W - m||`` (centered) or ``||W||`` per filter, shaped ``(C_out, 1, ..., 1)``."""
    dims = filter_dims(weight)
    u = weight - weight.mean(dims, keepdim=True) if centered else weight
    return torch.linalg.vector_norm(u, dim=dims, keepdim=True)


def unit_filters(weight: Tensor, centered: bool, traceable: bool = False) -> Tensor:
    """``sqrt(n) u / ||u||`` per filter (0 where ``u = 0``), computed from ``weight``.

    Centered filters take aten's layer norm (one kernel in eager mode) unless ``traceable``:
    then, as for uncentered ones, ``u / sqrt(||u||² / n)`` in elementary ops, which inductor
    fuses into one kernel per weight (a third faster than its decomposed layer norm on a CPU).
    """
    weight = weight.detach()
    tiny = torch.finfo(weight.dtype).tiny
    if centered and not traceable:
        return torch.native_layer_norm(weight.contiguous(), weight.shape[1:], None, None, tiny)[0]
    dims = filter_dims(weight)
    u = weight - weight.mean(dims, keepdim=True) if centered else weight
    return u * torch.rsqrt(u.square().mean(dims, keepdim=True) + tiny)
