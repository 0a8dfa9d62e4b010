"""Every config builds the intended model and optimizer: the paper's matrix, Cascade X-101,
mmdet's GN+WS family with ε, the ImageNet pretraining configs; the toy configs build too."""
import importlib.util
from pathlib import Path

import mmdet
import pytest
from mmcv.cnn.bricks.conv_ws import ConvWS2d
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import DefaultScope
from torch import nn

from mmdet_eps.engine.optimizers import EpsShiftedOptimWrapperConstructor
from mmdet_eps.engine.optimizers.eps_shifted_regularizer import EPS_KEY, FAMILY_KEY, MODE_KEY
from mmdet_eps.models.layers import WSConv
from tests.conftest import LANE, REPO

FAMILIES = {'cascade_rcnn': 'CascadeRCNN', 'faster_rcnn': 'FasterRCNN', 'mask_rcnn': 'MaskRCNN'}
PAPER_CONFIGS = [f'{family}_{variant}r{depth}.py' for family in FAMILIES
                 for variant in ('', 'ws_', 'ws_eps_') for depth in (50, 101)]
# Cascade R-CNN X-101 32x4d as mmdet's, no paper number (the authors published the ImageNet nets)
X101_CONFIGS = [f'cascade_rcnn_{variant}x101.py' for variant in ('', 'ws_', 'ws_eps_')]
#: backbone key in the config name -> (mmdet type, depth, ResNeXt groups/base_width, baseline init)
BACKBONES = {
    'r50': ('ResNet', 50, {}, 'torchvision://resnet50'),
    'r101': ('ResNet', 101, {}, 'torchvision://resnet101'),
    'x101': ('ResNeXt', 101, dict(groups=32, base_width=4), 'open-mmlab://resnext101_32x4d'),
}
MMDET_CONFIGS = Path(mmdet.__file__).parent / '.mim' / 'configs'
#: ours (configs/gn_ws/) -> mmdet's gn+ws config it runs unchanged
GN_WS_CONFIGS = {
    f'{family}_gn_ws_r{depth}.py':
    f'{family.replace("_", "-")}_r{depth}_fpn_gn-ws-all_{schedule}_coco.py'
    for family, schedule in (('faster_rcnn', '1x'), ('mask_rcnn', '2x')) for depth in (50, 101)
}


def test_the_config_matrix_is_complete():
    found = {p.name for p in (REPO / 'configs').glob('*.py')}
    assert found == set(PAPER_CONFIGS + X101_CONFIGS)
    assert {p.name for p in (REPO / 'configs' / 'gn_ws').glob('*.py')} == {
        name.replace('_gn_ws_', f'_gn_ws_{eps}') for name in GN_WS_CONFIGS for eps in ('', 'eps_')
    } | {'retinanet_gn_ws_r50.py', 'retinanet_gn_ws_eps_r50.py'}  # tests/test_detector_configs


