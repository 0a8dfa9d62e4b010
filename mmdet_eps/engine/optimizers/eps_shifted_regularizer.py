"""The ε-shifted L2 regularizer (paper Eq. 25-28) as an optimizer step pre-hook.

Per filter with ``n`` elements, ``u = W - m`` (WS, CWN) or ``W`` (WN) and the family's scale
``r = ||u|| / sqrt(D)`` (``D = n``: WS's population std v; ``D = 1``: ``||W - m||`` or ``||W||``):

- WS  (Eq. 26): R = 0.5 λ n (m² + (v - ε)²),   λ∇R = λ((1 - ε/v) W + (ε/v) m)
- WN  (Eq. 25): R = 0.5 λ (||W|| - ε)²,        λ∇R = λ (1 - ε/||W||) W
- CWN:          R = 0.5 λ (n m² + (r - ε)²),   λ∇R = λ((1 - ε/r) W + (ε/r) m)

All three are ``λ∇R = λ W - λ ε sqrt(D/n) x`` with the unit filters ``x = sqrt(n) u / ||u||``:
plain L2 decay minus a fixed multiple of a tensor the layers' forward already computed (layer
norm's output, see ``models/layers/filter_stats``). So the step costs the optimizer's own weight
decay (``λ W``: torch's SGD/Adam add it, AdamW shrinks by it, in their multi-tensor kernels) plus
one multi-tensor add per param group; with ε = 0 it is exactly plain L2 decay. On the CPU, the
fused op (``mmdet_eps.ops``) forms the unit filters on the fly from the per-filter mean and rstd
the fused forward recorded: one pass over each gradient, as plain weight decay.
"""
import math
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from mmdet_eps.models.layers import (
    NormalizedConv2d,
    fan_in,
    is_centered,
    scale_divisor,
    take_unit_filters,
)
from mmdet_eps.models.layers.filter_stats import (
    StatsOwner,
    holds_unit_filters,
    take_filter_moments,
    unit_filters,
)
from mmdet_eps.ops import fused_eps_shift_, fused_unsupported
from mmdet_eps.utils.compat import compiler_disable

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


def _single_tensor_eps_shift(params: List[Tensor], units: List[Tensor], coefs: List[float],
                             lam: float, decoupled: bool, lr: float, opt_decay: float) -> None:
    _eps_shift(params, units, coefs, lam, decoupled, lr, opt_decay, foreach=False)


def _multi_tensor_eps_shift(params: List[Tensor], units: List[Tensor], coefs: List[float],
                            lam: float, decoupled: bool, lr: float, opt_decay: float) -> None:
    _eps_shift(params, units, coefs, lam, decoupled, lr, opt_decay, foreach=True)


def _fused_eps_shift(params: List[Tensor], owners: Sequence[Optional[StatsOwner]],
                     centered: bool, coefs: List[float], lam: float, decoupled: bool, lr: float,
                     opt_decay: float) -> None:
    """:func:`_eps_shift` in one fused op: ``target += a W + b (W - m) rstd`` per tensor."""
    moments = take_filter_moments(params, centered, owners)
    own = 0. if opt_decay else lam
    if not decoupled:  # g += λ W - c x
        fused_eps_shift_([p.grad for p in params], params, *moments, [own] * len(params),
                         [-c for c in coefs])
        return
    after = 1 - lr * opt_decay  # see _eps_shift
    fused_eps_shift_(params, params, *moments, [-lr * own] * len(params),
                     [lr * c / after for c in coefs])


def _eps_shift(params: List[Tensor], units: List[Tensor], coefs: List[float], lam: float,
               decoupled: bool, lr: float, opt_decay: float, foreach: bool) -> None:
    """Apply ``λ∇R = λ W - c x`` (``c`` per tensor in ``coefs``, ``x`` the unit filters).

    ``opt_decay`` is the weight decay the optimizer itself applies to these params in the same
    form (it equals λ when the constructor delegated ``λ W`` to it, else 0: then ``λ W`` is
    applied here).
    """
    own = 0. if opt_decay else lam
    if not decoupled:  # g += λ W - c x
        grads = [p.grad for p in params]
        if own:
            _add_scaled(grads, params, [own] * len(params), foreach)
        _add_scaled(grads, units, [-c for c in coefs], foreach)
        return
    # W -= lr (λ W - c x); when the optimizer shrinks W by (1 - lr λ) after this hook,
    # pre-divide the added part so the result is exact.
    if own:
        _scale(params, 1 - lr * own, foreach)
    after = 1 - lr * opt_decay
    _add_scaled(params, units, [lr * c / after for c in coefs], foreach)


