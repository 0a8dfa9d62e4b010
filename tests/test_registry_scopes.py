"""Our layers, constructor and hook resolve by name from any OpenMMLab default scope (they live
in mmengine's root registries, which every toolbox's registries inherit), and mmdet's names keep
working."""
import importlib

import pytest
import torch
from mmengine.registry import HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, DefaultScope

import mmdet_eps  # noqa: F401
from mmdet_eps.models.backbones import WSResNet
from mmdet_eps.models.layers import WSConv


@pytest.fixture(params=[None, 'mmdet', 'mmpretrain'])
def scope(request):
    """Run the test with no default scope, or under mmdet's or mmpretrain's."""
    name = request.param
    if name is not None:
        importlib.import_module(f'{name}.registry')  # the toolbox's registries, as it runs
    with DefaultScope.overwrite_default_scope(name):
        yield name


def test_conv_layers_resolve(scope):
    for conv in ('WSConv', 'WNConv', 'CWNConv'):
        layer = MODELS.build(dict(type=conv, in_channels=4, out_channels=8, kernel_size=3))
        assert layer(torch.randn(1, 4, 5, 5)).shape == (1, 8, 3, 3)


def test_constructor_and_hook_resolve(scope):
    model = torch.nn.Sequential(WSConv(4, 8, 3))
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='EpsShiftedOptimWrapperConstructor',
        optim_wrapper_cfg=dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1,
                                                                   weight_decay=1e-4))))
    group = constructor(model).optimizer.param_groups[0]
    assert group['eps_shift_family'] == 'ws'
    assert type(HOOKS.build(dict(type='WeightNormStatsHook'))).__name__ == 'WeightNormStatsHook'


def test_ws_resnet_builds_in_a_plain_script(scope):
    """Its default conv_cfg=dict(type='WSConv') resolves without mmdet's scope."""
    backbone = WSResNet(depth=18, base_channels=8)
    assert isinstance(backbone.conv1, WSConv)


def test_mmdet_scoped_names_keep_working():
    with DefaultScope.overwrite_default_scope('mmdet'):
        from mmdet.registry import MODELS as MMDET_MODELS
        assert MMDET_MODELS.get('WSConv') is WSConv
        assert MMDET_MODELS.get('mmdet.WSConv') is WSConv
        assert MMDET_MODELS.get('WSResNet') is WSResNet
