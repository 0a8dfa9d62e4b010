"""The ε-shifted L2 regularizer (paper Eq. 25-28), applied inside the optimizer step.

Per filter with ``n`` elements, ``u = W - m`` (WS, CWN) or ``W`` (WN) and the family's scale
``r = ||u|| / sqrt(D)`` (``D = n``: WS's population std v; ``D = 1``: ``||W - m||`` or ``||W||``):

- WS  (Eq. 26): R = 0.5 λ n (m² + (v - ε)²),   λ∇R = λ((1 - ε/v) W + (ε/v) m)
- WN  (Eq. 25): R = 0.5 λ (||W|| - ε)²,        λ∇R = λ (1 - ε/||W||) W
- CWN:          R = 0.5 λ (n m² + (r - ε)²),   λ∇R = λ((1 - ε/r) W + (ε/r) m)

All three are ``λ∇R = λ W - λ ε sqrt(D/n) x`` with the unit filters ``x = sqrt(n) u / ||u||``:
plain L2 decay minus a fixed multiple of a per-filter direction. The step computes ``x`` from
the parameters inside ``optimizer.step()``, as torch's weight decay reads the weights: a write
to a weight before the step is seen, nothing passes from a forward to the step, and under
``torch.compile`` the term is traced into the compiled optimizer step. The ``λ W`` part goes to
the optimizer's own weight decay where it has the same form (SGD/Adam coupled, AdamW
decoupled); with ε = 0 the term is exactly plain L2 decay. Implementations, chosen by
``mmdet_eps.ops.select_impl`` as the layers' are: torch ops, single- or multi-tensor (the
group's ``foreach``), or the fused CPU op, which reduces each filter and updates it in one pass.
"""
import math
from typing import List, Optional

import torch
from torch import Tensor

from mmdet_eps.models.layers import fan_in, is_centered, scale_divisor, unit_filters
from mmdet_eps.ops import Impl, fused_eps_shift_, select_impl

#: Param-group keys set by ``EpsShiftedOptimWrapperConstructor``; they travel in checkpoints.
FAMILY_KEY = 'eps_shift_family'
LAMBDA_KEY = 'eps_shift_lambda'
EPS_KEY = 'eps_shift_eps'
MODE_KEY = 'eps_shift_mode'
#: 0: the paper's population std in WS's term (default); 1: the unbiased std of the authors' code.
CORRECTION_KEY = 'eps_shift_correction'
#: The fused CPU step (True), torch ops (False) or where it applies (None).
FUSED_KEY = 'eps_shift_fused'
MODES = ('coupled', 'decoupled')


def unit_coefficient(weight: Tensor, family: str, eps: float, lam: float,
                     correction: int = 0) -> float:
    """``λ ε sqrt(D / n)``: the multiple of the unit filters in ``λ∇R``."""
    n = fan_in(weight)
    return lam * eps * math.sqrt(scale_divisor(family, n, correction) / n)


def eps_shifted_grad(weight: Tensor, family: str, eps: float, lam: float,
                     correction: int = 0) -> Tensor:
    """λ∇R of the ε-shifted L2 term for one weight tensor, computed from its current values."""
    unit = unit_filters(weight, is_centered(family))
    return torch.add(weight.detach() * lam, unit,
                     alpha=-unit_coefficient(weight, family, eps, lam, correction))


def _add_scaled(targets: List[Tensor], sources: List[Tensor], scales: List[float],
                foreach: bool) -> None:
    """``targets[i] += scales[i] * sources[i]``."""
    if not foreach:
        for target, source, scale in zip(targets, sources, scales):
            target.add_(source, alpha=scale)
    elif all(scale == scales[0] for scale in scales):
        torch._foreach_add_(targets, sources, alpha=scales[0])
    else:
        torch._foreach_add_(targets, torch._foreach_mul(sources, scales))


def _scale(targets: List[Tensor], factor: float, foreach: bool) -> None:
    if foreach:
        torch._foreach_mul_(targets, factor)
    else:
        for target in targets:
            target.mul_(factor)


def _single_tensor_eps_shift(params: List[Tensor], centered: bool, coefs: List[float],
                             lam: float, decoupled: bool, lr: float, opt_decay: float,
                             traceable: bool) -> None:
    _eps_shift(params, centered, coefs, lam, decoupled, lr, opt_decay, traceable, foreach=False)


def _multi_tensor_eps_shift(params: List[Tensor], centered: bool, coefs: List[float],
                            lam: float, decoupled: bool, lr: float, opt_decay: float,
                            traceable: bool) -> None:
    _eps_shift(params, centered, coefs, lam, decoupled, lr, opt_decay, traceable, foreach=True)