def _unscoped(value):
    """``value`` without the ``_scope_`` keys mmengine adds to what a config inherits through
    ``mmdet::`` / ``mmpretrain::`` (the scope the config builds in anyway)."""
    if isinstance(value, dict):
        return {k: _unscoped(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return type(value)(_unscoped(v) for v in value)
    return value


def _ws_weights_are_exactly_the_tagged_params(model: nn.Module, optim_wrapper_cfg: dict,
                                              conv_types: tuple, eps: float) -> None:
    """The constructor puts every trainable WS conv weight, and nothing else, in param groups
    tagged with family 'ws' and ``eps``."""
    optimizer = build_optim_wrapper(model, optim_wrapper_cfg).optimizer
    tagged = [g for g in optimizer.param_groups if FAMILY_KEY in g]
    assert {(g[FAMILY_KEY], g[EPS_KEY]) for g in tagged} == {('ws', eps)}
    tagged_ids = [id(p) for g in tagged for p in g['params']]
    ws_weights = {id(m.weight) for m in model.modules()
                  if isinstance(m, conv_types) and m.weight.requires_grad}
    assert ws_weights and len(tagged_ids) == len(set(tagged_ids)) and set(tagged_ids) == ws_weights


@pytest.mark.parametrize('name', PAPER_CONFIGS + X101_CONFIGS)
def test_paper_config_builds_the_intended_model(name):
    cfg = Config.fromfile(str(REPO / 'configs' / name))
    assert cfg.custom_imports.imports == ['mmdet_eps']
    key = name[:-len('.py')].rsplit('_', 1)[1]
    arch, depth, resnext, baseline_init = BACKBONES[key]
    family = next(f for f in FAMILIES if name.startswith(f))
    ws, eps = '_ws_' in name, '_eps_' in name
    backbone_cfg = cfg.model.backbone
    assert backbone_cfg.depth == depth
    assert {k: backbone_cfg[k] for k in resnext} == resnext
    if ws:
        assert backbone_cfg.init_cfg.checkpoint == cfg.ws_pretrained[key]
    else:
        assert backbone_cfg.init_cfg.checkpoint == baseline_init
    backbone_cfg.init_cfg = None  # no download, no conversion needed to build
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == FAMILIES[family]
    assert type(model.backbone).__name__ == ('WS' if ws else '') + arch
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert all(isinstance(m, WSConv) == ws for m in convs)
    assert not any(isinstance(m, WSConv) for m in model.neck.modules())
    assert model.backbone.frozen_stages == 1 and model.backbone.norm_eval  # paper: c1/c2, BN
    if eps:
        assert cfg.optim_wrapper.constructor == 'EpsShiftedOptimWrapperConstructor'
        _ws_weights_are_exactly_the_tagged_params(model, cfg.optim_wrapper, (WSConv, ),
                                                  cfg.eps_per_depth[key])
    else:
        assert 'constructor' not in cfg.optim_wrapper


def test_mmdet_gn_ws_configs_need_a_path_without_plus(tmp_path):
    """mmengine refuses ``mmdet::gn+ws/...`` (its ``\\w*::\\w*/\\w*`` check stops at '+'); our
    configs reach the same file through ``mmdet::faster_rcnn/../gn+ws/...``."""
    plain = tmp_path / 'plain.py'
    plain.write_text("_base_ = 'mmdet::gn+ws/faster-rcnn_r50_fpn_gn-ws-all_1x_coco.py'\n")
    with pytest.raises(ValueError, match='specify the package name and relative config path'):
        Config.fromfile(str(plain))
    detour = tmp_path / 'detour.py'
    detour.write_text(
        "_base_ = 'mmdet::faster_rcnn/../gn+ws/faster-rcnn_r50_fpn_gn-ws-all_1x_coco.py'\n")
    assert Config.fromfile(str(detour)).model.backbone.conv_cfg == dict(type='ConvWS')


@pytest.mark.parametrize('name', sorted(GN_WS_CONFIGS))
def test_gn_ws_configs_are_mmdets_with_eps(name):
    """Baseline: mmdet's gn+ws config unchanged (model, schedule, data, ImageNet weights) plus
    the plugin and the full COCO metric; + ε: the same, with every ConvWS weight in the
    ε-shifted groups."""
    mmdet_cfg = Config.fromfile(str(MMDET_CONFIGS / 'gn+ws' / GN_WS_CONFIGS[name]))
    ours = Config.fromfile(str(REPO / 'configs' / 'gn_ws' / name))
    with_eps = Config.fromfile(str(REPO / 'configs' / 'gn_ws' / name.replace('_gn_ws_',
                                                                            '_gn_ws_eps_')))
    for cfg in (ours, with_eps):
        assert cfg.custom_imports.imports == ['mmdet_eps']
        assert cfg.val_evaluator.metric_items == cfg.coco_metric_items
        for key in ('model', 'train_cfg', 'param_scheduler', 'train_dataloader', 'auto_scale_lr'):
            assert _unscoped(cfg[key]) == mmdet_cfg[key], key
    depth = mmdet_cfg.model.backbone.depth
    assert ours.model.backbone.init_cfg.checkpoint == f'open-mmlab://jhu/resnet{depth}_gn_ws'
    assert _unscoped(ours.optim_wrapper) == mmdet_cfg.optim_wrapper
    assert _unscoped(with_eps.optim_wrapper) == dict(
        mmdet_cfg.optim_wrapper, constructor='EpsShiftedOptimWrapperConstructor',
        paramwise_cfg=dict(eps_shift=dict(eps=with_eps.gn_ws_eps)))

    with_eps.model.backbone.init_cfg = None  # no download needed to build
    model = MODELS.build(with_eps.model)
    assert type(model).__name__ == FAMILIES[name[:name.index('_gn_ws')]]
    heads = [model.roi_head.bbox_head] + ([model.roi_head.mask_head] if 'mask' in name else [])
    for part in (model.backbone, model.neck, *heads):  # ConvWS + GN(32) everywhere but the RPN
        assert any(isinstance(m, ConvWS2d) for m in part.modules()), type(part).__name__
        assert all(m.num_groups == 32 for m in part.modules() if isinstance(m, nn.GroupNorm))
    assert not any(isinstance(m, ConvWS2d) for m in model.rpn_head.modules())
    _ws_weights_are_exactly_the_tagged_params(model, with_eps.optim_wrapper, (ConvWS2d, ),
                                              with_eps.gn_ws_eps)


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
    backbone = model.backbone
    assert type(backbone).__name__ in ('WSResNet', 'WSCSPNeXt')
    assert getattr(backbone, 'depth', 18) == 18
    assert not backbone.norm_eval and cfg.model.backbone.get('init_cfg') is None
    assert cfg.optim_wrapper.constructor == 'EpsShiftedOptimWrapperConstructor'


IMAGENET_CONFIGS = [f'ws_{eps}resnet{depth}_8xb32_in1k.py' for eps in ('', 'eps_')
                    for depth in (50, 101)]
#: WS-CSPNeXt-l on mmdet's CSPNeXt ImageNet recipe (RTMDet backbones)
CSPNEXT_IMAGENET_CONFIGS = [f'ws_{eps}cspnext_l_8xb256_rsb_a1_600e_in1k.py' for eps in ('', 'eps_')]


def _imagenet_config(name: str) -> Config:
    """Parse a configs/imagenet config: needs mmpretrain installed (its configs), not importable."""
    if importlib.util.find_spec('mmpretrain') is None:
        pytest.skip("mmpretrain is not installed (it needs the torchvision built for the torch "
                    f'in place; PyPI has none for the CPU torch): {LANE}')
    return Config.fromfile(str(REPO / 'configs' / 'imagenet' / name))


def test_the_imagenet_configs_are_complete():
    found = {p.name for p in (REPO / 'configs' / 'imagenet').glob('*.py')}
    assert found == set(IMAGENET_CONFIGS + CSPNEXT_IMAGENET_CONFIGS)


@pytest.mark.parametrize('name', IMAGENET_CONFIGS)
def test_imagenet_config_is_the_authors_recipe(name):
    """mmpretrain's ResNet-50/101 ImageNet config with WSConv, no zero-init residual BN and the
    authors' schedule; our types resolve from mmpretrain's scope through their ``mmdet.``
    prefix."""
    cfg = _imagenet_config(name)
    depth = 101 if 'resnet101' in name else 50
    assert cfg.custom_imports.imports == ['mmdet_eps'] and cfg.default_scope == 'mmpretrain'
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.depth, backbone.zero_init_residual) == ('ResNet', depth, False)
    assert MMENGINE_MODELS.get(backbone.conv_cfg.type) is WSConv
    assert _unscoped(cfg.optim_wrapper.optimizer) == dict(type='SGD', lr=0.1, momentum=0.9,
                                                          weight_decay=1e-4)
    assert cfg.optim_wrapper.paramwise_cfg.bias_decay_mult == 0
    assert cfg.param_scheduler.milestones == [30, 60, 90] and cfg.train_cfg.max_epochs == 100
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 256
    if 'eps' in name:
        constructor = MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS.get(cfg.optim_wrapper.constructor)
        assert constructor is EpsShiftedOptimWrapperConstructor
        assert cfg.optim_wrapper.paramwise_cfg.eps_shift == dict(eps=1e-3 if depth == 50 else 1e-6)
    else:
        assert 'constructor' not in cfg.optim_wrapper


@pytest.mark.parametrize('name', IMAGENET_CONFIGS)
def test_imagenet_config_builds_ws_convs_and_their_groups(name):
    """Built in mmpretrain's scope: every conv a WSConv; biases undecayed, BN and fc weights
    plain decay; conv weights plain decay, or (eps) exactly the ε-shifted groups."""
    cfg = _imagenet_config(name)
    pytest.importorskip('torchvision', reason=LANE)  # mmpretrain needs one for this torch
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = PRETRAIN_MODELS.build(cfg.model)
        optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 3 * sum(model.backbone.stage_blocks) + 4
    assert all(type(m) is WSConv for m in convs)
    names = {id(p): n for n, p in model.named_parameters()}
    conv_weights = {names[id(m.weight)] for m in convs}
    tagged = [g for g in optimizer.param_groups if FAMILY_KEY in g]
    plain = {names[id(p)]: g['weight_decay'] for g in optimizer.param_groups
             if FAMILY_KEY not in g for p in g['params']}
    for param, wd in plain.items():
        assert wd == (0 if param.endswith('bias') else 1e-4), param  # BN, fc, (conv) weights
    if 'eps' in name:
        eps = cfg.optim_wrapper.paramwise_cfg.eps_shift.eps
        assert {(g[FAMILY_KEY], g[EPS_KEY]) for g in tagged} == {('ws', eps)}
        assert {names[id(p)] for g in tagged for p in g['params']} == conv_weights
        assert set(plain) == set(names.values()) - conv_weights
    else:
        assert not tagged and set(plain) == set(names.values())


@pytest.mark.parametrize('name', CSPNEXT_IMAGENET_CONFIGS)
def test_cspnext_imagenet_config_is_mmdets_recipe_with_ws(name):
    """mmdet's CSPNeXt-l ImageNet recipe (configs/rtmdet/classification: RSB A1, 600 epochs,
    LAMB, weight decay 0.01, none on norms and biases) with WSCSPNeXt; + ε: the term decoupled,
    as LAMB applies its own decay."""
    cfg = _imagenet_config(name)
    assert cfg.custom_imports.imports == ['mmdet_eps'] and cfg.default_scope == 'mmpretrain'
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.deepen_factor, backbone.widen_factor) == (
        'mmdet.WSCSPNeXt', 1, 1)
    assert cfg.model.head.in_channels == 1024 and cfg.model.head.num_classes == 1000
    assert _unscoped(cfg.optim_wrapper.optimizer) == dict(type='Lamb', lr=0.005,
                                                          weight_decay=0.01)
    paramwise = cfg.optim_wrapper.paramwise_cfg
    assert paramwise.bias_decay_mult == 0 and paramwise.norm_decay_mult == 0
    assert cfg.train_cfg.max_epochs == 600 and cfg.param_scheduler[1].end == 600
    if 'eps' in name:
        assert cfg.optim_wrapper.constructor == 'EpsShiftedOptimWrapperConstructor'
        assert paramwise.eps_shift == dict(eps=cfg.cspnext_eps, mode='decoupled')
    else:
        assert 'constructor' not in cfg.optim_wrapper


