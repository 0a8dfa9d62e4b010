"""Normalize the filters of one or many conv weights, several filter shapes in one autograd node.

Per output filter with ``n`` elements, ``u = W - m`` (centered) or ``u = W``, scale
``s = ||u|| / sqrt(D)`` and ``W' = u / (s + eps)`` (``D`` and centering per family: see
``norm_family``). Weights with the same filter shape are concatenated along the output dim and
normalized together, so a whole group of convs costs the same few kernels as one conv, forward
and backward: on a GPU at small batch the cost of weight standardization is the number of ops
dispatched, not arithmetic.

Centered filters use layer norm over the filter, which yields the mean, ``rstd = 1/sqrt(v²)``
(population variance; plus float's smallest normal number when ``eps > 0``, so that a constant
filter stays finite) and the unit filters ``x = (W - m) rstd`` in one kernel; then
``W' = x / (c + eps rstd)`` with ``c = sqrt(n / D)``. The backward is group norm's backward with
one group per filter and per-filter weight ``f = 1 / (c + eps rstd)`` (one kernel, which also
returns ``<g, x>`` per filter), plus the term for ``f``'s own dependence on ``rstd``::

    dL/dW = GN_backward(g; weight f) + eps t² <g, x> / n * x,   t = rstd f = 1 / (s + eps)

One autograd node serves a whole *batch*: several lists of weights, one list per filter shape
(a WS-ResNet stage has four), so Python's per-node cost is paid once per stage. Without autograd
(eval, frozen weights) the same arithmetic runs without a node. The results equal the textbook
expression to float rounding (tests/models/test_filter_normalize.py). Not twice differentiable.

Two implementations, chosen per call by ``fused`` (as torch's optimizers choose theirs): the
*torch-ops* path above runs on any device; the *fused* path (CPU, ``mmdet_eps.ops``) does the
same arithmetic for all weights of the batch in one op forward and one backward, with no
concatenation, and returns per-filter means and rstds instead of unit filters.

Under ``torch.compile`` and the exporters the torch-ops path is the textbook expression in plain,
differentiable torch ops on each filter shape's concatenated weights (:func:`_traceable_batch`):
the compiler derives its backward and fuses it (``fused=None`` picks it there: the mechanism that
carries to GPUs, on a par with the opaque fused ops on the CPU, B9), and an exported graph holds
standard ops only. The fused ops are registered custom ops (schema, fake kernel, autograd:
``mmdet_eps.ops``), so ``torch.compile`` keeps them in its graph when asked for
(``fused=True``); exporters always get the standard ops.
"""
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mmdet_eps.ops import fused_normalize_filters, fused_unsupported, offsets_of
from mmdet_eps.utils.compat import is_compiling, is_exporting

from .filter_stats import (
    StatsOwner,
    fan_in,
    filter_dims,
    record_filter_moments,
    record_unit_filters,
)

#: Dtypes normalized in float32 (their outputs are cast back).
_UPCAST = (torch.float16, torch.bfloat16)


class FilterNorm(NamedTuple):
    """How the filters of one filter shape are normalized; built once per group or layer.

    ``shift`` is the constant of the denominator, ``sqrt(n / D)`` (centered) or ``eps``, as a
    0-dim CPU tensor: usable with weights on any device, and one op instead of two.
    """
    centered: bool
    divisor: float
    eps: float
    shift: Tensor
    #: ``sqrt(n / D)``: the scale is ``||u|| / sqrt(D) = root * sqrt(||u||² / n)``.
    root: float

    @classmethod
    def build(cls, n: int, eps: float, centered: bool = True, divisor: float = 1.) -> 'FilterNorm':
        if not divisor > 0:
            raise ValueError(f'divisor must be > 0, got {divisor}')
        root = math.sqrt(n / divisor)
        return cls(bool(centered), float(divisor), float(eps),
                   torch.tensor(root if centered else eps, dtype=torch.float64), root)


