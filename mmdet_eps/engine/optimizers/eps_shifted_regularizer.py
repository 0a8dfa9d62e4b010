"""The ε-shifted L2 regularizer (paper Eq. 25-28) as an optimizer step pre-hook.

Per filter with n elements, mean m, population std v and centered norm r = ||W - m|| = sqrt(n) v:

- WS  (Eq. 26): R = 0.5 λ n (m² + (v - ε)²),        ∇R = λ((1 - ε/v) W + (ε/v) m)
- WN  (Eq. 25): R = 0.5 λ (||W|| - ε)²,             ∇R = λ (1 - ε/||W||) W
- CWN:          R = 0.5 λ (n m² + (r - ε)²),        ∇R = λ((1 - ε/r) W + (ε/r) m)

All three are ``a * W + b`` with per-filter a, b, which is how they are applied: two fused passes
per tensor. With ε = 0 each is exactly plain L2 decay λW.
"""
from typing import Tuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from mmdet_eps.models.layers import fan_in, filter_moments, filter_norm

#: Param-group keys set by ``EpsShiftedOptimWrapperConstructor``; they travel in checkpoints.
FAMILY_KEY = 'eps_shift_family'
LAMBDA_KEY = 'eps_shift_lambda'
EPS_KEY = 'eps_shift_eps'
MODE_KEY = 'eps_shift_mode'
MODES = ('coupled', 'decoupled')


def eps_shift_coefficients(weight: Tensor, family: str, eps: float,
                           lam: float) -> Tuple[Tensor, Tensor]:
    """Per-filter ``(a, b)`` with ``λ ∇R(W) = a * W + b`` for ``family`` in ws / wn / cwn."""
    tiny = torch.finfo(weight.dtype).tiny
    if family == 'wn':
        ratio = eps / filter_norm(weight, centered=False).clamp_min(tiny)
        return lam * (1 - ratio), torch.zeros_like(ratio)
    mean, var = filter_moments(weight)
    scale = var if family == 'ws' else var * fan_in(weight)
    ratio = eps / scale.clamp_min(tiny).sqrt()
    return lam * (1 - ratio), lam * ratio * mean


def eps_shifted_grad(weight: Tensor, family: str, eps: float, lam: float) -> Tensor:
    """λ∇R of the ε-shifted L2 term for one weight tensor."""
    a, b = eps_shift_coefficients(weight, family, eps, lam)
    return torch.addcmul(b, weight, a)


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
        coupled = group[MODE_KEY] == 'coupled'
        for p in group['params']:
            if p.grad is None:
                continue
            a, b = eps_shift_coefficients(p, family, group[EPS_KEY], group[LAMBDA_KEY])
            if coupled:
                p.grad.addcmul_(p, a).add_(b)
            else:
                lr = group['lr']
                p.mul_(1 - lr * a).sub_(lr * b)
