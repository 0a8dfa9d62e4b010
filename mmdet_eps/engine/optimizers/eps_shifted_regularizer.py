"""The ε-shifted L2 regularizer (paper Eq. 25-28) as an optimizer step pre-hook.

Per filter with n elements, mean m, population std v and centered norm r = ||W - m|| = sqrt(n) v:

- WS  (Eq. 26): R = 0.5 λ n (m² + (v - ε)²),        ∇R = λ((1 - ε/v) W + (ε/v) m)
- WN  (Eq. 25): R = 0.5 λ (||W|| - ε)²,             ∇R = λ (1 - ε/||W||) W
- CWN:          R = 0.5 λ (n m² + (r - ε)²),        ∇R = λ((1 - ε/r) W + (ε/r) m)

All three are ``a * W + b`` with per-filter a, b, which is how they are applied; with ε = 0 each
is exactly plain L2 decay λW.

Speed (benchmarks/b2_optimizer_step.py): per group, the per-filter statistics of all tensors come
from :func:`filter_center_stats` / :func:`filter_raw_norm` - in training the layers computed them
in the forward pass for these very weights, unchanged since, so no statistics pass is made - and
the coefficients of all filters of the group are computed at once on the concatenated statistics.
The update is then ``g += a * W`` and ``g += b`` (no ``b`` for WN), in place, with no allocation:
on CPU tensor by tensor, so that the second pass finds the tensor still in cache; on GPUs as two
multi-tensor (foreach) calls, for fewer launches.
"""
import math
from typing import Dict, List, Tuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from mmdet_eps.models.layers import fan_in, filter_moments, filter_norm
from mmdet_eps.models.layers.filter_stats import (filter_center_stats, filter_raw_norm,
                                                  flat_filters)

#: Param-group keys set by ``EpsShiftedOptimWrapperConstructor``; they travel in checkpoints.
FAMILY_KEY = 'eps_shift_family'
LAMBDA_KEY = 'eps_shift_lambda'
EPS_KEY = 'eps_shift_eps'
MODE_KEY = 'eps_shift_mode'
MODES = ('coupled', 'decoupled')
FAMILIES = ('ws', 'wn', 'cwn')
#: Devices where the update goes tensor by tensor (cache reuse); elsewhere foreach calls.
PER_TENSOR_DEVICES = ('cpu', )


def eps_shift_coefficients(weight: Tensor, family: str, eps: float,
                           lam: float) -> Tuple[Tensor, Tensor]:
    """Per-filter ``(a, b)`` with ``λ ∇R(W) = a * W + b`` for ``family`` in ws / wn / cwn,
    shaped ``(C_out, 1, ..., 1)``."""
    _check_family(family)
    tiny = torch.finfo(weight.dtype).tiny
    if family == 'wn':
        ratio = eps / filter_norm(weight, centered=False).clamp_min(tiny)
        return lam * (1 - ratio), torch.zeros_like(ratio)
    mean, var = filter_moments(weight)
    scale = var if family == 'ws' else var * fan_in(weight)
    ratio = eps / scale.clamp_min(tiny).sqrt()
    return lam * (1 - ratio), lam * ratio * mean


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f'family must be one of {FAMILIES}, got {family!r}')


def eps_shifted_grad(weight: Tensor, family: str, eps: float, lam: float) -> Tensor:
    """λ∇R of the ε-shifted L2 term for one weight tensor."""
    a, b = eps_shift_coefficients(weight, family, eps, lam)
    return torch.addcmul(b, weight, a)


