"""Every paper config builds the intended model and optimizer; the toy configs build too."""
from pathlib import Path

import pytest
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from torch import nn

from mmdet_eps.engine.optimizers.eps_shifted_regularizer import EPS_KEY, FAMILY_KEY
from mmdet_eps.models.layers import WSConv
from tests.conftest import REPO

FAMILIES = {'cascade_rcnn': 'CascadeRCNN', 'faster_rcnn': 'FasterRCNN', 'mask_rcnn': 'MaskRCNN'}
PAPER_CONFIGS = [f'{family}_{variant}r{depth}.py' for family in FAMILIES
                 for variant in ('', 'ws_', 'ws_eps_') for depth in (50, 101)]


def test_the_config_matrix_is_complete():
    found = {p.name for p in (REPO / 'configs').glob('*.py')}
    assert found == set(PAPER_CONFIGS)


@pytest.mark.parametrize('name', PAPER_CONFIGS)
def test_paper_config_builds_the_intended_model(name):
    cfg = Config.fromfile(str(REPO / 'configs' / name))
    assert cfg.custom_imports.imports == ['mmdet_eps']
    depth = 101 if name.endswith('r101.py') else 50
    family = next(f for f in FAMILIES if name.startswith(f))
    ws, eps = '_ws_' in name, '_eps_' in name
    backbone_cfg = cfg.model.backbone
    assert backbone_cfg.depth == depth
    if ws:
        assert backbone_cfg.init_cfg.checkpoint == cfg.ws_pretrained[f'r{depth}']
    else:
        assert backbone_cfg.init_cfg.checkpoint == f'torchvision://resnet{depth}'
    backbone_cfg.init_cfg = None  # no download, no conversion needed to build
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == FAMILIES[family]
    assert type(model.backbone).__name__ == ('WSResNet' if ws else 'ResNet')
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert all(isinstance(m, WSConv) == ws for m in convs)
    assert not any(isinstance(m, WSConv) for m in model.neck.modules())
    assert model.backbone.frozen_stages == 1 and model.backbone.norm_eval  # paper: c1/c2, BN
    if eps:
        assert cfg.optim_wrapper.constructor == 'EpsShiftedOptimWrapperConstructor'
        optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
        tagged = [g for g in optimizer.param_groups if FAMILY_KEY in g]
        assert [g[EPS_KEY] for g in tagged] == [cfg.eps_per_depth[f'r{depth}']]
        n_trainable_ws = sum(1 for m in convs if m.weight.requires_grad)
        assert len(tagged[0]['params']) == n_trainable_ws
    else:
        assert 'constructor' not in cfg.optim_wrapper


def test_cascade_configs_follow_the_paper_schedule():
    cfg = Config.fromfile(str(REPO / 'configs' / 'cascade_rcnn_ws_eps_r50.py'))
    assert cfg.train_cfg.max_epochs == 20
    assert cfg.param_scheduler[1].milestones == [16, 19]
    assert cfg.optim_wrapper.optimizer == dict(type='SGD', lr=0.02, momentum=0.9,
                                               weight_decay=1e-4)
    assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16


@pytest.mark.parametrize('path', sorted((REPO / 'configs' / 'toy').glob('*.py')), ids=str)
def test_toy_configs_build_ws_models_from_scratch(path: Path):
    cfg = Config.fromfile(str(path))
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'WSResNet' and model.backbone.depth == 18
    assert not model.backbone.norm_eval and cfg.model.backbone.init_cfg is None
    assert cfg.optim_wrapper.constructor == 'EpsShiftedOptimWrapperConstructor'