def _forward(spec: FilterNorm, weights: Sequence[Tensor]) -> Tuple[Tensor, Tensor, tuple]:
    """``(normalized, unit filters, tensors the backward needs)`` of one filter shape."""
    x = torch.cat(weights) if len(weights) > 1 else weights[0].contiguous()
    if x.dtype in _UPCAST:
        x = x.float()
    eps = spec.eps
    if spec.centered:
        # eps = 0 is the exact formula, which overflows like it (a zero std gives inf);
        # otherwise the smallest normal float keeps rstd finite for a constant filter
        inner = torch.finfo(x.dtype).tiny if eps else 0.
        unit, mean, rstd = torch.native_layer_norm(x, x.shape[1:], None, None, inner)
        denom = torch.add(spec.shift, rstd, alpha=eps)
        return unit.div(denom), unit, (x, mean, rstd, denom, unit)
    norm = torch.linalg.vector_norm(x, dim=filter_dims(x), keepdim=True)
    denom = torch.add(spec.shift, norm, alpha=1 / math.sqrt(spec.divisor))
    out = x.div(denom)
    inv_norm = norm.clamp_min_(torch.finfo(x.dtype).tiny).reciprocal_()
    return out, x * inv_norm.mul(math.sqrt(fan_in(x))), (x, inv_norm, denom)


def _backward(spec: FilterNorm, saved: Sequence[Tensor], grad: Tensor) -> Tensor:
    """The gradient of the concatenated weights of one filter shape."""
    grad = (grad.float() if grad.dtype in _UPCAST else grad).contiguous()
    if spec.centered:
        x, mean, rstd, denom, unit = saved
        f = denom.reciprocal()
        c_out, n = x.shape[0], fan_in(x)
        # group norm over a (1, C_out, n) input with one group per filter, called as its schema
        # says: mean and rstd (N, groups) = (1, C_out), weight and its gradient (C_out,)
        grad_x, dot, _ = torch.ops.aten.native_group_norm_backward(
            grad.view(1, c_out, n), x.reshape(1, c_out, n), mean.view(1, c_out),
            rstd.view(1, c_out), f.view(c_out), 1, c_out, n, c_out,
            [True, spec.eps != 0, False])
        grad_x = grad_x.view(x.shape)
        if spec.eps:
            t2 = rstd.mul(f).square_()
            grad_x.addcmul_(unit, t2.mul_(dot.view_as(t2)), value=spec.eps / n)
        return grad_x
    x, inv_norm, denom = saved
    t = denom.reciprocal()
    dot = grad.mul(x).sum(filter_dims(x), keepdim=True)
    grad_x = grad * t
    return grad_x.addcmul_(x, t.square_().mul_(dot).mul_(inv_norm),
                           value=-1 / math.sqrt(spec.divisor))


class _NormalizeFilters(torch.autograd.Function):
    """Inputs: the specs (one per filter shape), the number of weights of each, the weights.
    Outputs: the normalized weights of each shape (concatenated), then their unit filters."""

    @staticmethod
    def forward(ctx, specs: Tuple[FilterNorm, ...], counts: Tuple[int, ...],
                *weights: Tensor) -> Tuple[Tensor, ...]:
        outs, units, saved, start = [], [], [], 0
        for spec, count in zip(specs, counts):
            members = weights[start:start + count]
            start += count
            out, unit, tensors = _forward(spec, members)
            outs.append(out if out.dtype == members[0].dtype else out.to(members[0].dtype))
            units.append(unit)
            saved.extend(tensors)
        ctx.save_for_backward(*saved)
        ctx.specs, ctx.counts = specs, counts
        ctx.sizes = [w.shape[0] for w in weights]
        ctx.dtypes = [w.dtype for w in weights]
        needs, start, frozen = ctx.needs_input_grad[2:], 0, []
        for out, count in zip(outs, counts):  # shapes whose weights are all frozen
            if not any(needs[start:start + count]):
                frozen.append(out)
            start += count
        ctx.mark_non_differentiable(*units, *frozen)
        ctx.set_materialize_grads(False)  # no zeros for the unit filters' (absent) gradients
        return (*outs, *units)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
        saved, result, at, start = ctx.saved_tensors, [None, None], 0, 0
        for spec, count, grad in zip(ctx.specs, ctx.counts, grads):
            n_saved = 5 if spec.centered else 3
            sizes = ctx.sizes[start:start + count]
            if grad is None:
                result += [None] * count
            else:
                grad_x = _backward(spec, saved[at:at + n_saved], grad)
                dtype = ctx.dtypes[start]
                grad_x = grad_x if grad_x.dtype == dtype else grad_x.to(dtype)
                result += [grad_x] if count == 1 else grad_x.split_with_sizes(sizes)
            at += n_saved
            start += count
        return tuple(result)


