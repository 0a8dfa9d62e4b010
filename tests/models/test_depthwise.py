"""Depthwise convs stay plain (paper Sec. 6.7, Table IX): raw weight in the forward, no family,
plain decay from the constructor, one log line; ``normalize_depthwise=True`` restores mmcv's
``ConvWS2d`` numerics."""
import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvWS2d, DepthwiseSeparableConvModule, build_conv_layer
from torch import nn

from mmdet_eps.engine.optimizers.eps_shifted_regularizer import FAMILY_KEY, LAMBDA_KEY
from mmdet_eps.models.layers import CWNConv, FilterGroups, WNConv, WSConv, get_norm_family
from tests.engine.helpers import build_optim_wrapper


def _separable(**conv_cfg) -> DepthwiseSeparableConvModule:
    torch.manual_seed(0)
    return DepthwiseSeparableConvModule(16, 24, 3, padding=1, norm_cfg=dict(type='BN'),
                                        conv_cfg=dict(type='WSConv', **conv_cfg)).double()


def test_separable_module_depthwise_conv_is_plain_and_pointwise_standardized():
    module = _separable()
    dw, pw = module.depthwise_conv.conv, module.pointwise_conv.conv
    assert isinstance(dw, WSConv) and isinstance(pw, WSConv)  # mmcv hands conv_cfg to both
    assert (dw.groups, dw.normalizes, pw.normalizes) == (16, False, True)
    x = torch.randn(2, 16, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(dw(x), F.conv2d(x, dw.weight, dw.bias, padding=1, groups=16))
    ref = ConvWS2d(16, 24, 1, bias=False).double()
    ref.load_state_dict(pw.state_dict())
    torch.testing.assert_close(pw(x), ref(x))


def test_normalize_depthwise_restores_convws2d_numerics():
    module = _separable(normalize_depthwise=True)
    dw = module.depthwise_conv.conv
    assert dw.normalizes and get_norm_family(dw) == 'ws'
    ref = ConvWS2d(16, 16, 3, padding=1, groups=16, bias=False).double()
    ref.load_state_dict(dw.state_dict())
    x = torch.randn(2, 16, 7, 7, dtype=torch.float64)
    y, y_ref = dw(x), ref(x)
    torch.testing.assert_close(y, y_ref)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(dw.weight.grad, ref.weight.grad)


@pytest.mark.parametrize('conv_type', [WSConv, WNConv, CWNConv])
def test_the_rule_for_every_family(conv_type):
    torch.manual_seed(0)
    plain = conv_type(6, 6, 3, groups=6)
    assert not plain.normalizes and not plain.groupable and get_norm_family(plain) is None
    x = torch.randn(1, 6, 5, 5)
    torch.testing.assert_close(plain(x), F.conv2d(x, plain.weight, plain.bias, groups=6))
    normalized = conv_type(6, 6, 3, groups=6, normalize_depthwise=True)
    assert normalized.normalizes and get_norm_family(normalized) == normalized.norm_family
    w = normalized.normalize(normalized.weight.detach())
    torch.testing.assert_close(normalized(x), F.conv2d(x, w, normalized.bias, groups=6))
    # not depthwise: grouped convs with several channels per group, and single-channel inputs
    for conv in (conv_type(6, 6, 3, groups=3), conv_type(1, 6, 5)):
        assert conv.normalizes and get_norm_family(conv) == conv.norm_family


def test_wnconv_gain_only_where_it_normalizes():
    assert WNConv(4, 4, 3, groups=4, gain=True).gain is None
    assert WNConv(4, 4, 3, groups=4, gain=True, normalize_depthwise=True).gain.shape == (4, )


def test_single_element_depthwise_filters_are_fine_when_plain():
    WSConv(4, 4, 1, groups=4)
    with pytest.raises(ValueError, match='at least 2 elements'):
        WSConv(4, 4, 1, groups=4, normalize_depthwise=True)
    with pytest.raises(ValueError, match='normalize_depthwise must be True or False'):
        WSConv(4, 4, 3, groups=4, normalize_depthwise='yes')


def test_tiny_fan_in_still_warns_but_depthwise_does_not(recwarn):
    WSConv(8, 8, 3, groups=8)
    WSConv(8, 8, 3, groups=8, normalize_depthwise=True)  # asked for explicitly
    assert not [w for w in recwarn if 'Sec. 6.7' in str(w.message)]
    with pytest.warns(UserWarning, match='Sec. 6.7'):
        WSConv(1, 4, 3)  # 9 elements per filter, not depthwise


def test_said_once_per_run_and_layer_type(mmlog):
    for _ in range(3):
        build_conv_layer(dict(type='WSConv'), 8, 8, 3, groups=8)
    WSConv(16, 16, 1)
    WNConv(4, 4, 3, groups=4)
    said = [r.getMessage() for r in mmlog if 'depthwise' in r.getMessage()]
    assert len(said) == 2, said
    assert said[0].startswith('WSConv: ') and said[1].startswith('WNConv: ')
    assert 'Table IX' in said[0] and 'normalize_depthwise=True' in said[0]


def test_grouping_skips_plain_depthwise_convs():
    module = _separable().float()
    groups = FilterGroups(module)
    assert [g.convs for g in groups.groups] == [[module.pointwise_conv.conv]]
    x = torch.randn(1, 16, 5, 5)
    ref = _separable().float()  # same seed: same weights, normalizing alone
    torch.testing.assert_close(module(x), ref(x))


class _Net(nn.Module):

    def __init__(self, **conv_cfg) -> None:
        super().__init__()
        self.block = _separable(**conv_cfg).float()
        self.fc = nn.Linear(24, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(x).mean((2, 3)))


def _group_of(optimizer, param) -> dict:
    return next(g for g in optimizer.param_groups if any(p is param for p in g['params']))


def test_constructor_gives_plain_depthwise_weights_plain_decay():
    net = _Net()
    dw, pw = net.block.depthwise_conv.conv, net.block.pointwise_conv.conv
    optimizer = build_optim_wrapper(net, dict(type='SGD', lr=0.1, weight_decay=1e-2),
                                    eps_shift=dict(eps=1e-3)).optimizer
    dw_group, pw_group = _group_of(optimizer, dw.weight), _group_of(optimizer, pw.weight)
    assert FAMILY_KEY not in dw_group and dw_group['weight_decay'] == 1e-2
    assert (pw_group[FAMILY_KEY], pw_group[LAMBDA_KEY]) == ('ws', 1e-2)

    # one step: the depthwise weight moves by plain SGD with coupled decay, nothing more
    x = torch.randn(2, 16, 6, 6)
    net(x).square().sum().backward()
    before, grad = dw.weight.detach().clone(), dw.weight.grad.clone()
    optimizer.step()
    torch.testing.assert_close(dw.weight.detach(), before - 0.1 * (grad + 1e-2 * before))

    # mmengine's dwconv_decay_mult keeps working on them
    net = _Net()
    optimizer = build_optim_wrapper(net, dict(type='SGD', lr=0.1, weight_decay=1e-2),
                                    eps_shift=dict(eps=1e-3), dwconv_decay_mult=0.).optimizer
    assert _group_of(optimizer, net.block.depthwise_conv.conv.weight)['weight_decay'] == 0.


def test_constructor_tags_depthwise_weights_when_normalized():
    net = _Net(normalize_depthwise=True)
    optimizer = build_optim_wrapper(net, dict(type='SGD', lr=0.1, weight_decay=1e-2),
                                    eps_shift=dict(eps=1e-3)).optimizer
    for conv in (net.block.depthwise_conv.conv, net.block.pointwise_conv.conv):
        assert _group_of(optimizer, conv.weight)[FAMILY_KEY] == 'ws'
