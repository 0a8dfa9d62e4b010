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

Three implementations, chosen per call by ``mmdet_eps.ops.select_impl`` (the one place that
decides, for the layers and the ε-shifted step): the *torch-ops* path above, with its hand-written
backward, runs eagerly on any device; the *fused* path (CPU, ``mmdet_eps.ops``) does the same
arithmetic for all weights of the batch in one op forward and one backward, with no
concatenation, in eager mode and, as registered custom ops (schema, fake kernel, autograd:
``mmdet_eps.ops``), in compiled graphs; the *traceable* path is the textbook expression in
plain, differentiable torch ops (small weights of a filter shape concatenated, large ones alone:
:func:`_traceable_group`), for ``torch.compile`` where the fused ops do not run (GPUs,
``fused=False``: the compiler derives its backward and fuses it) and for the exporters (an
exported graph holds standard ops only).

Nothing here is kept for later: the ε-shifted step recomputes what it needs from the parameters.
"""
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mmdet_eps.ops import Impl, fused_normalize_filters, select_impl

from .filter_stats import fan_in, filter_dims

#: Traced weights of fewer elements are normalized concatenated with their filter shape's other
#: small weights, larger ones alone (B9, CPU: concatenating every weight of a WS-ResNet-50 made
#: its normalization 2.5x slower at full width; normalizing each alone, the thin proxy 5 % slower).
TRACE_CONCAT_BELOW = 1 << 16
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


def _forward(spec: FilterNorm, weights: Sequence[Tensor]) -> Tuple[Tensor, tuple]:
    """``(normalized, tensors the backward needs)`` of one filter shape."""
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
        return unit.div(denom), (x, mean, rstd, denom, unit)
    norm = torch.linalg.vector_norm(x, dim=filter_dims(x), keepdim=True)
    denom = torch.add(spec.shift, norm, alpha=1 / math.sqrt(spec.divisor))
    out = x.div(denom)
    inv_norm = norm.clamp_min_(torch.finfo(x.dtype).tiny).reciprocal_()
    return out, (x, inv_norm, denom)


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
    Outputs: the normalized weights of each shape (concatenated)."""

    @staticmethod
    def forward(ctx, specs: Tuple[FilterNorm, ...], counts: Tuple[int, ...],
                *weights: Tensor) -> Tuple[Tensor, ...]:
        outs, saved, start = [], [], 0
        for spec, count in zip(specs, counts):
            members = weights[start:start + count]
            start += count
            out, tensors = _forward(spec, members)
            outs.append(out if out.dtype == members[0].dtype else out.to(members[0].dtype))
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
        ctx.mark_non_differentiable(*frozen)
        ctx.set_materialize_grads(False)  # an unused output's weights get no gradient
        return tuple(outs)

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


def _split(outs: Sequence[Tensor], weights: Sequence[Sequence[Tensor]]) -> List[List[Tensor]]:
    """Each filter shape's concatenated output split back into its weights."""
    return [list(out.split_with_sizes([w.shape[0] for w in group])) if len(group) > 1 else [out]
            for out, group in zip(outs, weights)]


def _traceable_group(spec: FilterNorm, weights: Sequence[Tensor]) -> List[Tensor]:
    """:func:`_traceable_normalize` of one filter shape's weights: those under
    ``TRACE_CONCAT_BELOW`` elements concatenated (one kernel's fixed cost exceeds their copy),
    larger ones one by one (inductor reads each once, where a concatenation would copy it)."""
    small = [w for w in weights if w.numel() < TRACE_CONCAT_BELOW]
    if len(small) < 2:
        return [_traceable_normalize(spec, w) for w in weights]
    joined = iter(_traceable_normalize(spec, torch.cat(small)).split_with_sizes(
        [w.shape[0] for w in small]))
    return [next(joined) if w.numel() < TRACE_CONCAT_BELOW else _traceable_normalize(spec, w)
            for w in weights]


def _traceable_batch(specs: Sequence[FilterNorm],
                     weights: Sequence[Sequence[Tensor]]) -> List[List[Tensor]]:
    return [_traceable_group(spec, group) for spec, group in zip(specs, weights)]


