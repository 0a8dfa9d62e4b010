"""Optimizer-wrapper constructor that gives normalized conv weights the ε-shifted L2 term."""
import numbers
from collections import Counter
from typing import Dict, List, Optional

from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMDET_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from mmdet_eps.models.layers import get_norm_family
from mmdet_eps.ops import Impl, select_impl

from .eps_shifted_optimizer import make_eps_shifted
from .eps_shifted_regularizer import (
    CORRECTION_KEY,
    EPS_KEY,
    FAMILY_KEY,
    FUSED_KEY,
    LAMBDA_KEY,
    MODE_KEY,
    MODES,
)

_EPS_SHIFT_DEFAULTS = dict(eps=1e-3, mode='auto', decay_mult=1.0, std='population', fused=None)
#: Optimizers whose own ``weight_decay`` is decoupled from the gradient: ``mode='auto'`` gives
#: the ε-shifted term the same form there, and the coupled form (SGD, Adam, ...) elsewhere.
DECOUPLED_DECAY_OPTIMIZERS = ('AdamW', )
#: Optimizers known to add ``weight_decay * W`` to the gradient (unless built with
#: ``decoupled_weight_decay=True``).
COUPLED_DECAY_OPTIMIZERS = ('SGD', 'Adam', 'Adamax', 'NAdam', 'RAdam', 'RMSprop', 'Adagrad')
_CONFIG_MODES = MODES + ('auto', )
#: ``std`` option -> correction of WS's std in the term (paper: population; authors: unbiased).
_STD_CORRECTION = {'population': 0, 'unbiased': 1}


def _check_eps_shift(cfg: Optional[dict]) -> dict:
    """Validate ``paramwise_cfg.eps_shift``, naming the offending key."""
    cfg = {} if cfg is None else cfg
    if not isinstance(cfg, dict):
        raise TypeError(f'paramwise_cfg.eps_shift must be a dict, got {type(cfg).__name__}')
    unknown = set(cfg) - set(_EPS_SHIFT_DEFAULTS)
    if unknown:
        raise ValueError(f'paramwise_cfg.eps_shift: unknown key(s) {sorted(unknown)}; '
                         f'allowed: {sorted(_EPS_SHIFT_DEFAULTS)}')
    out = {**_EPS_SHIFT_DEFAULTS, **cfg}
    for key in ('eps', 'decay_mult'):
        value = out[key]
        if (isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0
                or value != value):
            raise ValueError(f'paramwise_cfg.eps_shift.{key} must be a float >= 0, '
                             f'got {value!r}')
        out[key] = float(value)
    if out['mode'] not in _CONFIG_MODES:
        raise ValueError(f'paramwise_cfg.eps_shift.mode must be one of {_CONFIG_MODES}, '
                         f'got {out["mode"]!r}')
    if out['std'] not in _STD_CORRECTION:
        raise ValueError(f'paramwise_cfg.eps_shift.std must be one of '
                         f'{tuple(_STD_CORRECTION)}, got {out["std"]!r}')
    if not (out['fused'] is None or isinstance(out['fused'], bool)):
        raise ValueError(f'paramwise_cfg.eps_shift.fused must be None, True or False, '
                         f'got {out["fused"]!r}')
    return out


def _own_decay_form(optimizer_cfg: dict) -> Optional[str]:
    """``'coupled'`` / ``'decoupled'``: how the configured optimizer applies its own
    ``weight_decay``; None when unknown."""
    opt_type = optimizer_cfg.get('type')
    name = getattr(opt_type, '__name__', opt_type)  # a registry name or a class
    if name in DECOUPLED_DECAY_OPTIMIZERS or optimizer_cfg.get('decoupled_weight_decay'):
        return 'decoupled'
    return 'coupled' if name in COUPLED_DECAY_OPTIMIZERS else None


def _merge_groups(groups: List[dict]) -> List[dict]:
    """Merge param groups whose settings are equal, keeping first-seen order, so torch's
    multi-tensor (foreach) kernels see few large groups instead of one group per tensor."""
    merged: Dict[tuple, dict] = {}
    for group in groups:
        key = tuple(sorted((k, repr(v)) for k, v in group.items() if k != 'params'))
        if key in merged:
            merged[key]['params'].extend(group['params'])
        else:
            merged[key] = {**group, 'params': list(group['params'])}
    return list(merged.values())