def group_coefficients(weights: List[Tensor], family: str, eps: float,
                       lam: float) -> Tuple[List[Tensor], List[Tensor]]:
    """``(a, b)`` of :func:`eps_shift_coefficients` for many tensors, each ``(C_out, 1)``
    (``b`` empty for WN), computed with a handful of ops on the concatenated statistics."""
    _check_family(family)
    if not weights:
        return [], []
    counts = [w.shape[0] for w in weights]
    if family == 'wn':
        scale = torch.cat([filter_raw_norm(w) for w in weights])
    else:
        stats = [filter_center_stats(w) for w in weights]
        scale = torch.cat([norm for _, norm in stats])
        if family == 'ws':  # v = r / sqrt(n)
            factors = {fan_in(w) for w in weights}
            if len(factors) == 1:
                scale = scale * (1 / math.sqrt(factors.pop()))
            else:
                per_filter = torch.tensor([1 / math.sqrt(fan_in(w)) for w in weights],
                                          dtype=scale.dtype, device=scale.device)
                scale = scale * per_filter.repeat_interleave(
                    torch.tensor(counts, device=scale.device)).unsqueeze_(1)
    ratio = scale.clamp_min_(torch.finfo(scale.dtype).tiny).reciprocal_().mul_(eps)
    a = ratio.mul(-lam).add_(lam)
    if family == 'wn':
        return list(a.split(counts)), []
    b = ratio.mul_(torch.cat([mean for mean, _ in stats])).mul_(lam)
    return list(a.split(counts)), list(b.split(counts))


@torch.no_grad()
def apply_eps_shift(optimizer: Optimizer, *_) -> None:
    """Step pre-hook: add λ∇R to the gradients (coupled) or subtract lr·λ∇R from the weights
    (decoupled, as AdamW decays) of every param group tagged with ``FAMILY_KEY``.

    Runs inside ``optimizer.step()``: after gradient clipping and AMP unscaling, and not at all on
    a step that AMP skips for overflow.
    """
    for group in optimizer.param_groups:
        family = group.get(FAMILY_KEY)
        if family is None:
            continue
        by_kind: Dict[tuple, List[Tensor]] = {}
        for p in group['params']:
            if p.grad is not None:
                by_kind.setdefault((p.device, p.dtype), []).append(p)
        for params in by_kind.values():
            _apply(params, family, group[EPS_KEY], group[LAMBDA_KEY], group[MODE_KEY],
                   group['lr'])


def _apply(params: List[Tensor], family: str, eps: float, lam: float, mode: str,
           lr: float) -> None:
    """The update of one group's tensors of one device and dtype."""
    a, b = group_coefficients(params, family, eps, lam)
    if mode == 'coupled':  # g += a * W + b
        targets = [_flat_view(p.grad) for p in params]
        scale, shift = a, b
        sources = [flat_filters(p) for p in params]
    else:  # W -= lr (a * W + b), i.e. W = W * (1 - lr a) - lr b
        targets = [_flat_view(p) for p in params]
        scale = list(torch.cat(a).mul_(-lr).add_(1).split([t.shape[0] for t in a]))
        shift = list(torch.cat(b).mul_(-lr).split([t.shape[0] for t in b])) if b else []
        sources = None
    if params[0].device.type in PER_TENSOR_DEVICES:
        # tensor by tensor: the second pass finds the tensor still in cache
        for i, target in enumerate(targets):
            if sources is None:
                target.mul_(scale[i])
            else:
                target.addcmul_(sources[i], scale[i])
            if shift:
                target.add_(shift[i])
    else:  # few launches matter more than cache reuse
        if sources is None:
            torch._foreach_mul_(targets, scale)
        else:
            torch._foreach_addcmul_(targets, sources, scale)
        if shift:
            torch._foreach_add_(targets, shift)
    _write_back(targets, [p.grad for p in params] if mode == 'coupled' else params)


def _flat_view(t: Tensor) -> Tensor:
    """``t`` as ``(C_out, n)``: a view when contiguous, else a copy written back later."""
    return t.view(t.shape[0], -1) if t.is_contiguous() else t.reshape(t.shape[0], -1)


def _write_back(flat: List[Tensor], tensors: List[Tensor]) -> None:
    """Copy results computed on copies (non-contiguous tensors) back into the tensors."""
    for f, t in zip(flat, tensors):
        if f.data_ptr() != t.data_ptr():
            t.copy_(f.view(t.shape))
