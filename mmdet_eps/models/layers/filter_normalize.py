"""One autograd Function for the whole weight-normalization family.

Per output filter with n elements, ``u = W - m`` (centered) or ``u = W`` (WN),
``s = ||u|| / sqrt(D)`` and ``W' = u / (s + eps)``:

- WS (mmcv ``ConvWS2d``): centered, ``D = n - 1`` (unbiased std; ``D = n`` for the population std)
- CWN: centered, ``D = 1`` (``s = ||W - m||``)
- WN: not centered, ``D = 1`` (``s = ||W||``)

Autograd of that expression records about ten kernels per conv and keeps their intermediates
(and ``torch.var_mean`` is slow on CPU). Here the forward is :func:`centered_filters` (mean,
centered copy, norm) scaled in place, and the backward is one fused kernel. The gradient is::

    dL/dW = (g - [mean(g)]) / (s + eps) - W' * <g, W'> / (D s)

(the bracket only when centered). For centered filters this is exactly the training-mode batch
norm backward of ``W`` viewed as ``(1, C_out, n)`` with saved mean ``m``, saved inverse std
``rho = sqrt(n / (D s (s + eps)))`` and per-channel weight ``gamma = rho s D / n``
(``= 1 / ((s + eps) rho)``), so that kernel (one reduction pass and one output pass per filter,
on CPU and CUDA) computes it. The results equal the plain expression to float rounding
(tests/models/test_filter_normalize.py).
"""
import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .filter_stats import centered_filters, fan_in, flat_filters, raw_filter_norm


class _NormalizeFilters(torch.autograd.Function):

    @staticmethod
    def forward(ctx, weight: Tensor, eps: float, centered: bool, divisor: float) -> Tensor:
        flat = flat_filters(weight)
        if centered:  # the statistics are remembered for the optimizer step: no in-place ops
            out, mean, norm = centered_filters(weight)
        else:
            out, mean, norm = flat, None, raw_filter_norm(weight)
        scale = norm * (1 / math.sqrt(divisor)) if divisor != 1 else norm
        inv = (scale + eps).reciprocal_()
        out = out.mul_(inv) if centered else flat * inv
        ctx.centered, ctx.divisor, ctx.eps = centered, divisor, eps
        ctx.save_for_backward(weight if centered else out, mean, scale, inv)
        return out.view(weight.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        saved, mean, scale, inv = ctx.saved_tensors
        if ctx.centered:
            weight = saved
            n_over_d = fan_in(weight) / ctx.divisor
            rho = scale.div(inv).mul_(1 / n_over_d).rsqrt_()
            gamma = rho.mul(scale).mul_(1 / n_over_d)
            shape = (1, weight.shape[0], -1)
            grad_w = torch.ops.aten.native_batch_norm_backward(
                grad.reshape(shape), weight.reshape(shape), gamma.view(-1), None, None,
                mean.view(-1), rho.view(-1), True, 0., [True, False, False])[0]
            return grad_w.view(grad.shape), None, None, None
        out = saved
        g = grad.reshape(out.shape)
        k = torch.linalg.vecdot(g, out, dim=1).unsqueeze_(1).div_(scale * -ctx.divisor)
        grad_w = (out * k).addcmul_(g, inv)
        return grad_w.view(grad.shape), None, None, None


def normalize_filters(weight: Tensor, eps: float, centered: bool = True,
                      divisor: float = 1.) -> Tensor:
    """``(W - m) / (||W - m|| / sqrt(divisor) + eps)`` (or ``W / (||W|| / sqrt(divisor) + eps)``
    when not ``centered``) per output filter, with a fused backward.

    Not twice differentiable (no gradient of a gradient through the normalization).
    """
    if not divisor > 0:
        raise ValueError(f'divisor must be > 0, got {divisor}')
    return _NormalizeFilters.apply(weight, float(eps), bool(centered), float(divisor))


def standardize_filters(weight: Tensor, eps: float, correction: int = 1) -> Tensor:
    """``(W - m) / (std + eps)`` per filter, std with divisor ``n - correction``."""
    return normalize_filters(weight, eps, True, fan_in(weight) - correction)
