"""WSResNet / WSResNeXt are mmdet's backbones with normalized convs; WSConv fits mmdet's
conv_cfg everywhere the method needs it."""
import pytest
import torch
from mmdet.registry import MODELS
from torch import nn

from mmdet_eps.models.layers import CWNConv, WNConv, WSConv


def _convs(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_wsresnet_has_resnet_keys_and_only_ws_convs(depth):
    ws = MODELS.build(dict(type='WSResNet', depth=depth))
    plain = MODELS.build(dict(type='ResNet', depth=depth))
    assert list(ws.state_dict()) == list(plain.state_dict())
    assert all(isinstance(m, WSConv) for m in _convs(ws))
    assert len(_convs(ws)) == len(_convs(plain))


@pytest.mark.parametrize('conv_type,cls', [('WNConv', WNConv), ('CWNConv', CWNConv)])
def test_any_family_member_is_selectable(conv_type, cls):
    backbone = MODELS.build(dict(type='WSResNet', depth=18, conv_cfg=dict(type=conv_type)))
    assert all(isinstance(m, cls) for m in _convs(backbone))


def test_wsresnext_groups_and_width():
    backbone = MODELS.build(dict(type='WSResNeXt', depth=50, groups=32, base_width=4))
    conv2 = backbone.layer1[0].conv2
    assert isinstance(conv2, WSConv) and conv2.groups == 32 and conv2.out_channels == 128
    assert all(isinstance(m, WSConv) for m in _convs(backbone))


def test_wsresnet_forward_shapes_and_plain_checkpoint_loads():
    ws = MODELS.build(dict(type='WSResNet', depth=18, norm_eval=False))
    ws.load_state_dict(MODELS.build(dict(type='ResNet', depth=18)).state_dict(), strict=True)
    outs = ws(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 128, 256, 512]
    assert all(torch.isfinite(o).all() for o in outs)


def test_conv_cfg_reaches_fpn_and_convfc_heads():
    fpn = MODELS.build(dict(type='FPN', in_channels=[64, 128], out_channels=32, num_outs=2,
                            conv_cfg=dict(type='WSConv')))
    assert all(isinstance(m, WSConv) for m in _convs(fpn))
    head = MODELS.build(dict(type='Shared4Conv1FCBBoxHead', in_channels=32, conv_out_channels=32,
                             fc_out_channels=64, num_classes=3, roi_feat_size=7,
                             conv_cfg=dict(type='WSConv')))
    assert len(_convs(head)) == 4 and all(isinstance(m, WSConv) for m in _convs(head))
    mask_head = MODELS.build(dict(type='FCNMaskHead', in_channels=32, conv_out_channels=32,
                                  num_classes=3, conv_cfg=dict(type='WSConv')))
    assert any(isinstance(m, WSConv) for m in mask_head.modules())
