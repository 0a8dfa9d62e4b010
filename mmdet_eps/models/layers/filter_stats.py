"""Per-filter statistics of a conv weight, and the *unit filters* the ε-shifted step reuses.

Unit filters: ``sqrt(n) * u / ||u||`` per output filter (``u = W - m``, or ``W`` for WN), the
direction of ``u`` at a fixed scale. For the centered families this is exactly what layer norm
over the filter computes, so the layers get it for free while normalizing, and the ε-shifted
gradient is ``λ W - λ ε sqrt(D / n) * unit`` (see ``engine/optimizers/eps_shifted_regularizer``).

Who owns them: the weight. The forward that normalizes a trainable weight records its unit
filters on it, tagged with the weight's version counter (:func:`record_unit_filters`); the
optimizer step takes them (:func:`take_unit_filters`), which also drops them. Any in-place write
in between (an optimizer step, ``load_state_dict``, ``copy_``) bumps the version and the step
recomputes them from the weight. A write through ``weight.data`` between the forward and the step
is not seen: the step then evaluates the regularizer's gradient at the weights of the forward,
the same point at which the loss gradient in ``weight.grad`` was taken.
"""
import math
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

#: Attribute of a weight tensor that holds its :class:`UnitFilters` between forward and step.
UNIT_FILTERS_ATTR = '_eps_unit_filters'


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


def unit_filters(weight: Tensor, centered: bool) -> Tensor:
    """``sqrt(n) u / ||u||`` per filter (0 where ``u = 0``), computed from ``weight``."""
    weight = weight.detach()
    if centered:
        tiny = torch.finfo(weight.dtype).tiny
        return torch.native_layer_norm(weight.contiguous(), weight.shape[1:], None, None, tiny)[0]
    norm = torch.linalg.vector_norm(weight, dim=filter_dims(weight), keepdim=True)
    return weight * norm.clamp_min_(torch.finfo(norm.dtype).tiny).reciprocal_().mul_(
        math.sqrt(fan_in(weight)))


class UnitFilters(NamedTuple):
    """Unit filters of a weight as they were when its version counter read ``version``."""
    version: int
    unit: Tensor


def record_unit_filters(weight: Tensor, unit: Tensor) -> None:
    """Attach ``unit`` (the unit filters of ``weight`` as it is now) to ``weight``."""
    setattr(weight, UNIT_FILTERS_ATTR, UnitFilters(weight._version, unit))


def take_unit_filters(weight: Tensor, centered: bool) -> Tensor:
    """The unit filters recorded on ``weight`` if it has not been written since, else computed
    now; the record is dropped either way."""
    record: Optional[UnitFilters] = weight.__dict__.pop(UNIT_FILTERS_ATTR, None)
    if record is not None and record.version == weight._version:
        return record.unit
    return unit_filters(weight, centered)
