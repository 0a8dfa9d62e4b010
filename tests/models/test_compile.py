"""torch.compile sees through the normalized layers and backbones: one graph, no break (counted
with torch._dynamo.explain, as for mmdet's ResNet), and the same outputs and gradients as eager,
on both paths (the fused CPU ops as registered custom ops, and torch ops)."""
import pytest
import torch
import torch._dynamo
from mmdet.models.backbones import ResNet
from torch._dynamo.testing import CompileCounter
from torch._subclasses.fake_tensor import FakeTensorMode

from mmdet_eps.models.backbones import WSResNet, WSResNeXt
from mmdet_eps.models.layers import CWNConv, FilterNorm, WNConv, WSConv, fan_in
from mmdet_eps.models.layers.filter_normalize import _backward, _forward
from mmdet_eps.utils.compat import CUSTOM_OP_API
from tests.conftest import needs_compile, needs_dynamo

CONVS = [WSConv, WNConv, CWNConv]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _loss(model, x):
    out = model(x)
    outs = out if isinstance(out, tuple) else (out, )
    return sum(o.square().mean() for o in outs)


def _breaks(model, x) -> int:
    """Graph breaks of forward + loss, as torch._dynamo.explain counts them."""
    explanation = torch._dynamo.explain(_loss)(model, x)
    assert explanation.graph_count >= 1
    return explanation.graph_break_count


def _grads(model, x, fn=_loss):
    model.zero_grad(set_to_none=True)
    loss = fn(model, x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _assert_compiled_equals_eager(model, x, backend='aot_eager', **tol):
    """In float64: the compiled expression rounds differently, and batch norm over 2 values
    (a 1x1 map at batch 2) amplifies that through a deep network."""
    model, x = model.double(), x.double()
    tol = tol or dict(rtol=1e-5, atol=1e-7)
    eager = _grads(model, x)
    compiled = _grads(model, x, torch.compile(_loss, backend=backend, fullgraph=True))
    torch.testing.assert_close(compiled[0], eager[0], **tol)
    assert len(compiled[1]) == len(eager[1])
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b, **tol)


def _assert_one_graph_equal_to_eager(model, x):
    assert _breaks(model, x) == 0
    _assert_compiled_equals_eager(model, x)


@pytest.mark.parametrize('shape', [(8, 4, 3, 3), (6, 16, 1, 1)])
@pytest.mark.parametrize('eps', [1e-5, 0.])
def test_torch_ops_backward_calls_group_norm_as_its_schema_says(shape, eps):
    """The fake kernel of native_group_norm_backward checks its arguments' shapes against the
    schema (torch 2.14's real kernel returns the weight gradient shaped as the schema says):
    the torch-ops backward must run under fake tensors and give autograd's gradient."""
    torch.manual_seed(0)
    w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn(shape, dtype=torch.float64)
    spec = FilterNorm.build(fan_in(w), eps, True, fan_in(w) - 1)
    out, saved = _forward(spec, [w.detach()])
    grad = _backward(spec, saved, g)
    f = w.flatten(1)
    u = f - f.mean(1, keepdim=True)
    ref = u / (u.square().mean(1, keepdim=True).sqrt() * spec.root + eps)
    torch.testing.assert_close(out, ref.view(shape).detach())
    torch.testing.assert_close(grad, torch.autograd.grad(ref.view(shape), w, g)[0])
    mode = FakeTensorMode(allow_non_fake_inputs=True)  # the spec holds a real 0-dim tensor
    fake_w, fake_g = mode.from_tensor(w.detach()), mode.from_tensor(g)
    with mode:
        _, saved = _forward(spec, [fake_w])
        assert _backward(spec, saved, fake_g).shape == shape


@needs_compile
@pytest.mark.parametrize('cls', CONVS)
@pytest.mark.parametrize('fused', [True, False])
def test_layers_compile_without_breaks_and_equal_eager(cls, fused):
    torch.manual_seed(0)
    _assert_one_graph_equal_to_eager(cls(4, 8, 3, padding=1, fused=fused),
                                     torch.randn(2, 4, 9, 9))