def test_cspnext_imagenet_config_builds_ws_convs_and_their_groups():
    """Built in mmpretrain's scope: a WS conv in every ConvModule; the ε-shifted groups hold
    exactly the standardized weights (not the depthwise ones, nor the attention fc), decoupled."""
    cfg = _imagenet_config(CSPNEXT_IMAGENET_CONFIGS[1])
    pytest.importorskip('torchvision', reason=LANE)  # mmpretrain needs one for this torch
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    from mmpretrain.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg.model.backbone.update(deepen_factor=0.167, widen_factor=0.25)  # the same convs, fewer
    cfg.model.head.in_channels = 256
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = PRETRAIN_MODELS.build(cfg.model)
        optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    assert type(model.backbone).__name__ == 'WSCSPNeXt'
    convs = {n: m for n, m in model.backbone.named_modules() if isinstance(m, nn.Conv2d)}
    assert all(isinstance(m, WSConv) == (not n.endswith('attention.fc')) for n, m in convs.items())
    standardized = {m.weight for m in convs.values() if getattr(m, 'normalizes', False)}
    depthwise = {m.weight for m in convs.values() if m.groups == m.in_channels > 1}
    assert depthwise and standardized and not depthwise & standardized
    tagged = [g for g in optimizer.param_groups if FAMILY_KEY in g]
    assert {p for g in tagged for p in g['params']} == standardized
    assert {(g[FAMILY_KEY], g[EPS_KEY], g[MODE_KEY]) for g in tagged} == {
        ('ws', cfg.cspnext_eps, 'decoupled')}
