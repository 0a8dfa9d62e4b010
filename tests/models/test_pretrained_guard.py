"""The guarded ``Pretrained`` init: weights trained without WS are refused for WS convs (with an
opt-out), WS weights load silently, unmarked files with a warning, and a run that loads a whole
checkpoint afterwards (``load_from``) is not blocked. No network: checkpoints that mmengine would
download are planted in a private torch hub cache."""
import importlib.util
import logging
import warnings
from pathlib import Path

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.registry import WEIGHT_INITIALIZERS as MMDET_WEIGHT_INITIALIZERS
from mmengine.registry import WEIGHT_INITIALIZERS, DefaultScope
from mmengine.runner import Runner

from mmdet_eps.models.weight_init import (
    GuardedPretrainedInit,
    NonWSWeightsError,
    source_trained_with_ws,
)
from tests.conftest import LANE, load_tool
from tests.toy_run import toy_config

#: What ``torchvision://resnet18`` resolves to (mmengine/hub/torchvision_0.12.json).
TV_URL = 'https://download.pytorch.org/models/resnet18-f37072fd.pth'
#: What ``open-mmlab://jhu/resnet50_gn_ws`` resolves to (mmengine/hub/openmmlab.json).
JHU_FILE = 'resnet50_gn_ws-15beedd8.pth'
#: A narrow WS-ResNet-18: small checkpoints, fast forwards.
NARROW = dict(type='WSResNet', depth=18, base_channels=16)
#: The converter takes ResNets as torchvision builds them.
R18 = dict(type='WSResNet', depth=18)
needs_torchvision = pytest.mark.skipif(importlib.util.find_spec('torchvision') is None,
                                       reason=f'torchvision:// needs torchvision: {LANE}')


@pytest.fixture
def hub(tmp_path) -> Path:
    """A private torch hub cache; returns its checkpoints folder."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
    yield tmp_path / 'hub' / 'checkpoints'
    torch.hub.set_dir(old)


def _warnings(records) -> list:
    """The warnings logged (mmengine's about the classifier's unexpected keys included)."""
    return [r.getMessage() for r in records if r.levelno >= logging.WARNING]


def _guard_warnings(records) -> list:
    return [m for m in _warnings(records) if 'weight standardization' in m]


def _classifier_state(fc: bool = True, backbone: dict = NARROW) -> dict:
    """A ResNet-18 classifier under torchvision's names (= mmdet's, plus ``fc``)."""
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in MODELS.build(dict(backbone, type='ResNet')).state_dict()
             .items()}
    for value in state.values():
        if value.is_floating_point():
            value.uniform_(0.5, 1.5)
    if fc:
        channels = state['layer4.1.conv2.weight'].shape[0]
        state.update({'fc.weight': torch.randn(10, channels), 'fc.bias': torch.zeros(10)})
    return state


def _init(checkpoint, backbone=NARROW, **init_kwargs):
    """``backbone`` with ``init_cfg=Pretrained(checkpoint)``, after ``init_weights``; and its
    state before."""
    model = MODELS.build(dict(backbone, init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint),
                                                      **init_kwargs)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_weights()
    return model, before


def _assert_holds(model, state: dict) -> None:
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if k in own)


def _assert_refused(model, before: dict, checkpoint: str) -> str:
    """Not loaded, and the forward refuses with the full message; returns it."""
    _assert_holds(model, before)
    with pytest.raises(NonWSWeightsError) as info:
        model(torch.randn(1, 3, 32, 32))
    message = str(info.value)
    for part in (repr(checkpoint), 'trained without weight standardization',
                 'standardizes its filters', 'scrambled start',
                 'tools/model_converters/convert_imagenet_ckpt.py',
                 "'open-mmlab://jhu/resnet50_gn_ws'", 'configs/imagenet/', 'docs/convert.md',
                 'trained_with_ws=False'):
        assert part in message, part
    return message


def test_registered_as_pretrained_in_every_scope():
    assert WEIGHT_INITIALIZERS.get('Pretrained') is GuardedPretrainedInit
    with DefaultScope.overwrite_default_scope('mmdet'):
        assert MMDET_WEIGHT_INITIALIZERS.get('Pretrained') is GuardedPretrainedInit


def test_ws_resnet_refuses_torchvision_weights(hub, mmlog):
    """The README trap: mmdet's faster_rcnn base config with ``type='WSResNet'``."""
    model, before = _init('torchvision://resnet50', dict(type='WSResNet', depth=50))
    message = _assert_refused(model, before, 'torchvision://resnet50')
    assert message.startswith('WSResNet (53 WS convs): ')
    logged = _warnings(mmlog)
    assert len(logged) == 1 and logged[0].startswith(message)
    assert 'load_from' in logged[0]
    assert not any(hub.iterdir())  # nothing downloaded


