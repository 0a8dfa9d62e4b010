"""A cheap stability monitor for weight-normalized convs: effective learning rate, 1/std and a
warning before float overflow (the failure the ε-shifted term prevents, paper Sec. 4 / Table II).

Per output filter of a normalized conv weight the *scale* ``s`` is what the normalization divides
by: the population std ``v`` (WS), ``||W||`` (WN) or ``||W - m||`` (CWN). Under weight decay ``s``
shrinks, the effective learning rate ``lr / s`` (paper Eq. 15/16) grows, and once ``1/s`` nears
float32's range the run dies of overflow. Every ``interval`` iterations the hook publishes, through
mmengine's message hub (so ``LoggerHook`` writes them to the text log, ``scalars.json`` and every
visualization backend such as TensorBoard):

``wn_stats/eff_lr``
    Mean over layers of each layer's mean over filters of ``lr / s``.
``wn_stats/eff_lr/<layer>``
    The same for one layer, only for layers matching ``layers``.
``wn_stats/max_inv_std``
    Max of ``1/s`` over all filters of all layers.
``wn_stats/min_std``
    Min of ``s`` over all filters of all layers.
``wn_stats/n_small``
    Number of filters with ``s < threshold``.
"""
import fnmatch
import math
import numbers
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmdet.registry import HOOKS as MMDET_HOOKS
from mmengine.hooks import Hook, LoggerHook
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS
from torch import Tensor, nn

from mmdet_eps.models.layers import fan_in, filter_norm, get_norm_family, is_centered, scale_divisor

#: Prefix of every key the hook logs (``train/`` is added for the message hub).
KEY_PREFIX = 'wn_stats'
#: Columns of the per-layer statistics row computed by :func:`layer_stats`.
_MIN_S, _MAX_INV, _N_SMALL, _MEAN_INV, _NONFINITE = range(5)


@torch.no_grad()
def layer_stats(weight: Tensor, family: str, threshold: float) -> Tensor:
    """``[min s, max 1/s, #(s < threshold), mean 1/s, any non-finite]`` of one weight, float64.

    ``s`` is the family's per-filter scale ``||u|| / sqrt(D)`` (``norm_family``; WS: the
    population std), computed in float64 so that scales far below float32's range (denormal
    weights of a collapsing filter) are still measured.
    """
    w = weight.detach().to(torch.float64)
    scale = filter_norm(w, is_centered(family)).flatten().div_(
        math.sqrt(scale_divisor(family, fan_in(w))))
    inv = scale.reciprocal()
    return torch.stack([scale.min(), inv.max(), (scale < threshold).sum().to(scale.dtype),
                        inv.mean(), (~torch.isfinite(scale)).any().to(scale.dtype)])


def _check_positive(name: str, value, minimum: float = 0., integer: bool = False):
    kind = numbers.Integral if integer else numbers.Real
    if (isinstance(value, bool) or not isinstance(value, kind) or not value > minimum
            or not math.isfinite(value)):
        what = 'an int' if integer else 'a finite number'
        raise ValueError(f'WeightNormStatsHook: {name} must be {what} > {minimum:g}, '
                         f'got {value!r}')
    return value if integer else float(value)


