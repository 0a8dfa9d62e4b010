"""Per-filter statistics of a conv weight, and the *unit filters* the ε-shifted step reuses.

Unit filters: ``sqrt(n) * u / ||u||`` per output filter (``u = W - m``, or ``W`` for WN), the
direction of ``u`` at a fixed scale. For the centered families this is exactly what layer norm
over the filter computes, so the layers get it for free while normalizing, and the ε-shifted
gradient is ``λ W - λ ε sqrt(D / n) * unit`` (see ``engine/optimizers/eps_shifted_regularizer``).

Who owns them: the layer that normalizes the weight (``NormalizedConv2d.step_stats``). The
eager forward that normalizes a trainable weight records there what the step needs, tagged with
the weight's version counter: its unit filters (torch-ops path, :func:`record_unit_filters`) or,
from the fused CPU ops, the per-filter mean and rstd from which the step's fused kernel forms
them on the fly (:func:`record_filter_moments`). The optimizer step takes the record from the
owner (:func:`take_unit_filters`, :func:`take_filter_moments`), which also drops it. Any in-place
write in between (an optimizer step, ``load_state_dict``, ``copy_``) bumps the version and the
step recomputes them from the weight. A write through ``weight.data`` between the forward and the
step is not seen: the step then uses the forward's statistics, like the loss gradient in
``weight.grad`` taken at the forward's weights. A compiled or exported forward records nothing
(a record is a side effect outside the graph): the step then computes the statistics from the
weight, which gives the same result.
"""
import math
from typing import List, NamedTuple, Optional, Protocol, Sequence, Tuple, Union

import torch
from torch import Tensor

from mmdet_eps.ops import fused_filter_moments


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


class FilterMoments(NamedTuple):
    """Per-filter means (0 for WN) and ``rstd = 1 / sqrt(||u||² / n)`` of a weight as they
    were when its version counter read ``version``: its filters' are ``mean[offset:offset + C]``
    (the fused forward computes those of many weights into one tensor); unit filters =
    ``(W - mean) rstd``."""
    version: int
    mean: Tensor
    rstd: Tensor
    offset: int


#: What a forward hands to the ε-shifted step.
StepStats = Union[UnitFilters, FilterMoments]


class StatsOwner(Protocol):
    """Holds the :data:`StepStats` of one weight between a forward and the step (the layer
    that normalizes the weight)."""
    step_stats: Optional[StepStats]


def record_unit_filters(owner: StatsOwner, weight: Tensor, unit: Tensor) -> None:
    """Hand ``unit`` (the unit filters of ``weight`` as it is now) to ``owner``."""
    owner.step_stats = UnitFilters(weight._version, unit)


def record_filter_moments(owner: StatsOwner, weight: Tensor, mean: Tensor, rstd: Tensor,
                          offset: int) -> None:
    """Hand the per-filter means and rstds of ``weight`` as it is now (from ``offset`` on in
    ``mean`` and ``rstd``) to ``owner``."""
    owner.step_stats = FilterMoments(weight._version, mean, rstd, offset)


def holds_unit_filters(owners: Sequence[Optional[StatsOwner]]) -> bool:
    """Whether any owner holds unit filters (a torch-ops forward ran since its last step)."""
    return any(isinstance(getattr(o, 'step_stats', None), UnitFilters) for o in owners)


def _take(weight: Tensor, owner: Optional[StatsOwner]) -> Optional[StepStats]:
    """The owner's record if ``weight`` has not been written since; dropped either way."""
    if owner is None:
        return None
    record, owner.step_stats = owner.step_stats, None
    return record if record is not None and record.version == weight._version else None


def take_unit_filters(weight: Tensor, centered: bool,
                      owner: Optional[StatsOwner] = None) -> Tensor:
    """The unit filters recorded on ``owner`` if ``weight`` has not been written since, else
    computed now; the record is dropped either way."""
    record = _take(weight, owner)
    if isinstance(record, UnitFilters):
        return record.unit
    if isinstance(record, FilterMoments):
        shape = (-1, ) + (1, ) * (weight.dim() - 1)
        mean, rstd = (t.narrow(0, record.offset, weight.shape[0]).view(shape)
                      for t in (record.mean, record.rstd))
        return (weight.detach() - mean) * rstd
    return unit_filters(weight, centered)


def take_filter_moments(weights: Sequence[Tensor], centered: bool,
                        owners: Sequence[Optional[StatsOwner]]
                        ) -> Tuple[List[Tensor], List[Tensor], List[int]]:
    """Per weight, the per-filter means and rstds (tensors and offset, see
    :class:`FilterMoments`) recorded on its owner if the weight has not been written since, else
    computed now (by the fused op, for all such weights at once); the records are dropped. For
    weights the fused ops take (``mmdet_eps.ops.fused_unsupported``)."""
    records = [_take(weight, owner) for weight, owner in zip(weights, owners)]
    stale = [w.detach() for w, r in zip(weights, records) if not isinstance(r, FilterMoments)]
    if stale:
        mean, rstd, offsets = fused_filter_moments(stale, [int(centered)] * len(stale))
        fresh = iter(offsets)
        records = [r if isinstance(r, FilterMoments) else FilterMoments(0, mean, rstd, next(fresh))
                   for r in records]
    return ([r.mean for r in records], [r.rstd for r in records],
            [r.offset for r in records])