@pytest.mark.parametrize('conv', ['WSConv', 'ConvWS'])
def test_mmdet_resnet_with_ws_conv_cfg_refused(hub, conv):
    model, before = _init('torchvision://resnet50',
                          dict(type='ResNet', depth=50, conv_cfg=dict(type=conv)))
    assert _assert_refused(model, before, 'torchvision://resnet50').startswith('ResNet (53 WS')


@pytest.mark.parametrize('checkpoint', [
    'open-mmlab://resnet50_v1c', 'open-mmlab://jhu/resnext50_32x4d_gn', 'mmcls://resnet50',
    TV_URL,
    'https://github.com/huggingface/pytorch-image-models/releases/download/v0.1-rsb-weights/'
    'resnet50_a1_0-14fe96d1.pth'
])
def test_other_plain_sources_refused(hub, checkpoint):
    _assert_refused(*_init(checkpoint), checkpoint)


@pytest.mark.parametrize('checkpoint,expected', [
    ('torchvision://resnet50', False), ('modelzoo://resnet50', False),
    ('open-mmlab://resnext101_32x4d', False), ('openmmlab://jhu/resnext101_32x4d_gn', False),
    ('open-mmlab://jhu/resnet50_gn_ws', True), ('openmmlab://jhu/resnext101_32x4d_gn_ws', True),
    (f'https://download.openmmlab.com/pretrain/third_party/{JHU_FILE}', True),
    ('mmcls://resnet50', False), (TV_URL, False),
    ('https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/'
     'resnet50_ram-a26f946b.pth', False),
    ('checkpoints/ws_resnet50_imagenet.pth', None), ('https://example.org/ws_r50.pth', None),
])
def test_source_names(checkpoint, expected):
    assert source_trained_with_ws(checkpoint) is expected


@pytest.mark.parametrize('checkpoint', [
    TV_URL, pytest.param('torchvision://resnet18', marks=needs_torchvision)])
def test_opt_out_loads_plain_weights(hub, mmlog, checkpoint):
    state = _classifier_state()
    torch.save(state, hub / TV_URL.rsplit('/', 1)[1])
    model, _ = _init(checkpoint, trained_with_ws=False)
    _assert_holds(model, state)
    model.eval()
    assert model(torch.randn(1, 3, 32, 32))[-1].shape == (1, 128, 1, 1)
    assert not _guard_warnings(mmlog)
    assert any('as init_cfg.trained_with_ws=False asks' in r.getMessage() for r in mmlog)


def test_plain_backbones_and_convaws_are_not_guarded(hub, mmlog):
    state = _classifier_state()
    torch.save(state, hub / TV_URL.rsplit('/', 1)[1])
    for backbone in (dict(NARROW, type='ResNet'), dict(NARROW, conv_cfg=dict(type='ConvAWS'))):
        model, _ = _init(TV_URL, backbone)
        _assert_holds(model, state)
    assert not _guard_warnings(mmlog)


def test_invalid_trained_with_ws_names_the_key():
    with pytest.raises(ValueError, match='init_cfg.trained_with_ws must be None, True or False'):
        _init('torchvision://resnet50', trained_with_ws='no')


def _ws_source(backbone: dict = NARROW) -> torch.nn.Module:
    torch.manual_seed(1)
    model = MODELS.build(dict(backbone, norm_eval=False))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.running_var, 0.5, 1.5)
    model.eval()  # mmdet's ResNet.train returns None: no chaining
    return model


def _save_authors(model, path: Path) -> Path:
    """The paper authors' layout (implus/PytorchInsight)."""
    state = {f'module.{k}': v for k, v in model.state_dict().items()}
    state.update({'module.fc.weight': torch.randn(10, 512), 'module.fc.bias': torch.zeros(10)})
    torch.save(dict(epoch=100, state_dict=state, acc=76.1, best_acc=76.3, optimizer={}), path)
    return path