@MMDET_OPTIM_WRAPPER_CONSTRUCTORS.register_module()  # mmdet's own names ('mmdet.X') keep working
@OPTIM_WRAPPER_CONSTRUCTORS.register_module()  # root: found from every toolbox's scope, or none
class EpsShiftedOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Drop-in for mmengine's default constructor that replaces plain weight decay on the
    weights of WS / WN / CWN convs (ours and mmcv's ``ConvWS``/``ConvAWS``) by the paper's
    ε-shifted L2 term.

    Every option of ``DefaultOptimWrapperConstructor`` keeps working; ``bias_decay_mult``
    defaults to 0 (paper Sec. 6.1). The term's options travel in ``paramwise_cfg``::

        paramwise_cfg=dict(eps_shift=dict(eps=1e-3, mode='auto', decay_mult=1.0))

    λ is the weight decay the default rules give the weight (``custom_keys`` included) times
    ``decay_mult``. ``λ∇R = λ W - λ ε sqrt(D/n) x`` (see ``eps_shifted_regularizer``): when the
    optimizer applies its own weight decay in the form of ``mode`` (SGD/Adam coupled, AdamW
    decoupled), the group's ``weight_decay`` is set to λ and the optimizer's multi-tensor kernels
    do ``λ W``; the optimizer's ``step`` adds the rest before its update (the built optimizer
    is the ε-shifted subclass of the configured one: ``eps_shifted_optimizer``). Where the
    fused CPU step applies (``fused``), it does ``λ W`` in the same pass as the rest, and the
    group's own ``weight_decay`` is 0.

    Args:
        optim_wrapper_cfg (dict): As ``DefaultOptimWrapperConstructor``; ``optimizer.weight_decay``
            is required (it is λ).
        paramwise_cfg (dict, optional): As ``DefaultOptimWrapperConstructor``, plus
            ``eps_shift`` (dict) with keys:

            - ``eps`` (float): ε. Defaults to 1e-3.
            - ``mode`` (str): ``'coupled'`` adds λ∇R to the gradient before momentum / moment
              estimates (the authors' SGD); ``'decoupled'`` subtracts lr·λ∇R from the weight
              (AdamW-style); ``'auto'`` takes the form of the optimizer's own weight decay:
              decoupled for AdamW, coupled otherwise. Defaults to ``'auto'``.
            - ``decay_mult`` (float): λ = weight decay × this. Defaults to 1.0.
            - ``std`` (str): WS's std in the term: ``'population'`` (the paper's formula) or
              ``'unbiased'`` (the authors' released code, to reproduce its trajectory exactly).
              Defaults to ``'population'``.
            - ``fused`` (bool, optional): The fused CPU step (``mmdet_eps.ops``, one op per
              group and one pass over each gradient) or torch ops. Defaults to None: fused
              where it applies (contiguous float32/64 CPU weights, extension built).

            ``bias_decay_mult`` defaults to 0.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        self.eps_shift = _check_eps_shift(paramwise_cfg.pop('eps_shift', None))
        paramwise_cfg.setdefault('bias_decay_mult', 0.)
        if optim_wrapper_cfg.get('optimizer', {}).get('weight_decay') is None:
            raise ValueError('optim_wrapper.optimizer.weight_decay must be set: it is the λ of '
                             'the ε-shifted L2 term')
        own_form = _own_decay_form(optim_wrapper_cfg['optimizer'])
        if self.eps_shift['mode'] == 'auto':
            self.eps_shift['mode'] = 'decoupled' if own_form == 'decoupled' else 'coupled'
        #: Whether the optimizer's own weight decay can apply the λ W part.
        self.delegate_decay = own_form == self.eps_shift['mode']
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        if self.optimizer_cfg.get('fused'):
            raise ValueError('optim_wrapper.optimizer.fused=True is not supported: fused '
                             'optimizers unscale AMP gradients inside their update, after the '
                             'ε-shifted term, which would be mis-scaled. Use foreach (the '
                             'default).')

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module=None) -> None:
        """Apply the default rules, then, at the top of the recursion (``prefix == ''``), move
        normalized weights to the ε-shifted term and merge groups with equal settings."""
        if prefix:
            return super().add_params(params, module, prefix, is_dcn_module)
        per_tensor: List[dict] = []
        super().add_params(per_tensor, module, prefix, is_dcn_module)
        families = {
            m.weight: get_norm_family(m)
            for m in module.modules()
            if get_norm_family(m) and isinstance(getattr(m, 'weight', None), nn.Parameter)
        }
        for group in per_tensor:
            family = families.get(group['params'][0])
            if family is None:
                continue
            lam = group.get('weight_decay', self.base_wd) * self.eps_shift['decay_mult']
            delegate = self.delegate_decay and not self._fused_step(group['params'])
            group.update({
                'weight_decay': lam if delegate else 0.,
                FUSED_KEY: self.eps_shift['fused'],
                FAMILY_KEY: family,
                LAMBDA_KEY: lam,
                EPS_KEY: self.eps_shift['eps'],
                MODE_KEY: self.eps_shift['mode'],
                CORRECTION_KEY: _STD_CORRECTION[self.eps_shift['std']],
            })
        params.extend(_merge_groups(per_tensor))

    def _fused_step(self, params: List[nn.Parameter]) -> bool:
        """Whether the eager step of these params will be the fused one (which does ``λ W`` in
        the same pass as the rest: nothing to delegate)."""
        try:
            return select_impl(params, self.eps_shift['fused']) is Impl.FUSED
        except RuntimeError as error:
            raise ValueError(f'paramwise_cfg.eps_shift.fused=True cannot run here ({error})'
                             ) from None

    def __call__(self, model: nn.Module) -> OptimWrapper:
        optim_wrapper = super().__call__(model)
        optimizer = optim_wrapper.optimizer
        # mmengine's registry hands the optimizer our groups as ConfigDicts; torch.compile
        # (mmengine's compile=True traces the optimizer step) only traces plain dict groups
        optimizer.param_groups[:] = [dict(group) for group in optimizer.param_groups]
        if optimizer.defaults.get('fused'):
            raise ValueError('fused optimizers are not supported by the ε-shifted term')
        make_eps_shifted(optimizer)  # its step applies the term, then the update
        self._log_summary(optimizer)
        return optim_wrapper

    def _log_summary(self, optimizer) -> None:
        tensors, filters, lambdas = Counter(), Counter(), set()
        for group in optimizer.param_groups:
            family = group.get(FAMILY_KEY)
            if family is not None:
                tensors[family] += len(group['params'])
                filters[family] += sum(p.shape[0] for p in group['params'])
                lambdas.add(group[LAMBDA_KEY])
        summary = ', '.join(f'{fam}: {tensors[fam]} tensors / {filters[fam]} filters'
                            for fam in sorted(tensors)) or 'no normalized conv weights found'
        print_log(f'ε-shifted L2 ({summary}); eps={self.eps_shift["eps"]}, '
                  f'lambda={sorted(lambdas)}, mode={self.eps_shift["mode"]}, '
                  f'std={self.eps_shift["std"]}, '
                  f'{len(optimizer.param_groups)} param groups', logger='current')
