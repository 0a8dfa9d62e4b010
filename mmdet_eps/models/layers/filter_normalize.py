"""One autograd Function for the whole weight-normalization family.

Per output filter with n elements, ``u = W - m`` (centered) or ``u = W`` (WN),
``s = ||u|| / sqrt(D)`` and ``W' = u / (s + eps)``:

- WS (mmcv ``ConvWS2d``): centered, ``D = n - 1`` (unbiased std; ``D = n`` for the population std)
- CWN: centered, ``D = 1`` (``s = ||W - m||``)
- WN: not centered, ``D = 1`` (``s = ||W||``)

Autograd of that expression records about ten kernels per conv and keeps their intermediates.
Here the forward is three reductions/passes (mean, centered copy, norm, scaled in place) and the
backward reuses the forward's output and ``1/(s + eps)``::

    dL/dW = (g - [mean(g)]) / (s + eps) - W' * <g, W'> / (D s)

(the bracket only when centered): two row reductions of ``g`` and two fused passes. The output
equals the plain expression to float rounding (tests/models/test_filter_normalize.py).
"""
import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .filter_stats import centered_filters, filter_norm, flat_filters


class _NormalizeFilters(torch.autograd.Function):

    @staticmethod
    def forward(ctx, weight: Tensor, eps: float, centered: bool, divisor: float) -> Tensor:
        if centered:
            out, _, norm = centered_filters(weight)
        else:
            out, norm = flat_filters(weight), filter_norm(weight, centered=False).view(-1, 1)
        scale = norm.div_(math.sqrt(divisor)) if divisor != 1 else norm
        inv = (scale + eps).reciprocal_()
        out = out.mul_(inv) if centered else out * inv
        ctx.save_for_backward(out, inv, scale)
        ctx.centered, ctx.divisor = centered, divisor
        return out.view(weight.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        out, inv, scale = ctx.saved_tensors
        g = grad.reshape(out.shape)
        # k = -<g, W'> / (D s): the part of the gradient through the scale
        k = torch.linalg.vecdot(g, out, dim=1).unsqueeze_(1).div_(scale * -ctx.divisor)
        if ctx.centered:
            offset = g.mean(1, keepdim=True).mul_(inv).neg_()
            grad_w = torch.addcmul(offset, out, k)
        else:
            grad_w = out * k
        grad_w.addcmul_(g, inv)
        return grad_w.view(grad.shape), None, None, None


def normalize_filters(weight: Tensor, eps: float, centered: bool = True,
                      divisor: float = 1.) -> Tensor:
    """``(W - m) / (||W - m|| / sqrt(divisor) + eps)`` (or ``W / (||W|| / sqrt(divisor) + eps)``
    when not ``centered``) per output filter, with a fused backward.

    Not twice differentiable (no gradient-of-gradient through the normalization).
    """
    return _NormalizeFilters.apply(weight, float(eps), bool(centered), float(divisor))


def standardize_filters(weight: Tensor, eps: float, correction: int = 1) -> Tensor:
    """``(W - m) / (std + eps)`` per filter, std with divisor ``n - correction``."""
    return normalize_filters(weight, eps, True, max(0, weight[0].numel() - correction))
