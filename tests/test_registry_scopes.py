"""Our layers, constructor and hook resolve by name from any OpenMMLab default scope (they live
in mmengine's root registries, which every toolbox's registries inherit), and mmdet's names keep
working."""
import importlib
import importlib.util

import pytest
import torch
from mmengine.registry import HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, DefaultScope, Registry

import mmdet_eps  # noqa: F401
from mmdet_eps.models.backbones import WSResNet
from mmdet_eps.models.layers import WSConv
from tests.conftest import LANE

#: A toolbox that is not installed, made as every OpenMMLab toolbox makes its registries.
TOOLBOX = 'newtoolbox'
_TOOLBOX_REGISTRIES = [Registry(root.name, parent=root, scope=TOOLBOX)
                       for root in (MODELS, HOOKS, OPTIM_WRAPPER_CONSTRUCTORS)]


def _importable(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None and bool(
            importlib.import_module(f'{package}.registry'))
    except Exception:  # mmpretrain without a torchvision for the torch in place
        return False


@pytest.fixture(params=[None, 'mmdet', TOOLBOX, 'mmpretrain'])
def scope(request):
    """Run the test with no default scope, under mmdet's, under a toolbox made here, and under
    mmpretrain's where it can be imported (it needs torchvision: docs/pretrain.md)."""
    name = request.param
    if name == 'mmpretrain' and not _importable(name):
        pytest.skip('mmpretrain cannot be imported here (no torchvision for this torch): '
                    f'{LANE}; the {TOOLBOX!r} scope covers the same lookup')
    if name in ('mmdet', 'mmpretrain'):
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