@pytest.mark.slow
@needs_compile
def test_resnet_and_ws_resnet_compile_into_one_graph():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    assert _breaks(ResNet(depth=18, base_channels=8, norm_eval=False), x) == 0  # the anchor
    for group_by in ('backbone', 'stage', None):
        for fused in (True, False):
            model = WSResNet(depth=18, base_channels=8, norm_eval=False, group_by=group_by,
                             fused=fused)
            assert _breaks(model, x) == 0, (group_by, fused)


def _frames(model, x, **compile_args) -> int:
    """Frames dynamo compiles for ``torch.compile(model)(x)``."""
    torch._dynamo.reset()
    backend = CompileCounter()
    torch.compile(model, backend=backend, **compile_args)(x)
    return backend.frame_count


@pytest.mark.slow
@needs_compile
def test_compiled_ws_resnet_is_one_frame_as_mmdet_resnet():
    """``torch.compile(backbone)``: the grouped normalization runs inside the backbone's frame
    (no hook compiled as a frame of its own, no weights held across frames), also in one
    graph (``fullgraph=True``)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    plain = _frames(ResNet(depth=18, base_channels=8, norm_eval=False), x)
    for group_by in ('backbone', 'stage', None):
        for fused in (True, False):
            model = WSResNet(depth=18, base_channels=8, norm_eval=False, group_by=group_by,
                             fused=fused)
            assert _frames(model, x) == plain, (group_by, fused)
            assert _frames(model, x, fullgraph=True) == 1
            assert all(g.weights is None for gs in model.filter_groups for g in gs.groups)


@pytest.mark.slow
@needs_compile
@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('group_by', ['backbone', 'stage'])
def test_ws_resnet_compiled_gradients_equal_eager(fused, group_by):
    torch.manual_seed(0)
    model = WSResNet(depth=18, base_channels=8, norm_eval=False, group_by=group_by, fused=fused,
                     frozen_stages=1)
    _assert_compiled_equals_eager(model, torch.randn(2, 3, 32, 32))


@pytest.mark.slow
@needs_compile
def test_ws_resnext_compiles_without_breaks_and_equals_eager():
    torch.manual_seed(0)
    _assert_one_graph_equal_to_eager(
        WSResNeXt(depth=50, groups=4, base_width=4, base_channels=16, norm_eval=False),
        torch.randn(2, 3, 32, 32))


@pytest.mark.slow
@needs_compile
def test_inductor_compiles_the_grouped_backbone():
    """The real compiler (C++ kernels on the CPU, float64), forward and backward, both paths."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for fused in (True, False):
        model = WSResNet(depth=18, base_channels=8, norm_eval=False, fused=fused)
        _assert_compiled_equals_eager(model, x, backend='inductor')


@pytest.mark.slow
@needs_compile
def test_compiled_bf16_autocast_equals_eager():
    torch.manual_seed(0)
    model = WSResNet(depth=18, base_channels=8, norm_eval=False, fused=False)
    x = torch.randn(2, 3, 32, 32)

    def loss(model, x):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            return _loss(model, x).float()

    eager = _grads(model, x, loss)
    compiled = _grads(model, x, torch.compile(loss, backend='aot_eager', fullgraph=True))
    torch.testing.assert_close(compiled[0], eager[0], rtol=2e-2, atol=1e-3)
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=1e-3)


@pytest.mark.skipif(CUSTOM_OP_API, reason='torch < 2.4 only: runs in the legacy lane')
@needs_dynamo
def test_fused_ops_in_a_graph_are_refused_before_torch_2_4():
    """Without custom-op registration the fused ops cannot be traced: fused=True under
    torch.compile says why; fused=None (the default) compiles the torch-ops expression."""
    conv = WSConv(3, 4, 3, fused=True)
    with pytest.raises(RuntimeError, match='cannot trace custom ops'):
        torch.compile(conv, backend='aot_eager')(torch.randn(1, 3, 8, 8))
