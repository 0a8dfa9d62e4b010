"""tools/model_converters/bake_ws.py: the baked detector (plain convs) gives the original's
outputs."""
import os

import pytest
import torch
from mmcv.cnn.bricks.conv_ws import ConvAWS2d, ConvWS2d
from mmdet.models.backbones import ResNet
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.runner import load_checkpoint
from torch import nn

from mmdet_eps.models.backbones import WSResNet
from mmdet_eps.models.layers import CWNConv, WNConv, WSConv, get_norm_family
from mmdet_eps.utils.op_count import count_ops
from tests.conftest import REPO, load_tool

bake = load_tool('model_converters/bake_ws')
toy = load_tool('misc/make_toy_coco')
CONFIG = REPO / 'configs' / 'toy' / 'cascade_rcnn_ws_eps_r18_toy.py'


def test_bake_module_covers_every_family_and_keeps_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(WSConv(3, 8, 3, padding=1), WNConv(8, 8, 3, gain=True),
                          CWNConv(8, 8, 1, bias=True), ConvWS2d(8, 8, 3), ConvAWS2d(8, 8, 1),
                          WSConv(8, 8, 3, unbiased=False, eps=0., stride=2)).eval()
    with torch.no_grad():
        model[1].gain.uniform_(0.5, 2.)
        model[4].weight_gamma.uniform_(0.5, 2.)
        model[4].weight_beta.normal_()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    baked = bake.bake_module(model)
    assert [kind for _, kind in baked] == ['WSConv', 'WNConv', 'CWNConv', 'ConvWS2d',
                                           'ConvAWS2d', 'WSConv']
    assert all(type(m) is nn.Conv2d for m in model)
    assert model[5].stride == (2, 2) and model[2].bias is not None
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


def test_baked_backbone_runs_what_a_plain_resnet_runs():
    """No filter-group hook is left behind: the baked WSResNet dispatches the ops of mmdet's
    plain ResNet, and gives the grouped model's outputs."""
    torch.manual_seed(0)
    model, plain = WSResNet(depth=18, base_channels=8), ResNet(depth=18, base_channels=8)
    model.eval()  # mmdet's ResNet.train returns None
    plain.eval()
    assert model.filter_groups
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    bake.bake_module(model)
    assert model.filter_groups == [] and not model._forward_pre_hooks
    with torch.no_grad():
        baked_ops = count_ops(lambda: model(x)).by_name
        plain_ops = count_ops(lambda: plain(x)).by_name
        for out, ref in zip(model(x), expected):
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert baked_ops == plain_ops


def test_bake_config_dict():
    cfg = dict(model=dict(backbone=dict(type='WSResNet', conv_cfg=None),
                          neck=dict(type='FPN', conv_cfg=dict(type='WSConv')),
                          head=[dict(conv_cfg=dict(type='ConvWS')),
                                dict(conv_cfg=dict(type='DCN'))]))
    out, changes = bake.bake_config_dict(cfg)
    assert out['model']['backbone']['type'] == 'ResNet'
    assert out['model']['neck']['conv_cfg'] is None
    assert out['model']['head'][0]['conv_cfg'] is None
    assert out['model']['head'][1]['conv_cfg'] == dict(type='DCN')
    assert len(changes) == 3 and cfg['model']['backbone']['type'] == 'WSResNet'


def _build(cfg):
    from mmdet.registry import MODELS
    return MODELS.build(cfg.model)


@pytest.fixture(scope='module')
def toy_images(tmp_path_factory):
    return toy.make_toy_coco(tmp_path_factory.mktemp('bake') / 'coco', num_train=1, num_val=3)


def _predict(model, cfg, root):
    from mmdet.registry import DATASETS
    ds_cfg = cfg.test_dataloader.dataset
    ds_cfg.data_root = str(root) + '/'
    dataset = DATASETS.build(ds_cfg)
    data = pseudo_collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        return model.test_step(data)


def test_baked_detector_equals_the_original_on_toy_images(tmp_path, toy_images):
    torch.manual_seed(0)
    cfg = Config.fromfile(str(CONFIG))
    model = _build(cfg)
    model.init_weights()
    with torch.no_grad():  # a less degenerate random detector: visible boxes and scores
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.)
    ckpt = tmp_path / 'ws.pth'
    torch.save(dict(meta=dict(epoch=3), state_dict=model.state_dict()), ckpt)
    out = tmp_path / 'out' / 'baked.pth'
    result = bake.main([str(CONFIG), str(ckpt), str(out)])
    assert out.is_file() and (tmp_path / 'out' / 'baked.py').is_file()
    assert result['max_rel_diff'] == 0 and len(result['baked']) == 20
    assert not [p for p in os.listdir(out.parent) if p.endswith('.tmp')]

    baked_cfg = Config.fromfile(str(tmp_path / 'out' / 'baked.py'))
    assert baked_cfg.model.backbone.type == 'ResNet'
    plain = _build(baked_cfg)
    checkpoint = load_checkpoint(plain, str(out), map_location='cpu', strict=True)
    assert checkpoint['meta']['epoch'] == 3 and checkpoint['meta']['baked_convs'] == 20
    assert not any(get_norm_family(m) for m in plain.modules())

    model.eval()
    plain.eval()
    root = toy_images['root']
    expected, got = _predict(model, cfg, root), _predict(plain, baked_cfg, root)
    assert len(expected) == len(got) == 3
    assert sum(len(e.pred_instances) for e in expected) > 0
    for e, g in zip(expected, got):
        for key in ('bboxes', 'scores', 'labels'):
            torch.testing.assert_close(g.pred_instances[key], e.pred_instances[key],
                                       rtol=0, atol=0)


def test_failed_check_writes_nothing(tmp_path, monkeypatch):
    torch.manual_seed(0)
    cfg = Config.fromfile(str(CONFIG))
    model = _build(cfg)
    ckpt = tmp_path / 'ws.pth'
    torch.save(dict(state_dict=model.state_dict()), ckpt)
    # a config transform that forgets the backbone: the baked config still builds WSConv
    monkeypatch.setattr(bake, 'PLAIN_BACKBONES', {})
    out = tmp_path / 'baked.pth'
    with pytest.raises(SystemExit, match='still builds normalized convs'):
        bake.main([str(CONFIG), str(ckpt), str(out)])
    assert os.listdir(tmp_path) == ['ws.pth']
