"""The one-stage toy detectors train on the toy set through the real Runner: RetinaNet GN+WS
(SGD, the ε-shifted term coupled) and RTMDet on a WS-CSPNeXt (AdamW, the term decoupled, no
decay on norms and biases, EMA), each with the optimizer and hooks of its full config."""
import json
import math
from pathlib import Path

import pytest
import torch
from mmdet.engine.hooks import PipelineSwitchHook
from mmdet.models.layers import ExpMomentumEMA
from mmengine.hooks import EMAHook
from mmengine.runner import Runner
from torch import nn

from mmdet_eps.engine.hooks import WeightNormStatsHook
from mmdet_eps.engine.optimizers.eps_shifted_regularizer import (
    EPS_KEY,
    FAMILY_KEY,
    LAMBDA_KEY,
    MODE_KEY,
)
from mmdet_eps.models.layers import get_norm_family
from tests.toy_run import toy_config

pytestmark = pytest.mark.slow

#: Epochs of 4 toy images at batch 2 (2 iterations each), and the iterations whose mean loss the
#: last ten must beat. RTMDet's loss starts near 0 (its classification target is the IoU of
#: boxes an untrained head does not predict) and settles over its first 20 iterations.
TRAINING = {
    'retinanet_gn_ws_eps_r18_toy.py': (16, slice(4, 14)),
    'rtmdet_ws_eps_tiny_toy.py': (40, slice(20, 30)),
}


def _train(name: str, data_root: Path, work_dir: Path) -> Runner:
    """Train the toy config ``name`` on ``data_root`` at its lr after the warm-up (its decay is
    placed for epochs of 512 iterations), logging every iteration's own loss and the stability
    hook's statistics, validating once at the end; check the run as :func:`_check_run` says."""
    epochs, settled = TRAINING[name]
    cfg = toy_config(name, data_root, work_dir, max_epochs=epochs,
                     score_thr_key='model.test_cfg.score_thr')
    cfg.param_scheduler = cfg.param_scheduler[:1]
    cfg.merge_from_dict({'train_cfg.val_interval': epochs, 'log_processor.window_size': 1})
    cfg.custom_hooks = cfg.get('custom_hooks', []) + [dict(type='WeightNormStatsHook',
                                                           interval=1)]
    cfg.visualizer.name = f'vis_{name}'
    runner = Runner.from_cfg(cfg)
    runner.train()
    _check_run(work_dir, 2 * epochs, settled)
    return runner


def _records(work_dir: Path) -> list:
    files = sorted(work_dir.glob('*/vis_data/scalars.json'))
    assert files, f'no scalars.json under {work_dir}'
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def _check_run(work_dir: Path, iters: int, settled: slice) -> None:
    """Finite losses, the last ten lower on average than the ``settled`` ones; the stability
    hook's statistics of the WS convs, finite and far from collapse; a box mAP at the end."""
    records = _records(work_dir)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == iters and all(math.isfinite(v) for v in losses)
    early = losses[settled]
    assert sum(losses[-10:]) / 10 < sum(early) / len(early), losses
    stats = [r for r in records if 'wn_stats/min_std' in r]
    assert len(stats) == iters
    assert all(0 < r['wn_stats/min_std'] and math.isfinite(r['wn_stats/max_inv_std'])
               and r['wn_stats/n_small'] == 0 for r in stats)
    metrics = [r for r in records if 'coco/bbox_mAP' in r]
    assert metrics and 0. <= metrics[-1]['coco/bbox_mAP'] <= 1.


def _tagged(runner: Runner) -> dict:
    """``{param: group}`` of the params in groups the ε-shifted term serves."""
    return {p: g for g in runner.optim_wrapper.optimizer.param_groups if FAMILY_KEY in g
            for p in g['params']}


def _normalized_weights(model: nn.Module) -> set:
    return {m.weight for m in model.modules() if get_norm_family(m)}


def test_retinanet_gn_ws_trains_with_the_coupled_term(tiny_coco, tmp_path):
    runner = _train('retinanet_gn_ws_eps_r18_toy.py', tiny_coco, tmp_path)
    model = runner.model
    assert type(model).__name__ == 'RetinaNet'
    assert type(runner.optim_wrapper.optimizer).__name__ == 'EpsShiftedSGD'
    tagged = _tagged(runner)
    # every WS conv of backbone, neck and the head's stacked convs; not the predictors
    assert set(tagged) == _normalized_weights(model)
    for part in (model.backbone, model.neck, model.bbox_head.cls_convs, model.bbox_head.reg_convs):
        assert _normalized_weights(part) and _normalized_weights(part) <= set(tagged)
    assert model.bbox_head.retina_cls.weight not in tagged
    assert {(g[FAMILY_KEY], g[MODE_KEY], g[EPS_KEY], g[LAMBDA_KEY]) for g in tagged.values()} == {
        ('ws', 'coupled', 1e-3, 1e-4)}


def test_rtmdet_ws_cspnext_trains_with_adamw_the_decoupled_term_and_ema(tiny_coco, tmp_path):
    runner = _train('rtmdet_ws_eps_tiny_toy.py', tiny_coco, tmp_path)
    model = runner.model
    assert type(model).__name__ == 'RTMDet' and type(model.backbone).__name__ == 'WSCSPNeXt'
    optimizer = runner.optim_wrapper.optimizer
    assert type(optimizer).__name__ == 'EpsShiftedAdamW'
    tagged = _tagged(runner)
    assert set(tagged) == _normalized_weights(model.backbone) == _normalized_weights(model)
    depthwise = {m.weight for m in model.backbone.modules()
                 if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1}
    assert depthwise and not depthwise & set(tagged)  # left plain (paper Sec. 6.7)
    assert {(g[FAMILY_KEY], g[MODE_KEY], g[EPS_KEY], g[LAMBDA_KEY]) for g in tagged.values()} == {
        ('ws', 'decoupled', 1e-3, 0.05)}
    # mmdet's paramwise_cfg kept: no decay on norm weights and biases, plain on other weights
    names = {p: n for n, p in model.named_parameters()}
    norms = {m.weight for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)}
    for group in optimizer.param_groups:
        for param in group['params']:
            if param in norms or names[param].endswith('bias'):
                assert group['weight_decay'] == 0, names[param]
            elif param not in tagged:  # depthwise and head convs, the attention fc
                assert group['weight_decay'] == 0.05, names[param]

    hooks = {type(h): h for h in runner.hooks}
    assert WeightNormStatsHook in hooks and PipelineSwitchHook not in hooks
    ema = hooks[EMAHook].ema_model
    assert isinstance(ema, ExpMomentumEMA) and ema.momentum == 0.0002
    assert int(ema.steps) == 2 * TRAINING['rtmdet_ws_eps_tiny_toy.py'][0]
    averaged = dict(ema.module.named_parameters())
    assert any(not torch.equal(averaged[n], p) for n, p in model.named_parameters())