def _fused_eps_shift(params: List[Tensor], centered: bool, coefs: List[float], lam: float,
                     decoupled: bool, lr: float, opt_decay: float) -> None:
    """:func:`_eps_shift` in one fused op, ``target += a W + b x`` per tensor, reducing each
    filter for ``x`` and updating it in one pass."""
    own = 0. if opt_decay else lam
    flags = [int(centered)] * len(params)
    if not decoupled:  # g += λ W - c x
        fused_eps_shift_([p.grad for p in params], params, [own] * len(params),
                         [-c for c in coefs], flags)
        return
    after = 1 - lr * opt_decay  # see _eps_shift
    fused_eps_shift_(params, params, [-lr * own] * len(params),
                     [lr * c / after for c in coefs], flags)


def _eps_shift(params: List[Tensor], centered: bool, coefs: List[float], lam: float,
               decoupled: bool, lr: float, opt_decay: float, traceable: bool,
               foreach: bool) -> None:
    """Apply ``λ∇R = λ W - c x`` (``c`` per tensor in ``coefs``, ``x`` the unit filters of the
    params as they are now) with torch ops.

    ``opt_decay`` is the weight decay the optimizer itself applies to these params in the same
    form (it equals λ when the constructor delegated ``λ W`` to it, else 0: then ``λ W`` is
    applied here). ``traceable``: the unit filters in the ops a compiler fuses best.
    """
    units = [unit_filters(p, centered, traceable) for p in params]
    own = 0. if opt_decay else lam
    if not decoupled:  # g += λ W - c x
        grads = [p.grad for p in params]
        if own:
            _add_scaled(grads, params, [own] * len(params), foreach)
        _add_scaled(grads, units, [-c for c in coefs], foreach)
        return
    # W -= lr (λ W - c x); when the optimizer shrinks W by (1 - lr λ) after this term,
    # pre-divide the added part so the result is exact.
    if own:
        _scale(params, 1 - lr * own, foreach)
    after = 1 - lr * opt_decay
    _add_scaled(params, units, [lr * c / after for c in coefs], foreach)


def eps_shift(params: List[Tensor], family: str, eps: float, lam: float, mode: str, lr: float,
              opt_decay: float = 0., correction: int = 0, foreach: Optional[bool] = None,
              fused: Optional[bool] = None) -> None:
    """The ε-shifted update of one param group's normalized weights (those with a gradient),
    computed from the weights as they are now.

    Args:
        params (list[Tensor]): Normalized conv weights of one family.
        family (str): ``'ws'``, ``'wn'`` or ``'cwn'``.
        eps (float): ε, the scale the term pulls each filter to.
        lam (float): λ.
        mode (str): ``'coupled'`` (added to the gradient, before momentum / moment estimates)
            or ``'decoupled'`` (applied to the weight, as AdamW decays).
        lr (float): Learning rate (decoupled mode).
        opt_decay (float): Weight decay that the optimizer applies itself, in the form of
            ``mode``. Defaults to 0.
        correction (int): WS's std in the term: 0 population (paper), 1 unbiased (authors'
            code). Defaults to 0.
        foreach (bool, optional): Multi-tensor kernels (fewer launches) or a loop over tensors,
            for torch ops. Defaults to None: multi-tensor unless the weights are on the CPU, as
            torch's optimizers choose.
        fused (bool, optional): The fused CPU op (one per group, see ``mmdet_eps.ops``) or torch
            ops, as ``mmdet_eps.ops.select_impl`` decides. Defaults to None: fused where the op
            applies, eager or compiled.
    """
    if not params:
        return
    centered = is_centered(family)
    by_shape = {}  # many weights share a filter shape: one coefficient each
    coefs = [by_shape.get(p.shape[1:]) or by_shape.setdefault(
        p.shape[1:], unit_coefficient(p, family, eps, lam, correction)) for p in params]
    args = (params, centered, coefs, lam, mode == 'decoupled', lr, opt_decay)
    impl = select_impl(params + [p.grad for p in params], fused)
    if impl is Impl.FUSED:
        _fused_eps_shift(*args)
    elif foreach or (foreach is None and params[0].device.type != 'cpu'):
        _multi_tensor_eps_shift(*args, impl is Impl.TRACEABLE)
    else:
        _single_tensor_eps_shift(*args, impl is Impl.TRACEABLE)


def apply_eps_shift(param_groups: List[dict]) -> None:
    """The ε-shifted term for every param group tagged with ``FAMILY_KEY``, computed from the
    parameters as they are now (those with a gradient). Runs without gradients.

    Called by the ε-shifted optimizers' ``step`` (``eps_shifted_optimizer``), inside its no-grad
    region, before their update:
    after gradient clipping and AMP unscaling, and not at all on a step that AMP skips for
    overflow. The group's ``FUSED_KEY`` (the fused CPU op; None: where it applies) and then its
    own ``foreach`` flag choose the implementation. It holds no state.
    """
    for group in param_groups:
        family = group.get(FAMILY_KEY)
        if family is None:
            continue
        eps_shift([p for p in group['params'] if p.grad is not None], family, group[EPS_KEY],
                  group[LAMBDA_KEY], group[MODE_KEY], group['lr'], group.get('weight_decay', 0.),
                  group.get(CORRECTION_KEY, 0), group.get('foreach'), group.get(FUSED_KEY))
