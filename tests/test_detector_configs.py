"""WS + ε beyond the R-CNNs: RetinaNet GN+WS, DINO-4scale WS-R-50 and RTMDet-l WS-CSPNeXt are
mmdet's configs changed only where WS and the ε-shifted term need it, and each WS + ε config
builds and trains one iteration on CPU with the intended param groups."""
import copy
import math
from pathlib import Path

import mmdet
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmdet_eps.engine.optimizers.eps_shifted_regularizer import (
    EPS_KEY,
    FAMILY_KEY,
    LAMBDA_KEY,
    MODE_KEY,
)
from mmdet_eps.models.layers import get_norm_family
from tests.conftest import REPO
from tests.test_configs import _unscoped

MMDET_CONFIGS = Path(mmdet.__file__).parent / '.mim' / 'configs'
GN_WS = dict(conv_cfg=dict(type='ConvWS'), norm_cfg=dict(type='GN', num_groups=32,
                                                          requires_grad=True))
#: ours (the WS config; + ε: ``_ws_`` -> ``_ws_eps_``) -> mmdet's config, the ε variable of
#: configs/_base_/mmdet_eps.py, the form of the optimizer's own decay
CONFIGS = {
    'gn_ws/retinanet_gn_ws_r50.py': ('retinanet/retinanet_r50_fpn_1x_coco.py', 'gn_ws_eps',
                                     'coupled'),
    'dino/dino_4scale_ws_r50.py': ('dino/dino-4scale_r50_8xb2-12e_coco.py', 'eps_per_depth.r50',
                                   'decoupled'),
    'rtmdet/rtmdet_ws_l.py': ('rtmdet/rtmdet_l_8xb32-300e_coco.py', 'cspnext_eps', 'decoupled'),
}
#: What each WS config changes in mmdet's model.
MODEL_CHANGES = {
    'gn_ws/retinanet_gn_ws_r50.py': dict(
        backbone=dict(GN_WS, init_cfg=dict(type='Pretrained',
                                           checkpoint='open-mmlab://jhu/resnet50_gn_ws')),
        neck=GN_WS, bbox_head=GN_WS),
    'dino/dino_4scale_ws_r50.py': dict(backbone=dict(
        type='WSResNet', init_cfg=dict(type='Pretrained',
                                       checkpoint='checkpoints/ws_resnet50_imagenet.pth'))),
    'rtmdet/rtmdet_ws_l.py': dict(backbone=dict(type='WSCSPNeXt')),
}


def _eps_name(name: str) -> str:
    return name.replace('_ws_', '_ws_eps_')


def _load(name: str) -> Config:
    return Config.fromfile(str(REPO / 'configs' / name))


def _lookup(cfg: Config, key: str):
    for part in key.split('.'):
        cfg = cfg[part]
    return cfg


def test_the_detector_configs_are_complete():
    for folder in ('dino', 'rtmdet'):
        assert {f'{folder}/{p.name}' for p in (REPO / 'configs' / folder).glob('*.py')} == {
            n for name in CONFIGS for n in (name, _eps_name(name)) if n.startswith(folder)}


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_ws_configs_are_mmdets_changed_only_where_they_must(name):
    """WS: mmdet's config with the backbone's (RetinaNet: backbone, neck and head's) convs
    standardized and WS weights; + ε: the same with the ε-shifted constructor, every option of
    mmdet's optim_wrapper kept (custom_keys, clip_grad, norm/bias decay mults)."""
    mmdet_name, eps_key, _ = CONFIGS[name]
    mmdet_cfg = Config.fromfile(str(MMDET_CONFIGS / mmdet_name))
    ws, with_eps = _load(name), _load(_eps_name(name))
    model = copy.deepcopy(mmdet_cfg.model)
    for part, change in MODEL_CHANGES[name].items():
        model[part].update(change)
    for cfg in (ws, with_eps):
        assert cfg.custom_imports.imports == ['mmdet_eps']
        assert cfg.val_evaluator.metric_items == cfg.coco_metric_items
        assert _unscoped(cfg.model) == model
        for key in ('train_cfg', 'param_scheduler', 'train_dataloader', 'auto_scale_lr',
                    'default_hooks', 'custom_hooks'):
            assert _unscoped(cfg.get(key)) == mmdet_cfg.get(key), key
    assert _unscoped(ws.optim_wrapper) == mmdet_cfg.optim_wrapper
    paramwise = dict(mmdet_cfg.optim_wrapper.get('paramwise_cfg', {}),
                     eps_shift=dict(eps=_lookup(with_eps, eps_key)))
    assert _unscoped(with_eps.optim_wrapper) == dict(
        mmdet_cfg.optim_wrapper, constructor='EpsShiftedOptimWrapperConstructor',
        paramwise_cfg=paramwise)


