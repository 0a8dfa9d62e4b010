"""The fused CPU ops (mmdet_eps.ops): the same numbers as the torch-ops path and the paper's
formulas, gradcheck, frozen and unused weights, fallback, one op each way."""
import math

import pytest
import torch

from mmdet_eps.engine.optimizers.eps_shifted_regularizer import eps_shift, eps_shifted_grad
from mmdet_eps.models.layers import FilterNorm, fan_in, normalize_batch
from mmdet_eps.ops import FUSED_AVAILABLE, fused_eps_shift_, fused_unsupported
from mmdet_eps.utils.op_count import count_ops
from tests.conftest import needs_torch

# (shape, centered, divisor as a function of n, eps): WS unbiased / population, CWN, WN
CASES = [((6, 4, 3, 3), True, lambda n: n - 1, 1e-5), ((5, 8, 1, 1), True, lambda n: n, 0.),
         ((3, 3, 7, 7), True, lambda n: 1, 0.3), ((4, 2, 3, 3), False, lambda n: 1, 1e-3),
         ((2, 5, 2, 2), False, lambda n: 1, 0.)]


def _batch(dtype=torch.float64, requires_grad=True):
    torch.manual_seed(0)
    specs, weights = [], []
    for shape, centered, divisor, eps in CASES:
        w = torch.randn(shape, dtype=dtype) * 0.3 + 0.1 * torch.randn(shape[0], 1, 1, 1,
                                                                          dtype=dtype)
        weights.append([w.requires_grad_(requires_grad)])
        specs.append(FilterNorm.build(fan_in(w), eps, centered, divisor(fan_in(w))))
    return specs, weights


def _reference(w, spec):
    f = w.reshape(w.shape[0], -1)
    u = f - f.mean(1, keepdim=True) if spec.centered else f
    return (u / (u.norm(dim=1, keepdim=True) / math.sqrt(spec.divisor) + spec.eps)).view_as(w)


def test_the_extension_is_built():
    """make setup builds it; without it every fused test below would fall back unnoticed."""
    assert FUSED_AVAILABLE


