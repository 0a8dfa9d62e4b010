"""WSConv / WNConv / CWNConv: numerics against references, family tags, caching, warnings."""
import pytest
import torch
from mmcv.cnn import ConvWS2d, build_conv_layer

from mmdet_eps.models.layers import CWNConv, WNConv, WSConv, get_norm_family


def _filters(w):
    return w.reshape(w.shape[0], -1)


def test_wsconv_equals_mmcv_convws2d_forward_and_backward():
    torch.manual_seed(0)
    ours, ref = WSConv(8, 16, 3, padding=1).double(), ConvWS2d(8, 16, 3, padding=1).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    y_ours, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y_ours, y_ref)
    y_ours.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)


def test_wsconv_population_std_form():
    torch.manual_seed(0)
    conv = WSConv(4, 6, 3, unbiased=False, eps=0.)
    w = _filters(conv.weight)
    expected = (w - w.mean(1, keepdim=True)) / w.std(1, unbiased=False, keepdim=True)
    torch.testing.assert_close(_filters(conv.normalize(conv.weight)), expected)
    std = _filters(conv.normalize(conv.weight)).std(1, unbiased=False)
    torch.testing.assert_close(std, torch.ones(6))


def test_wnconv_and_cwnconv_numerics():
    torch.manual_seed(0)
    wn, cwn = WNConv(4, 6, 3, eps=0.), CWNConv(4, 6, 3, eps=0.)
    w = _filters(wn.weight)
    torch.testing.assert_close(_filters(wn.normalize(wn.weight)), w / w.norm(dim=1, keepdim=True))
    w = _filters(cwn.weight)
    c = w - w.mean(1, keepdim=True)
    torch.testing.assert_close(_filters(cwn.normalize(cwn.weight)), c / c.norm(dim=1, keepdim=True))
    gained = WNConv(4, 6, 3, gain=True)
    assert gained.gain.shape == (6, )
    with torch.no_grad():
        gained.gain.fill_(2.)
    torch.testing.assert_close(
        _filters(gained.normalize(gained.weight)).norm(dim=1), torch.full((6, ), 2.), rtol=1e-4,
        atol=1e-4)


def test_family_tags():
    assert get_norm_family(WSConv(4, 4, 3)) == 'ws'
    assert get_norm_family(WNConv(4, 4, 3)) == 'wn'
    assert get_norm_family(CWNConv(4, 4, 3)) == 'cwn'
    assert get_norm_family(ConvWS2d(4, 4, 3)) == 'ws'
    assert get_norm_family(torch.nn.Conv2d(4, 4, 3)) is None


def test_every_forward_reads_the_weight_afresh():
    """No cache: in-place writes, .data writes and load_state_dict are all seen, in eval too."""
    torch.manual_seed(0)
    conv, ref = WSConv(8, 8, 3).eval(), ConvWS2d(8, 8, 3).eval()
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        for write in (lambda w: w.mul_(3.).add_(1.), lambda w: w.data.copy_(torch.randn_like(w)),
                      lambda w: conv.load_state_dict(WSConv(8, 8, 3).state_dict())):
            write(conv.weight)
            ref.load_state_dict(conv.state_dict())
            torch.testing.assert_close(conv(x), ref(x), rtol=1e-5, atol=1e-5)
    conv.train()
    assert conv.normalized_weight().requires_grad


def test_warns_on_tiny_fan_in_and_refuses_single_element_filters():
    """Depthwise convs are left plain instead (tests/models/test_depthwise.py)."""
    with pytest.warns(UserWarning, match='Sec. 6.7'):
        WSConv(1, 16, 3)
    with pytest.raises(ValueError, match='at least 2 elements'):
        WSConv(1, 4, 1)


@pytest.mark.parametrize('conv_type', ['WSConv', 'WNConv', 'CWNConv'])
def test_registered_for_build_conv_layer(conv_type):
    conv = build_conv_layer(dict(type=conv_type), 8, 16, 3, padding=1)
    assert get_norm_family(conv) is not None
    assert conv(torch.randn(1, 8, 6, 6)).shape == (1, 16, 6, 6)