def _ws_stats_frozen_bn(model: nn.Module, inputs: torch.Tensor) -> None:
    """Give a backbone whose BN is frozen (``norm_eval``) running statistics that match its
    standardized convs, as its WS ImageNet weights would: fresh ones let unit-variance filters
    amplify the activations layer after layer until they overflow."""
    backbone = model.backbone
    for module in backbone.modules():
        if isinstance(module, _BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: the batch's statistics
    backbone.norm_eval = False
    backbone.train()
    with torch.no_grad():
        backbone(inputs)
    backbone.norm_eval = True
    model.train()


@pytest.mark.slow
@pytest.mark.parametrize('name', [_eps_name(n) for n in sorted(CONFIGS)])
def test_ws_eps_config_trains_one_iteration_with_the_intended_groups(name):
    """The full model (no weights loaded) and its optimizer as configured: the ε-shifted groups
    hold exactly the trainable standardized weights (RTMDet's depthwise convs left plain, with
    plain decay) in the optimizer's own form of decay; one training step at a small image size
    gives finite losses and moves them."""
    _, eps_key, mode = CONFIGS[name.replace('_ws_eps_', '_ws_')]
    cfg = _load(name)
    if 'init_cfg' in cfg.model.backbone:
        cfg.model.backbone.init_cfg = None  # no download, no converted file needed to build
    model = MODELS.build(cfg.model)
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    optimizer = optim_wrapper.optimizer
    base_wd = cfg.optim_wrapper.optimizer.weight_decay
    assert type(optimizer).__name__ == f'EpsShifted{cfg.optim_wrapper.optimizer.type}'

    trainable = {m.weight for m in model.modules()
                 if get_norm_family(m) and m.weight.requires_grad}
    tagged = {p: g for g in optimizer.param_groups if FAMILY_KEY in g for p in g['params']}
    assert trainable and set(tagged) == trainable
    assert {(g[FAMILY_KEY], g[MODE_KEY], g[EPS_KEY], g[LAMBDA_KEY]) for g in tagged.values()} == {
        ('ws', mode, _lookup(cfg, eps_key), base_wd)}
    backbone_lr = cfg.optim_wrapper.optimizer.lr * (0.1 if 'dino' in name else 1)
    assert all(g['lr'] == pytest.approx(backbone_lr) for g in tagged.values())
    if 'dino' in name:
        assert optim_wrapper.clip_grad_kwargs == dict(max_norm=0.1, norm_type=2)
    if 'rtmdet' in name:
        depthwise = [m.weight for m in model.backbone.modules()
                     if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
        assert depthwise and not set(depthwise) & set(tagged)
        plain_wd = {p: g['weight_decay'] for g in optimizer.param_groups for p in g['params']}
        assert all(plain_wd[w] == base_wd for w in depthwise)

    size = 224 if 'dino' in name else 128  # DINO's 900 queries need as many encoder tokens
    data = demo_mm_inputs(2, [(3, size, size), (3, size - 32, size)], num_items=[3, 2],
                          num_classes=80)
    model.train()
    if model.backbone.norm_eval and any(isinstance(m, _BatchNorm)
                                        for m in model.backbone.modules()):
        _ws_stats_frozen_bn(model, model.data_preprocessor(data, True)['inputs'])
    before = {p: p.detach().clone() for p in tagged}
    losses = model.train_step(data, optim_wrapper)
    assert losses and all(math.isfinite(float(v)) for v in losses.values())
    assert all(torch.isfinite(p).all() for p in tagged)
    assert any(not torch.equal(before[p], p) for p in tagged)