def test_all_shapes_and_families_in_one_call_equal_the_formula_and_the_torch_path():
    specs, weights = _batch()
    grads = [torch.randn_like(group[0]) for group in weights]
    results = {}
    for fused in (True, False):
        outs = [o for group in normalize_batch(specs, weights, fused) for o in group]
        flat = [group[0] for group in weights]
        results[fused] = outs, torch.autograd.grad(outs, flat, grads)
    for out, (w, ), spec in zip(results[True][0], weights, specs):
        torch.testing.assert_close(out, _reference(w, spec))
    for a, b in zip(results[True][0] + list(results[True][1]),
                    results[False][0] + list(results[False][1])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    specs, weights = _batch()

    def fn(*flat):
        return tuple(o for group in normalize_batch(specs, [[w] for w in flat], True)
                     for o in group)
    assert torch.autograd.gradcheck(fn, [group[0] for group in weights])


def test_float32_is_close_to_float64():
    specs, weights64 = _batch()
    weights32 = [[w.detach().float()] for (w, ) in weights64]
    outs32 = normalize_batch(specs, weights32, True)
    for (o32, ), (w, ), spec in zip(outs32, weights64, specs):
        torch.testing.assert_close(o32.double(), _reference(w, spec), rtol=1e-5, atol=1e-5)


def test_float32_filters_far_from_zero_keep_their_precision():
    """A filter whose mean is 10^4 times its spread is normalized (two passes) and stepped (one
    pass, shifted by one of the filter's values) as in float64: a one-pass variance about 0
    would lose every digit in float32."""
    torch.manual_seed(0)
    w32 = torch.randn(8, 16, 3, 3) * 1e-3 + 10.
    w64 = w32.double()  # the same values
    spec = FilterNorm.build(fan_in(w64), 1e-5, True, fan_in(w64))
    (out, ), = normalize_batch([spec], [[w32]], True)
    torch.testing.assert_close(out.double(), _reference(w64, spec), rtol=1e-3, atol=1e-3)
    target = torch.zeros_like(w32)
    fused_eps_shift_([target], [w32], [0.], [1.], [1])
    unit = _reference(w64, FilterNorm.build(fan_in(w64), 0., True, fan_in(w64)))
    torch.testing.assert_close(target.double(), unit, rtol=1e-3, atol=1e-3)


def test_one_op_forward_and_one_backward():
    specs, weights = _batch()
    flat = [group[0] for group in weights]

    def run():
        outs = normalize_batch(specs, weights, True)
        sum(o.sum() for group in outs for o in group).backward()
    counts = count_ops(run).by_name
    assert counts['mmdet_eps.normalize_filters.default'] == 1
    assert counts['mmdet_eps.normalize_filters_backward.default'] == 1
    assert all(w.grad is not None for w in flat)


def test_frozen_and_unused_weights_get_no_gradient():
    specs, weights = _batch()
    weights[1][0].requires_grad_(False)  # frozen: normalized, no gradient computed
    outs = normalize_batch(specs, weights, True)
    assert not outs[1][0].requires_grad  # so its conv skips the weight's backward
    used = [group[0] for i, group in enumerate(outs) if i != 3]  # weight 3's output unused
    sum(o.square().sum() for o in used).backward()
    assert weights[1][0].grad is None and weights[3][0].grad is None
    for i in (0, 2, 4):
        w = weights[i][0].detach().requires_grad_(True)
        _reference(w, specs[i]).square().sum().backward()
        torch.testing.assert_close(weights[i][0].grad, w.grad)


def test_auto_falls_back_to_torch_ops_and_explicit_fused_says_why():
    specs, weights = _batch(dtype=torch.float32)
    last = [[w.detach().to(memory_format=torch.channels_last)] for (w, ) in weights[:3]]
    assert 'non-contiguous' in fused_unsupported([w for (w, ) in last])
    outs = normalize_batch(specs[:3], last)  # auto: torch ops
    for (o, ), (w, ), spec in zip(outs, last, specs):
        torch.testing.assert_close(o, _reference(w, spec), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match='non-contiguous'):
        normalize_batch(specs[:3], last, fused=True)
    half = [[w.detach().half()] for (w, ) in weights]
    assert 'dtype' in fused_unsupported([w for (w, ) in half])
    assert normalize_batch(specs, half)[0][0].dtype == torch.float16


@pytest.mark.parametrize('mode', ['coupled', 'decoupled'])
def test_fused_step_equals_the_paper_gradient(mode):
    """The fused step reduces each filter of the weight as it is and updates it in one pass:
    the paper's gradient, in place."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3, 3, 3, dtype=torch.float64)),
              torch.nn.Parameter(torch.randn(6, 8, 1, 1, dtype=torch.float64))]
    for p in params:
        p.grad = torch.randn_like(p)
    lam, eps, lr = 0.2, 0.5, 0.1
    expected = [(p.grad + eps_shifted_grad(p, 'ws', eps, lam)) if mode == 'coupled' else
                p.detach() - lr * eps_shifted_grad(p, 'ws', eps, lam) for p in params]
    versions = [p._version for p in params]
    with torch.no_grad():
        eps_shift(params, 'ws', eps, lam, mode, lr, fused=True)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad if mode == 'coupled' else p.detach(), e)
    if mode == 'decoupled':  # an in-place write: the version counter moves
        assert all(p._version > v for p, v in zip(params, versions))


def test_fused_step_of_zero_and_constant_filters_is_plain_decay():
    """A filter with ``u = 0`` has no direction: its unit filter is 0, as ``unit_filters``."""
    w = torch.zeros(3, 2, 3, 3)
    w[1] = 0.5
    target = torch.zeros_like(w)
    fused_eps_shift_([target], [w], [0.1], [-0.3], [1])
    torch.testing.assert_close(target, 0.1 * w)


def test_channels_last_outputs_and_gradients_equal_contiguous_ones():
    """In a compiled graph the forward writes channels-last outputs (what inductor's CPU convs
    take) and the backward takes gradients in whatever layout they come: same numbers."""
    _, weights = _batch()
    flat = [w.detach() for (w, ) in weights]
    args = ([1.0, 2.5, 1.0, 0.5, 1.0], [1e-5, 0., 0.3, 1e-3, 0.], [1, 1, 1, 0, 0])
    offsets = [0, 6, 11, 14, 18]
    outs, rstd = torch.ops.mmdet_eps.normalize_filters(flat, *args)
    cl_outs, cl_rstd = torch.ops.mmdet_eps.normalize_filters(flat, *args, True)
    grads = [torch.randn_like(o) for o in outs]
    expected = torch.ops.mmdet_eps.normalize_filters_backward(grads, outs, rstd, offsets, *args)
    for out, cl_out in zip(outs, cl_outs):
        assert cl_out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(cl_out, out, rtol=0, atol=0)
    torch.testing.assert_close(cl_rstd, rstd, rtol=0, atol=0)
    layouts = {  # gradients: channels-last, contiguous, and neither (a transposed copy)
        'channels_last': [g.contiguous(memory_format=torch.channels_last) for g in grads],
        'contiguous': grads,
        'strided': [g.transpose(2, 3).contiguous().transpose(2, 3) for g in grads]}
    for name, layout in layouts.items():
        for saved in (outs, cl_outs):
            got = torch.ops.mmdet_eps.normalize_filters_backward(layout, saved, rstd, offsets,
                                                                 *args)
            for g, e, o in zip(got, expected, saved):
                assert g.is_contiguous(), name  # the layout of the weights
                torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12, msg=name)


def test_ops_check_their_arguments():
    w = torch.randn(4, 3, 3, 3)
    with pytest.raises(RuntimeError, match='different lengths'):
        fused_eps_shift_([w.clone()], [w], [0.1, 0.2], [0.1], [1])
    with pytest.raises(RuntimeError, match='target of another shape'):
        fused_eps_shift_([w[:2].clone()], [w], [0.1], [0.1], [1])
    with pytest.raises(RuntimeError, match='CPU tensors of one dtype'):
        fused_eps_shift_([w.double()], [w], [0.1], [0.1], [1])


@needs_torch('2.4', 'Custom-op registration (torch.library.register_fake, opcheck)')
def test_ops_pass_opcheck():
    """Registered as torch documents custom ops: schema, fake kernel, autograd formula
    (torch.library.opcheck runs the op under fake tensors, AOT autograd with dynamic shapes,
    and checks the schema's mutation and aliasing claims)."""
    _, weights = _batch(dtype=torch.float32)
    flat = [w.detach().requires_grad_(i != 1) for i, (w, ) in enumerate(weights)]
    args = ([1.0, 2.5, 1.0, 0.5, 1.0], [1e-5, 0., 0.3, 1e-3, 0.], [1, 1, 1, 0, 0])
    for channels_last in (False, True):
        torch.library.opcheck(torch.ops.mmdet_eps.normalize_filters.default,
                              (flat, *args, channels_last))
        outs, rstd = torch.ops.mmdet_eps.normalize_filters([w.detach() for w in flat], *args,
                                                           channels_last)
        offsets = [0, 6, 11, 14, 18]
        for grads in ([torch.randn_like(w) for w in flat], [torch.randn_like(o) for o in outs]):
            torch.library.opcheck(torch.ops.mmdet_eps.normalize_filters_backward.default,
                                  (grads, outs, rstd, offsets, *args))
    targets = [torch.randn_like(w) for w in flat]
    torch.library.opcheck(torch.ops.mmdet_eps.eps_shift_.default,
                          (targets, [w.detach() for w in flat], [0.1] * 5, [-0.2] * 5,
                           args[2]))


def test_a_missing_extension_is_reported_and_the_layers_fall_back(monkeypatch):
    from mmdet_eps.ops import fused_filter_normalize as ops
    monkeypatch.setattr(ops, 'extension_name', lambda: '_ext_torch0_0')
    with pytest.warns(UserWarning, match='_ext_torch0_0 is not built: weights are normalized '
                      'with torch ops'):
        assert ops._load() is False
    monkeypatch.setattr(ops, 'FUSED_AVAILABLE', False)
    assert 'is not built' in ops.fused_unsupported([torch.ones(2, 3)])