def _fused_batch(specs: Sequence[FilterNorm], weights: Sequence[Sequence[Tensor]],
                 flat: List[Tensor]) -> List[List[Tensor]]:
    counts = [len(group) for group in weights]
    args = ([spec.root for spec, count in zip(specs, counts) for _ in range(count)],
            [spec.eps for spec, count in zip(specs, counts) for _ in range(count)],
            [int(spec.centered) for spec, count in zip(specs, counts) for _ in range(count)])
    outs = fused_normalize_filters(flat, *args)[0]  # differentiable: mmdet_eps.ops
    nested, start = [], 0
    for count in counts:
        nested.append(list(outs[start:start + count]))
        start += count
    return nested


def _torch_batch(specs: Sequence[FilterNorm], weights: Sequence[Sequence[Tensor]],
                 flat: List[Tensor]) -> List[List[Tensor]]:
    if torch.is_grad_enabled() and any(w.requires_grad for w in flat):
        outs = _NormalizeFilters.apply(tuple(specs), tuple(len(g) for g in weights), *flat)
    else:  # eval or frozen weights: the same arithmetic without a node
        outs = [_forward(spec, group)[0].to(group[0].dtype) for spec, group in zip(specs, weights)]
    return _split(outs, weights)


def normalize_batch(specs: Sequence[FilterNorm], weights: Sequence[Sequence[Tensor]],
                    fused: Optional[bool] = None) -> List[List[Tensor]]:
    """Normalize lists of weights, one list per filter shape (``specs[i]`` for ``weights[i]``),
    in one autograd node (none when no weight needs a gradient).

    Args:
        specs (Sequence[FilterNorm]): One per list.
        weights (Sequence[Sequence[Tensor]]): The weights, one list per filter shape.
        fused (bool, optional): The fused CPU ops (one op forward and one backward for all the
            weights) or torch ops (a few per filter shape, on any device); see
            ``mmdet_eps.ops.select_impl``. Defaults to None: fused wherever the ops take the
            weights (CPU), eager or compiled; torch ops elsewhere.

    Returns:
        list[list[Tensor]]: The normalized weights, nested as ``weights``.
    """
    flat = [w for group in weights for w in group]
    impl = select_impl(flat, fused)
    if impl is Impl.FUSED:
        return _fused_batch(specs, weights, flat)
    if impl is Impl.TORCH:
        return _torch_batch(specs, weights, flat)
    return _traceable_batch(specs, weights)


def normalize_filter_batch(weights: Sequence[Tensor], eps: float, centered: bool = True,
                           divisor: float = 1., fused: Optional[bool] = None) -> List[Tensor]:
    """Normalize weights of one filter shape together (one autograd node).

    Args:
        weights (Sequence[Tensor]): Conv weights whose dims after the first agree.
        eps (float): Added to the per-filter scale.
        centered (bool): Subtract the filter mean (WS, CWN) or not (WN). Defaults to True.
        divisor (float): ``D`` of the scale ``||u|| / sqrt(D)``. Defaults to 1.
        fused (bool, optional): As :func:`normalize_batch`. Defaults to None.

    Returns:
        list[Tensor]: The normalized weights, in the order given.
    """
    spec = FilterNorm.build(fan_in(weights[0]), eps, centered, divisor)
    return normalize_batch([spec], [list(weights)], fused)[0]


def normalize_filters(weight: Tensor, eps: float, centered: bool = True, divisor: float = 1.,
                      fused: Optional[bool] = None) -> Tensor:
    """``u / (||u|| / sqrt(divisor) + eps)`` per output filter of one weight, ``u = W - m``
    (``centered``) or ``W``; ``fused`` as :func:`normalize_batch`."""
    spec = FilterNorm.build(fan_in(weight), eps, centered, divisor)
    return normalize_batch([spec], [[weight]], fused)[0][0]


def standardize_filters(weight: Tensor, eps: float, correction: int = 1) -> Tensor:
    """``(W - m) / (std + eps)`` per filter, std with divisor ``n - correction``."""
    return normalize_filters(weight, eps, True, fan_in(weight) - correction)
