"""WSCSPNeXt is mmdet's CSPNeXt with a WS conv in every ConvModule, the stem and each block's
conv1 included (mmdet never hands them conv_cfg): same keys and raw weights, standardized
numerics, depthwise convs plain, grouped normalization per stage or for the whole backbone."""
import pytest
import torch
from mmdet.models.backbones import CSPNeXt
from mmdet.registry import MODELS
from torch import nn

from mmdet_eps.models.backbones import WSCSPNeXt
from mmdet_eps.models.layers import WNConv, WSConv, get_norm_family

#: RTMDet-tiny's depth at a quarter of RTMDet-l's width: every kind of conv, few of each.
SMALL = dict(deepen_factor=0.167, widen_factor=0.25)


def _convs(module: nn.Module) -> dict:
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.Conv2d)}


def _pair(**kwargs):
    """mmdet's CSPNeXt and WSCSPNeXt built from the same seed."""
    torch.manual_seed(0)
    plain = CSPNeXt(**SMALL, **kwargs)
    torch.manual_seed(0)
    return plain, WSCSPNeXt(**SMALL, **kwargs)


@pytest.mark.parametrize('use_depthwise', [False, True])
def test_every_convmodule_conv_is_ws_with_cspnext_keys_and_weights(use_depthwise):
    plain, ws = _pair(use_depthwise=use_depthwise)
    assert ws.state_dict().keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(ws.state_dict()[key], value), key
    convs = _convs(ws)
    assert convs.keys() == _convs(plain).keys()
    conv1 = 'stage1.1.blocks.0.conv1.'
    no_conv_cfg = ['stem.0.conv', 'stem.1.conv', 'stem.2.conv'] + (
        [conv1 + 'depthwise_conv.conv', conv1 + 'pointwise_conv.conv'] if use_depthwise else
        [conv1 + 'conv'])
    assert all(isinstance(convs[name], WSConv) for name in no_conv_cfg)  # mmdet's: plain
    for name, conv in convs.items():  # all but the channel attention's fc
        assert isinstance(conv, WSConv) == (not name.endswith('attention.fc')), name
        assert (conv.stride, conv.padding, conv.groups) == (
            _convs(plain)[name].stride, _convs(plain)[name].padding, _convs(plain)[name].groups)


def test_depthwise_convs_stay_plain_and_the_others_standardize():
    _, ws = _pair()
    depthwise = {n: m for n, m in _convs(ws).items() if m.groups == m.in_channels > 1}
    assert len(depthwise) == 4  # one 5x5 per stage's block
    assert all(n.endswith('conv2.depthwise_conv.conv') for n in depthwise)
    assert all(not m.normalizes and get_norm_family(m) is None for m in depthwise.values())
    others = [m for n, m in _convs(ws).items() if n not in depthwise and isinstance(m, WSConv)]
    assert others and all(m.normalizes and get_norm_family(m) == 'ws' for m in others)


@pytest.mark.parametrize('group_by', [None, 'backbone', 'stage'])
def test_forward_is_cspnext_with_standardized_weights(group_by):
    """Each conv computes with (W - m) / (std + eps), depthwise ones with W: a plain CSPNeXt
    given those weights gives the same outputs and input gradient, however convs are grouped."""
    torch.manual_seed(0)
    plain = CSPNeXt(**SMALL)
    ws = WSCSPNeXt(**SMALL, group_by=group_by, fused=False).double()
    ws.load_state_dict(plain.state_dict())
    plain.double()
    with torch.no_grad():
        for name, conv in _convs(ws).items():
            if getattr(conv, 'normalizes', False):
                _convs(plain)[name].weight.copy_(conv.normalized_weight())
    expected = {None: 0, 'backbone': 1, 'stage': 4}[group_by]
    assert len(ws.filter_groups) == expected
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    outs = []
    for model in (plain, ws):
        model.eval()
        inp = x.clone().requires_grad_()
        out = model(inp)
        sum(o.sum() for o in out).backward()
        outs.append((out, inp.grad))
    for got, want in zip(outs[1][0], outs[0][0]):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(outs[1][1], outs[0][1])


def test_builds_by_name_with_any_family_member():
    backbone = MODELS.build(dict(type='WSCSPNeXt', **SMALL, conv_cfg=dict(type='WNConv')))
    convs = _convs(backbone)
    assert all(isinstance(m, WNConv) for n, m in convs.items() if not n.endswith('attention.fc'))
    assert backbone.group_by == 'backbone'
