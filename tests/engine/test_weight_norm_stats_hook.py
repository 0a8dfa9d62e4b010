"""WeightNormStatsHook: its numbers against the weights in a real Runner run (message hub and
scalars.json), its overflow warning on a collapsing run and its silence on a healthy one, the
growth-episode logic, model-wrapper unwrapping and argument validation."""
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import List, Optional

import pytest
import torch
from mmengine.logging import MessageHub, MMLogger
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from torch import nn

from mmdet_eps.engine.hooks import WeightNormStatsHook
from mmdet_eps.models.layers import CWNConv, WNConv, WSConv

KEYS = ('wn_stats/eff_lr', 'wn_stats/max_inv_std', 'wn_stats/min_std', 'wn_stats/n_small')
LR = 0.1


class StatsNet(BaseModel):
    """WS, WN and CWN convs in the loss path, a plain conv, and ``dead``: a WS conv whose output
    is multiplied by 0, so it gets no loss gradient and only weight decay moves it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.ws = WSConv(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.wn = WNConv(8, 8, 3, padding=1)
        self.cwn = CWNConv(8, 8, 3, padding=1)
        self.plain = nn.Conv2d(8, 8, 1)
        self.dead = WSConv(3, 4, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, inputs, labels=None, mode='loss'):
        x = torch.relu(self.bn(self.ws(inputs)))
        x = self.plain(self.cwn(torch.relu(self.wn(x))))
        out = self.fc(x.mean((2, 3))) + 0 * self.dead(inputs).mean()
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(out, labels))
        return out


def direct_scales(model: nn.Module) -> dict:
    """Per-filter scale of every normalized conv by plain torch ops, in float64:
    population std (WS), ||W|| (WN), ||W - m|| (CWN)."""
    out = {}
    for name in ('ws', 'wn', 'cwn', 'dead'):
        f = getattr(model, name).weight.detach().double().reshape(
            getattr(model, name).weight.shape[0], -1)
        if name in ('ws', 'dead'):
            out[name] = f.std(dim=1, unbiased=False)
        elif name == 'wn':
            out[name] = f.norm(dim=1)
        else:
            out[name] = (f - f.mean(dim=1, keepdim=True)).norm(dim=1)
    return out


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def train_tiny(work_dir: Path, hook: dict, weight_decay: float = 1e-4, eps: float = 1e-3,
               custom_keys: Optional[dict] = None, max_epochs: int = 2, momentum: float = 0.,
               logger_interval: int = 2, model: Optional[nn.Module] = None):
    """Train StatsNet for ``max_epochs`` x 6 iterations through mmengine's Runner with the hook,
    the ε-shifted constructor and LoggerHook; returns (runner, hook, warning messages)."""
    gen = torch.Generator().manual_seed(0)
    data = [dict(inputs=torch.randn(3, 8, 8, generator=gen), labels=torch.tensor(i % 2))
            for i in range(12)]
    loader = dict(batch_size=2, dataset=data, num_workers=0,
                  sampler=dict(type='DefaultSampler', shuffle=False),
                  collate_fn=dict(type='default_collate'))
    paramwise = dict(eps_shift=dict(eps=eps))
    if custom_keys:
        paramwise['custom_keys'] = custom_keys
    with DefaultScope.overwrite_default_scope('mmdet'):
        runner = Runner(
            model=model or StatsNet(), work_dir=str(work_dir), default_scope='mmdet',
            experiment_name=f'wn_stats_{work_dir.name}', train_dataloader=loader,
            train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
            optim_wrapper=dict(
                constructor='EpsShiftedOptimWrapperConstructor',
                optimizer=dict(type='SGD', lr=LR, momentum=momentum,
                               weight_decay=weight_decay),
                paramwise_cfg=paramwise),
            default_hooks=dict(logger=dict(type='LoggerHook', interval=logger_interval),
                               checkpoint=None),
            custom_hooks=[dict(type='WeightNormStatsHook', **hook)])
        handler = _ListHandler()
        runner.logger.addHandler(handler)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny ops: a second thread only spin-waits on a shared CPU
        try:
            runner.train()
        finally:
            torch.set_num_threads(threads)
            runner.logger.removeHandler(handler)
    stats_hook = next(h for h in runner.hooks if isinstance(h, WeightNormStatsHook))
    return runner, stats_hook, [m for m in handler.messages if 'WeightNormStatsHook' in m]


def read_scalars(work_dir: Path) -> List[dict]:
    (path, ) = work_dir.glob('*/vis_data/scalars.json')
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_logged_numbers_equal_the_weights_stats(tmp_path):
    runner, hook, warnings = train_tiny(
        tmp_path / 'run', hook=dict(interval=2, layers=['ws', 'c*'], threshold=0.11))
    scales = direct_scales(runner.model)
    everything = torch.cat(list(scales.values()))
    expected = {
        'wn_stats/eff_lr': sum((LR / s).mean().item() for s in scales.values()) / len(scales),
        'wn_stats/max_inv_std': (1 / everything).max().item(),
        'wn_stats/min_std': everything.min().item(),
        'wn_stats/n_small': int((everything < 0.11).sum()),
        'wn_stats/eff_lr/ws': (LR / scales['ws']).mean().item(),
        'wn_stats/eff_lr/cwn': (LR / scales['cwn']).mean().item(),
    }
    assert 0 < expected['wn_stats/n_small'] < everything.numel()  # the threshold separates
    # the message hub holds what LoggerHook logged last, and the hook's own copy agrees
    hub = {key: runner.message_hub.get_scalar(f'train/{key}').current() for key in expected}
    assert hub == pytest.approx(expected, rel=1e-9)
    assert hook.last_stats == pytest.approx(expected, rel=1e-9)
    # scalars.json: every logged line carries the keys; the last one equals the weights' stats
    lines = read_scalars(tmp_path / 'run')
    assert [line['step'] for line in lines] == [2, 4, 6, 8, 10, 12]
    assert all(set(expected) <= set(line) for line in lines)
    assert {k for k in lines[-1] if k.startswith('wn_stats/')} == set(expected)
    assert {k: lines[-1][k] for k in expected} == pytest.approx(expected, rel=1e-9)
    assert lines[-1]['epoch'] == 2 and lines[-1]['iter'] == 12
    assert warnings == []


def test_warns_once_on_a_collapsing_run_and_stays_silent_on_the_cure(tmp_path):
    # plain decay (eps=0) with a huge λ on the 'dead' conv: its std shrinks 10x per step
    collapse = dict(custom_keys={'dead': dict(decay_mult=9e4)}, weight_decay=1e-4)
    runner, hook, warnings = train_tiny(tmp_path / 'plain', hook=dict(interval=2), eps=0.,
                                        **collapse)
    assert direct_scales(runner.model)['dead'].max() < 1e-10
    assert len(warnings) == 1, warnings
    assert 'layer dead (ws)' in warnings[0] and 'grew' in warnings[0]
    assert 'EpsShiftedOptimWrapperConstructor' in warnings[0]
    assert hook.last_stats['wn_stats/min_std'] < 1e-10
    # the same λ with the ε-shifted term: std settles at ε, no warning
    runner, hook, warnings = train_tiny(tmp_path / 'eps', hook=dict(interval=2), eps=1e-2,
                                        **collapse)
    assert direct_scales(runner.model)['dead'].min() > 0.5e-2
    assert warnings == []


def _fake_runner(model: nn.Module, logger: logging.Logger) -> SimpleNamespace:
    """What the hook reads from a Runner, without one: for the episode logic."""
    return SimpleNamespace(
        model=model, optim_wrapper=OptimWrapper(torch.optim.SGD(model.parameters(), lr=LR)),
        message_hub=MessageHub.get_instance('wn_stats_fake'), logger=logger, iter=0,
        train_dataloader=[None] * 1000, hooks=[])


def test_one_warning_per_growth_episode_and_overflow_std():
    model = nn.Sequential(WSConv(3, 4, 3), nn.BatchNorm2d(4), WNConv(4, 4, 3))
    handler = _ListHandler()
    logger = MMLogger.get_instance('wn_stats_episode')
    logger.addHandler(handler)
    runner = _fake_runner(model, logger)
    hook = WeightNormStatsHook(interval=1)
    hook.before_train(runner)
    weight = model[0].weight
    initial = weight.detach().clone()

    def step(scale: float) -> None:
        with torch.no_grad():
            weight.mul_(scale)
        runner.iter += 1
        hook.after_train_iter(runner, batch_idx=runner.iter - 1)

    for _ in range(4):  # 1/std: 9 -> 180 -> 3.6e3 (warn: 20x) -> 7e4 -> 1.4e6, one episode
        step(0.05)
    assert len(handler.messages) == 1 and 'layer 0 (ws)' in handler.messages[0]
    step(1.)  # no longer growing: the episode ends
    step(0.05)  # grows 20x while large: a new episode
    assert len(handler.messages) == 2
    with torch.no_grad():  # recover, then fall under overflow_std in one jump
        weight.copy_(initial)
    step(1.)
    step(1e-25)
    step(1.)  # still under overflow_std: same episode, silent
    assert len(handler.messages) == 3 and 'overflow_std' in handler.messages[2]
    assert hook.last_stats['wn_stats/min_std'] < 1e-20
    with torch.no_grad():
        weight.fill_(float('nan'))
    step(1.)  # non-finite weights: still the same episode
    assert len(handler.messages) == 3
    assert 'wn_stats/eff_lr/0' not in hook.last_stats  # per-layer keys only with `layers`
    logger.removeHandler(handler)


def test_unwraps_model_wrappers_and_skips_frozen_weights():
    model = nn.Sequential(WSConv(3, 4, 3), WNConv(4, 4, 3), CWNConv(4, 4, 3))
    model[1].weight.requires_grad_(False)
    runner = _fake_runner(model, MMLogger.get_instance('wn_stats_wrapper'))
    runner.model = nn.DataParallel(model)  # registered in mmengine's MODEL_WRAPPERS
    hook = WeightNormStatsHook(interval=1, layers=['0', '2'])
    hook.after_train_iter(runner, batch_idx=0)
    assert set(hook.last_stats) == set(KEYS) | {'wn_stats/eff_lr/0', 'wn_stats/eff_lr/2'}
    scales = [model[0].weight.double().reshape(4, -1).std(1, unbiased=False),
              (lambda f: (f - f.mean(1, keepdim=True)).norm(dim=1))(
                  model[2].weight.double().reshape(4, -1))]
    assert hook.last_stats['wn_stats/min_std'] == pytest.approx(
        min(s.min().item() for s in scales), rel=1e-9)


@pytest.mark.parametrize('kwargs, name', [
    (dict(interval=0), 'interval'), (dict(interval=2.5), 'interval'),
    (dict(interval=True), 'interval'), (dict(threshold=0.), 'threshold'),
    (dict(threshold=float('inf')), 'threshold'), (dict(growth_warn=1.), 'growth_warn'),
    (dict(large_inv_std=-1.), 'large_inv_std'), (dict(overflow_std='1e-20'), 'overflow_std'),
    (dict(layers='backbone'), 'layers'), (dict(layers=['']), 'layers'),
    (dict(layers=5), 'layers'),
])
def test_invalid_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        WeightNormStatsHook(**kwargs)