@MMDET_HOOKS.register_module()  # mmdet's own names ('mmdet.X') keep working
@HOOKS.register_module()  # root: found from every toolbox's scope, or none
class WeightNormStatsHook(Hook):
    """Log the effective learning rate and 1/std of weight-normalized convs and warn before the
    float overflow that plain weight decay causes.

    Enable with ``custom_hooks=[dict(type='WeightNormStatsHook', interval=50)]``. It watches every
    trainable module with a family per :func:`get_norm_family` (WS / WN / CWN convs and mmcv's
    ``ConvWS``/``ConvAWS``; frozen weights, which do not move, are skipped). The keys it logs are
    listed in the module docstring; ``lr`` is that of the optimizer param group holding the weight.

    It fires on the iterations where ``LoggerHook`` with the same interval writes a line (every
    ``interval`` iterations of an epoch and at its last one), so the logged values are fresh when
    ``interval`` divides the logger's interval; otherwise a log line repeats the last values.
    The work is one float64 :func:`layer_stats` per weight under ``no_grad``, and one device
    sync.

    A warning names the layer, once per growth episode, when its max 1/std is at least
    ``large_inv_std`` and grew by ``growth_warn`` or more since the previous check, when its min
    std falls below ``overflow_std`` (1/std² then overflows float32), or when its weights are no
    longer finite. The episode ends at a check that finds the layer's max 1/std no longer growing
    and none of these conditions.

    Args:
        interval (int): Check every ``interval`` training iterations. Defaults to 50, mmdet's
            logger interval.
        layers (Sequence[str], optional): ``fnmatch`` patterns of layer names (as in
            ``model.named_modules()``, without a DDP ``module.`` prefix) whose mean effective
            learning rate is also logged on its own. Defaults to None: only the mean over layers.
        threshold (float): A filter counts in ``n_small`` when its std is below this.
            Defaults to 1e-6.
        growth_warn (float): Growth factor of a layer's max 1/std within one interval that
            warns (when already ``large_inv_std``). Defaults to 10.
        large_inv_std (float): Max 1/std from which fast growth warns. Defaults to 1e3.
        overflow_std (float): Min std under which it warns regardless of growth. Defaults to
            1e-20, where std² is already below float32's normal range.
    """

    priority = 'NORMAL'  # before LoggerHook ('BELOW_NORMAL') in the same after_train_iter

    def __init__(self,
                 interval: int = 50,
                 layers: Optional[Sequence[str]] = None,
                 threshold: float = 1e-6,
                 growth_warn: float = 10.,
                 large_inv_std: float = 1e3,
                 overflow_std: float = 1e-20) -> None:
        self.interval = _check_positive('interval', interval, integer=True)
        self.threshold = _check_positive('threshold', threshold)
        self.growth_warn = _check_positive('growth_warn', growth_warn, minimum=1.)
        self.large_inv_std = _check_positive('large_inv_std', large_inv_std)
        self.overflow_std = _check_positive('overflow_std', overflow_std)
        if layers is not None:
            if not isinstance(layers, (list, tuple)) or not all(
                    isinstance(p, str) and p for p in layers):
                raise ValueError('WeightNormStatsHook: layers must be a list of non-empty name '
                                 f'patterns, got {layers!r}')
            layers = list(layers)
        self.layers: Optional[List[str]] = layers
        self._modules: Optional[List[Tuple[str, nn.Module]]] = None
        self._prev_max_inv: Dict[str, float] = {}
        self._in_episode: Dict[str, bool] = {}
        #: The latest values, as logged (without the ``train/`` prefix); for tests and scripts.
        self.last_stats: Dict[str, float] = {}

    # ------------------------------------------------------------------ discovery
    def _normalized_modules(self, runner) -> List[Tuple[str, nn.Module]]:
        """``(name, module)`` of every module with a normalized weight, found once."""
        if self._modules is None:
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            self._modules = [(name, m) for name, m in model.named_modules()
                             if get_norm_family(m) and isinstance(getattr(m, 'weight', None),
                                                                  nn.Parameter)]
            if not self._modules:
                runner.logger.warning('WeightNormStatsHook: the model has no weight-normalized '
                                      'conv (WS/WN/CWN); nothing will be logged')
            elif self.layers and not any(self._selected(name) for name, _ in self._modules):
                runner.logger.warning(
                    f'WeightNormStatsHook: layers={self.layers} match no normalized layer; '
                    f'names look like {[name for name, _ in self._modules[:3]]}')
        return self._modules

    def _selected(self, name: str) -> bool:
        return bool(self.layers) and any(fnmatch.fnmatchcase(name, p) for p in self.layers)

    @staticmethod
    def _param_groups(runner) -> Dict[nn.Parameter, dict]:
        """``param -> param group`` over all optimizers of the runner (tensors hash by
        identity)."""
        wrapper = runner.optim_wrapper
        wrappers = (wrapper.optim_wrappers.values()
                    if isinstance(wrapper, OptimWrapperDict) else [wrapper])
        return {p: group for w in wrappers for group in w.optimizer.param_groups
                for p in group['params']}

    # ------------------------------------------------------------------ hook points
    def before_train(self, runner) -> None:
        """Find the layers, take the reference for the first growth check, and say when the
        logger's interval would log stale values."""
        for hook in runner.hooks:
            if isinstance(hook, LoggerHook) and hook.interval % self.interval:
                runner.logger.warning(
                    f'WeightNormStatsHook: interval={self.interval} does not divide LoggerHook '
                    f'interval={hook.interval}: some log lines repeat older wn_stats values')
        for entry in self._collect(runner):
            self._prev_max_inv[entry['name']] = entry['row'][_MAX_INV]

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        """Every ``interval`` iterations (and at the end of an epoch): compute, log, warn."""
        if not (self.every_n_inner_iters(batch_idx, self.interval)
                or self.end_of_epoch(runner.train_dataloader, batch_idx)):
            return
        layers = self._collect(runner)
        if not layers:
            return
        stats = self._aggregate(layers)
        for key, value in stats.items():
            runner.message_hub.update_scalar(f'train/{key}', value, resumed=False)
        self.last_stats = stats
        self._warn(runner, layers)

    # ------------------------------------------------------------------ computation
    def _collect(self, runner) -> List[dict]:
        """Statistics of every trainable normalized layer: one row per layer, one sync."""
        groups = self._param_groups(runner)
        entries, rows = [], []
        for name, module in self._normalized_modules(runner):
            weight = module.weight
            group = groups.get(weight)
            if group is None or not weight.requires_grad:
                continue
            family = get_norm_family(module)
            entries.append(dict(name=name, family=family, lr=float(group['lr'])))
            rows.append(layer_stats(weight, family, self.threshold))
        if rows:
            for entry, row in zip(entries, torch.stack(rows).cpu().tolist()):
                entry['row'] = row
        return entries

    def _aggregate(self, layers: List[dict]) -> Dict[str, float]:
        """The logged values: aggregates over all layers, per-layer eff. lr of selected ones."""
        rows = [entry['row'] for entry in layers]
        min_s = [row[_MIN_S] for row in rows]
        max_inv = [row[_MAX_INV] for row in rows]
        eff_lr = [entry['lr'] * entry['row'][_MEAN_INV] for entry in layers]
        nan = float('nan')
        stats = {
            f'{KEY_PREFIX}/eff_lr': math.fsum(eff_lr) / len(eff_lr),
            f'{KEY_PREFIX}/max_inv_std': nan if any(map(math.isnan, max_inv)) else max(max_inv),
            f'{KEY_PREFIX}/min_std': nan if any(map(math.isnan, min_s)) else min(min_s),
            f'{KEY_PREFIX}/n_small': int(sum(row[_N_SMALL] for row in rows)),
        }
        for entry, value in zip(layers, eff_lr):
            if self._selected(entry['name']):
                stats[f'{KEY_PREFIX}/eff_lr/{entry["name"]}'] = value
        return stats

    def _warn(self, runner, layers: List[dict]) -> None:
        """Warn once per layer and growth episode when overflow is near."""
        for entry in layers:
            name, row = entry['name'], entry['row']
            max_inv, min_s = row[_MAX_INV], row[_MIN_S]
            prev = self._prev_max_inv.get(name)
            self._prev_max_inv[name] = max_inv
            reason = None
            if row[_NONFINITE] or math.isnan(max_inv):
                reason = 'its weights are no longer finite (training has diverged)'
            elif min_s < self.overflow_std:
                reason = (f'min std {min_s:.3g} < overflow_std={self.overflow_std:g} '
                          f'(max 1/std {max_inv:.3g})')
            elif (prev is not None and prev > 0 and max_inv >= self.large_inv_std
                  and max_inv >= self.growth_warn * prev):
                reason = (f'max 1/std grew {max_inv / prev:.3g}x to {max_inv:.3g} since the last '
                          f'check (growth_warn={self.growth_warn:g})')
            if reason is None:
                if prev is not None and not max_inv > prev:
                    self._in_episode[name] = False
                continue
            if not self._in_episode.get(name):
                self._in_episode[name] = True
                runner.logger.warning(
                    f'WeightNormStatsHook: layer {name} ({entry["family"]}) at iteration '
                    f'{runner.iter + 1}: {reason}. Its std is collapsing under weight decay and '
                    'float32 overflow of 1/std is near; use the ε-shifted L2 term '
                    "(optim_wrapper constructor='EpsShiftedOptimWrapperConstructor' with eps > 0) "
                    'or a smaller weight decay.')