def eps_shift(params: List[Tensor], family: str, eps: float, lam: float, mode: str, lr: float,
              opt_decay: float = 0., correction: int = 0, foreach: Optional[bool] = None,
              fused: Optional[bool] = None,
              owners: Optional[Sequence[Optional[StatsOwner]]] = None) -> None:
    """The ε-shifted update of one param group's normalized weights (those with a gradient).

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
        foreach (bool, optional): Multi-tensor kernels (fewer launches) or a loop over tensors.
            Defaults to None: multi-tensor unless the weights are on the CPU, as torch's
            optimizers choose.
        fused (bool, optional): The fused CPU op (one per group, see ``mmdet_eps.ops``); it
            takes precedence over ``foreach``. Defaults to None: as the forward (fused unless
            it recorded unit filters, i.e. ran torch ops), where the op applies.
        owners (Sequence[StatsOwner], optional): Per param, the layer holding what its last
            eager forward computed (see ``filter_stats``), or None. Defaults to None: the
            statistics are computed here.
    """
    if not params:
        return
    owners = [None] * len(params) if owners is None else owners
    centered = is_centered(family)
    by_shape = {}  # many weights share a filter shape: one coefficient each
    coefs = [by_shape.get(p.shape[1:]) or by_shape.setdefault(
        p.shape[1:], unit_coefficient(p, family, eps, lam, correction)) for p in params]
    if fused or fused is None:
        why = fused_unsupported(params + [p.grad for p in params])
        if fused is None and why is None and holds_unit_filters(owners):
            why = 'the forward ran torch ops'
        if fused and why:
            raise RuntimeError(f'fused ε-shifted step unavailable: {why}')
        if why is None:
            _fused_eps_shift(params, owners, centered, coefs, lam, mode == 'decoupled', lr,
                             opt_decay)
            return
    if foreach is None:
        foreach = params[0].device.type != 'cpu'
    units = [take_unit_filters(p, centered, owner) for p, owner in zip(params, owners)]
    impl = _multi_tensor_eps_shift if foreach else _single_tensor_eps_shift
    impl(params, units, coefs, lam, mode == 'decoupled', lr, opt_decay)


class EpsShiftStep:
    """Optimizer step pre-hook: the ε-shifted term for every param group tagged with
    ``FAMILY_KEY``.

    Runs inside ``optimizer.step()``: after gradient clipping and AMP unscaling, and not at all on
    a step that AMP skips for overflow. The group's ``FUSED_KEY`` (the fused CPU op; None: where
    it applies) and then its own ``foreach`` flag choose the implementation. The statistics an
    eager forward computed are taken from the weights' owners, the model's
    ``NormalizedConv2d`` layers (see ``models/layers/filter_stats``); weights without one (mmcv's
    ``ConvWS2d``, no model given, a compiled forward) get them computed here.

    Under ``torch.compile`` (mmengine's ``compile=True`` compiles ``train_step``, optimizer step
    included) this hook is one explicit boundary: it runs eagerly, so the owners' Python state
    and the fused op need no tracing, and it is never skipped.

    Args:
        model (nn.Module, optional): The model whose layers own the weights. Defaults to None.
    """

    def __init__(self, model: Optional[nn.Module] = None) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, NormalizedConv2d)
                       ] if model is not None else []
        #: Per param group, the owner of each param (None: no owner); rebuilt when the groups'
        #: sizes change.
        self.owners: List[List[Optional[StatsOwner]]] = []

    def _owners_of(self, groups: List[dict]) -> List[List[Optional[StatsOwner]]]:
        if [len(o) for o in self.owners] != [len(g['params']) for g in groups]:
            self.owners = [[next((m for m in self.layers if m.weight is p), None)
                            for p in g['params']] for g in groups]
        return self.owners

    @compiler_disable
    @torch.no_grad()
    def __call__(self, optimizer: Optimizer, *_) -> None:
        groups = optimizer.param_groups
        for group, owners in zip(groups, self._owners_of(groups)):
            family = group.get(FAMILY_KEY)
            if family is None:
                continue
            pairs = [(p, o) for p, o in zip(group['params'], owners) if p.grad is not None]
            eps_shift([p for p, _ in pairs], family, group[EPS_KEY], group[LAMBDA_KEY],
                      group[MODE_KEY], group['lr'], group.get('weight_decay', 0.),
                      group.get(CORRECTION_KEY, 0), group.get('foreach'), group.get(FUSED_KEY),
                      [o for _, o in pairs])