def _traceable_normalize(spec: FilterNorm, weight: Tensor) -> Tensor:
    """The torch-ops forward as the textbook expression in plain differentiable torch ops, for
    the compiler and the exporters: ``u / (c sqrt(||u||² / n + tiny) + eps)``, equal to
    :func:`_forward`'s output (``c = sqrt(n / D)``; ``tiny`` as there)."""
    x = weight.float() if weight.dtype in _UPCAST else weight
    dims = filter_dims(x)
    if spec.centered:
        u = x - x.mean(dims, keepdim=True)
        var = u.square().mean(dims, keepdim=True)
        if spec.eps:
            var = var + torch.finfo(x.dtype).tiny
        out = u / (var.sqrt() * spec.root + spec.eps)
    else:
        norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True)
        out = x / (norm / math.sqrt(spec.divisor) + spec.eps)
    return out.to(weight.dtype)


def _traceable_batch(specs: Sequence[FilterNorm],
                     weights: Sequence[Sequence[Tensor]]) -> List[List[Tensor]]:
    """:func:`_traceable_normalize` of each filter shape's weights concatenated, so the
    compiler's kernels (reductions, their backward) serve a whole group, not one weight."""
    nested = []
    for spec, group in zip(specs, weights):
        if len(group) == 1:
            nested.append([_traceable_normalize(spec, group[0])])
            continue
        out = _traceable_normalize(spec, torch.cat(list(group)))
        nested.append(list(out.split_with_sizes([w.shape[0] for w in group])))
    return nested


def exporting() -> bool:
    """Whether an exporter traces the model (``torch.export``, ONNX, TorchScript tracing): the
    graph must then hold standard ops only."""
    return torch.jit.is_tracing() or is_exporting()


def _fused_batch(specs: Sequence[FilterNorm], weights: Sequence[Sequence[Tensor]],
                 flat: List[Tensor], train: bool,
                 owners: Optional[List[StatsOwner]]) -> List[List[Tensor]]:
    args = ([spec.root for spec, group in zip(specs, weights) for _ in group],
            [spec.eps for spec, group in zip(specs, weights) for _ in group],
            [int(spec.centered) for spec, group in zip(specs, weights) for _ in group])
    outs, mean, rstd = fused_normalize_filters(flat, *args)  # differentiable: mmdet_eps.ops
    if train and owners is not None:
        for weight, owner, offset in zip(flat, owners, offsets_of(flat)):
            if weight.requires_grad:
                record_filter_moments(owner, weight, mean, rstd, offset)
    nested, start = [], 0
    for group in weights:
        nested.append(list(outs[start:start + len(group)]))
        start += len(group)
    return nested


def _torch_batch(specs: Sequence[FilterNorm], weights: Sequence[Sequence[Tensor]],
                 flat: List[Tensor], train: bool, owners: Optional[List[StatsOwner]]
                 ) -> Tuple[List[List[Tensor]], List[Tensor]]:
    if train:
        results = _NormalizeFilters.apply(tuple(specs), tuple(len(g) for g in weights), *flat)
        outs, units = results[:len(specs)], results[len(specs):]
    else:
        outs, units = [], []
        for spec, group in zip(specs, weights):
            out, unit, _ = _forward(spec, group)
            outs.append(out if out.dtype == group[0].dtype else out.to(group[0].dtype))
            units.append(unit)
    nested, start = [], 0
    for out, unit, group in zip(outs, units, weights):
        sizes = [w.shape[0] for w in group]
        nested.append(list(out.split_with_sizes(sizes)) if len(group) > 1 else [out])
        if train and owners is not None:
            for weight, owner, u in zip(group, owners[start:], unit.split_with_sizes(sizes)):
                if weight.requires_grad:
                    record_unit_filters(owner, weight, u)
        start += len(group)
    return nested, list(units)