@pytest.mark.parametrize('converted', [True, False])
def test_the_authors_checkpoint_loads_silently(tmp_path, mmlog, converted):
    source = _ws_source(R18)
    ckpt = _save_authors(source, tmp_path / 'ws_resnet18.pth.tar')
    if converted:
        dst = tmp_path / 'ws_r18.pth'
        meta = load_tool('model_converters/convert_imagenet_ckpt').convert(ckpt, dst)
        assert meta['trained_with_ws'] is True
        ckpt = dst
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model, _ = _init(ckpt, R18)
    # the converter's output: no warning at all; the raw file: mmengine's about its classifier
    assert not _guard_warnings(mmlog) and not (converted and (caught or _warnings(mmlog)))
    _assert_holds(model, source.state_dict())
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(source(x), model(x)):
            assert torch.equal(a, b)


def test_the_converter_marks_torchvision_weights_as_plain(tmp_path, mmlog):
    cvt = load_tool('model_converters/convert_imagenet_ckpt')
    src = tmp_path / 'resnet18.pth'
    torch.save(_classifier_state(backbone=R18), src)
    assert cvt.convert(src, tmp_path / 'plain.pth')['trained_with_ws'] is False
    _assert_refused(*_init(tmp_path / 'plain.pth', R18), str(tmp_path / 'plain.pth'))
    # the converter's --trained-with-ws states it for a WS net saved as a plain state dict
    assert cvt.main([str(src), str(tmp_path / 'ws.pth'), '--trained-with-ws', 'yes']) == 0
    _init(tmp_path / 'ws.pth', R18)
    assert len(_guard_warnings(mmlog)) == 1  # the refusal only


def test_unmarked_local_file_loads_with_a_warning(tmp_path, mmlog):
    state = _classifier_state(fc=False)
    path = tmp_path / 'mine.pth'
    torch.save(dict(state_dict=state), path)
    model, _ = _init(path)
    _assert_holds(model, state)
    logged = _warnings(mmlog)
    assert len(logged) == 1 and 'does not say whether' in logged[0]
    assert 'trained_with_ws=True' in logged[0]
    _init(path, trained_with_ws=True)
    assert len(_warnings(mmlog)) == 1


def test_jhu_gn_ws_weights_load_silently(hub, mmlog):
    state = _classifier_state(fc=False)
    torch.save(state, hub / JHU_FILE)
    model, _ = _init('open-mmlab://jhu/resnet50_gn_ws')
    _assert_holds(model, state)
    assert not _warnings(mmlog)


def test_a_whole_state_dict_lifts_the_refusal_a_partial_one_does_not(hub):
    model, _ = _init('torchvision://resnet18')
    whole = _ws_source().state_dict()
    model.load_state_dict({k: v for k, v in whole.items() if not k.startswith('layer4.')},
                          strict=False)
    with pytest.raises(NonWSWeightsError):
        model(torch.randn(1, 3, 32, 32))
    model.load_state_dict(whole)
    model(torch.randn(2, 3, 32, 32))
    model(torch.randn(2, 3, 32, 32))  # the guard has let go


@pytest.mark.slow
def test_load_from_a_detector_checkpoint_is_not_blocked(hub, tiny_coco, tmp_path):
    """mmengine's runner initializes the weights (the refused Pretrained) before it loads
    ``load_from``: the run trains; without ``load_from`` it stops at the first forward."""
    def cfg(name):
        out = toy_config('faster_rcnn_ws_eps_r18_toy.py', tiny_coco, tmp_path / name)
        out.model.backbone.init_cfg = dict(type='Pretrained', checkpoint='torchvision://resnet18')
        out.visualizer.name = f'vis_guard_{name}'
        return out

    with pytest.raises(NonWSWeightsError, match='torchvision://resnet18'):
        Runner.from_cfg(cfg('refused')).train()

    detector_cfg = cfg('loaded')
    detector = MODELS.build(detector_cfg.model)
    ckpt = tmp_path / 'detector.pth'
    torch.save(dict(meta=dict(), state_dict=detector.state_dict()), ckpt)
    detector_cfg.load_from = str(ckpt)
    runner = Runner.from_cfg(detector_cfg)
    runner.train()
    assert runner.iter == 2