def normalize_batch(specs: Sequence[FilterNorm], weights: Sequence[Sequence[Tensor]],
                    fused: Optional[bool] = None,
                    owners: Optional[Sequence[Sequence[StatsOwner]]] = None
                    ) -> List[List[Tensor]]:
    """Normalize lists of weights, one list per filter shape (``specs[i]`` for ``weights[i]``),
    in one autograd node (none when no weight needs a gradient).

    Args:
        specs (Sequence[FilterNorm]): One per list.
        weights (Sequence[Sequence[Tensor]]): The weights, one list per filter shape.
        fused (bool, optional): The fused CPU ops (one op forward and one backward for all the
            weights) or torch ops (a few per filter shape, on any device). Defaults to None:
            fused when the ops take the weights (``mmdet_eps.ops.fused_unsupported``) in eager
            mode; under ``torch.compile`` torch ops, which inductor fuses itself (``True``
            keeps the fused ops there, as registered custom ops). Exporters always get torch
            ops.
        owners (Sequence[Sequence[StatsOwner]], optional): The layers that own the weights,
            nested as ``weights``: an eager forward hands each trainable weight's statistics
            to its owner for the ε-shifted step (see ``filter_stats``). Defaults to None.

    Returns:
        list[list[Tensor]]: The normalized weights, nested as ``weights``.
    """
    flat = [w for group in weights for w in group]
    compiling = is_compiling()
    if exporting() or (compiling and not fused):
        return _traceable_batch(specs, weights)  # what inductor fuses, on any device
    train = torch.is_grad_enabled() and any(w.requires_grad for w in flat)
    why = fused_unsupported(flat) if fused or fused is None else 'not requested'
    if fused and why:
        raise RuntimeError(f'fused weight normalization unavailable: {why}')
    # only an eager forward records: in a compiled graph a record is a side effect outside it
    flat_owners = ([o for group in owners for o in group]
                   if owners is not None and not compiling else None)
    if why is None:
        return _fused_batch(specs, weights, flat, train, flat_owners)
    return _torch_batch(specs, weights, flat, train, flat_owners)[0]


def normalize_filter_batch(weights: Sequence[Tensor], eps: float, centered: bool = True,
                           divisor: float = 1.) -> Tuple[List[Tensor], Tensor]:
    """Normalize weights of one filter shape together with torch ops (any device), returning
    the unit filters too.

    Args:
        weights (Sequence[Tensor]): Conv weights whose dims after the first agree.
        eps (float): Added to the per-filter scale.
        centered (bool): Subtract the filter mean (WS, CWN) or not (WN). Defaults to True.
        divisor (float): ``D`` of the scale ``||u|| / sqrt(D)``. Defaults to 1.

    Returns:
        tuple[list[Tensor], Tensor]: The normalized weights (views of one tensor, in the order
        given) and the unit filters ``sqrt(n) u / ||u||`` of all of them, concatenated.
    """
    spec = FilterNorm.build(fan_in(weights[0]), eps, centered, divisor)
    flat = list(weights)
    train = torch.is_grad_enabled() and any(w.requires_grad for w in flat)
    (outs, ), (unit, ) = _torch_batch([spec], [flat], flat, train, owners=None)
    return outs, unit


def normalize_filters(weight: Tensor, eps: float, centered: bool = True, divisor: float = 1.,
                      fused: Optional[bool] = None) -> Tensor:
    """``u / (||u|| / sqrt(divisor) + eps)`` per output filter of one weight, ``u = W - m``
    (``centered``) or ``W``; ``fused`` as :func:`normalize_batch`."""
    spec = FilterNorm.build(fan_in(weight), eps, centered, divisor)
    return normalize_batch([spec], [[weight]], fused)[0][0]


def standardize_filters(weight: Tensor, eps: float, correction: int = 1) -> Tensor:
    """``(W - m) / (std + eps)`` per filter, std with divisor ``n - correction``."""
    return normalize_filters(weight, eps, True, fan_in(weight) - correction)
