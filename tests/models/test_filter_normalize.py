"""The batched normalization Function and the per-filter statistics against plain autograd."""
import pytest
import torch

from mmdet_eps.models.layers import (
    filter_moments,
    filter_norm,
    filter_normalize,
    normalize_filter_batch,
    normalize_filters,
    standardize_filters,
    unit_filters,
)

SHAPES = [(6, 4, 3, 3), (16, 8, 1, 1), (5, 3, 7, 7), (4, 2, 3)]
KINDS = ['ws_unbiased', 'ws_population', 'cwn', 'wn']


def _weight(shape, offset=0.2, dtype=torch.float64):
    torch.manual_seed(sum(shape))
    w = torch.randn(shape, dtype=dtype) * 0.3
    w += offset * torch.randn((shape[0], ) + (1, ) * (len(shape) - 1), dtype=dtype)
    return w


def _reference(w, eps, centered, divisor):
    f = w.reshape(w.shape[0], -1)
    u = f - f.mean(1, keepdim=True) if centered else f
    s = u.norm(dim=1, keepdim=True) / divisor**0.5
    return (u / (s + eps)).view_as(w)


def _kind(kind, n):
    return {'ws_unbiased': (True, n - 1), 'ws_population': (True, n), 'cwn': (True, 1),
            'wn': (False, 1)}[kind]


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('eps', [0., 1e-5, 0.3])
@pytest.mark.parametrize('kind', KINDS)
def test_forward_and_backward_equal_autograd(shape, eps, kind):
    w = _weight(shape)
    centered, divisor = _kind(kind, w[0].numel())
    grad = torch.randn(shape, dtype=w.dtype)
    ours = w.clone().requires_grad_(True)
    ref = w.clone().requires_grad_(True)
    out = normalize_filters(ours, eps, centered, divisor)
    expected = _reference(ref, eps, centered, divisor)
    torch.testing.assert_close(out, expected)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(ours.grad, ref.grad)


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('eps', [0., 1e-3])
def test_batch_equals_one_by_one_and_passes_gradcheck(kind, eps):
    """Many weights of one filter shape in one node: outputs and gradients, on both paths."""
    torch.manual_seed(0)
    weights = [_weight((c, 3, 2, 2)).requires_grad_(True) for c in (2, 5, 1)]
    centered, divisor = _kind(kind, 12)
    for fused in (False, None):
        outs = normalize_filter_batch(weights, eps, centered, divisor, fused)
        for w, out in zip(weights, outs):
            assert out.shape == w.shape
            torch.testing.assert_close(out, _reference(w, eps, centered, divisor))
        assert torch.autograd.gradcheck(
            lambda *ws: torch.cat(normalize_filter_batch(ws, eps, centered, divisor, fused)),
            weights)


@pytest.mark.parametrize('kind', KINDS)
def test_traced_batch_concatenates_small_weights_only_and_equals_autograd(kind, monkeypatch):
    """The compiler's path: weights under the threshold normalized concatenated, larger ones
    alone, each output in its weight's place, values and gradients as the formula."""
    monkeypatch.setattr(filter_normalize, 'TRACE_CONCAT_BELOW', 30)
    cats = []
    monkeypatch.setattr(torch, 'cat', lambda ts: cats.append(len(ts)) or torch.concat(ts))
    weights = [_weight((c, 3, 2, 2)).requires_grad_(True) for c in (2, 5, 1, 1)]  # 24 60 12 12
    refs = [w.detach().clone().requires_grad_(True) for w in weights]
    centered, divisor = _kind(kind, 12)
    spec = filter_normalize.FilterNorm.build(12, 1e-3, centered, divisor)
    outs = filter_normalize._traceable_batch([spec], [weights])[0]
    assert cats == [3]
    expected = [_reference(r, 1e-3, centered, divisor) for r in refs]
    grads = [torch.randn_like(w) for w in weights]
    torch.autograd.backward(outs, grads)
    torch.autograd.backward(expected, grads)
    for out, exp, w, r in zip(outs, expected, weights, refs):
        torch.testing.assert_close(out, exp)
        torch.testing.assert_close(w.grad, r.grad)


@pytest.mark.parametrize('centered', [True, False])
@pytest.mark.parametrize('traceable', [False, True])
def test_unit_filters_are_the_direction_at_scale_sqrt_n(centered, traceable):
    w = _weight((6, 4, 3, 3))
    w[0] = 0.5  # no direction: 0
    f = w.flatten(1)
    u = f - f.mean(1, keepdim=True) if centered else f
    expected = (u / u.norm(dim=1, keepdim=True) * f.shape[1]**0.5).view_as(w)
    if centered:
        expected[0] = 0
    torch.testing.assert_close(unit_filters(w, centered, traceable), expected)


def test_unused_members_get_zero_gradients():
    weights = [_weight((c, 3, 3, 3)).requires_grad_(True) for c in (4, 6)]
    outs = normalize_filter_batch(weights, 1e-5, True, 26, fused=False)
    outs[1].sum().backward()
    assert weights[0].grad is not None and weights[0].grad.abs().max() == 0
    assert weights[1].grad.abs().max() > 0


def test_half_precision_weights_are_normalized_in_float32():
    w = _weight((8, 4, 3, 3), dtype=torch.float32)
    half = w.to(torch.bfloat16).requires_grad_(True)
    out = standardize_filters(half, 1e-5)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), standardize_filters(half.detach().float(), 1e-5),
                               rtol=1e-2, atol=1e-2)
    out.float().sum().backward()
    assert half.grad.dtype == torch.bfloat16


def test_standardize_filters_float32_close_to_float64():
    w = _weight((64, 32, 3, 3), dtype=torch.float32).requires_grad_(True)
    w64 = w.detach().double().requires_grad_(True)
    grad = torch.randn(w.shape)
    out, out64 = standardize_filters(w, 1e-5), standardize_filters(w64, 1e-5)
    torch.testing.assert_close(out, out64.float(), rtol=1e-5, atol=1e-5)
    out.backward(grad)
    out64.backward(grad.double())
    torch.testing.assert_close(w.grad, w64.grad.float(), rtol=1e-4, atol=1e-4)


def test_constant_filters_stay_finite():
    w = torch.ones(3, 4, 3, 3, requires_grad=True)
    out = standardize_filters(w, 1e-5)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(w.grad).all()


def test_refuses_non_positive_divisor():
    with pytest.raises(ValueError, match='divisor'):
        normalize_filters(torch.randn(2, 3), 0., True, 0)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('correction', [0, 1])
def test_two_pass_moments_equal_var_mean(shape, correction):
    w = _weight(shape, offset=3.)
    mean, var = filter_moments(w, correction=correction)
    ref_var, ref_mean = torch.var_mean(w.reshape(shape[0], -1), 1, correction=correction)
    assert mean.shape == var.shape == (shape[0], ) + (1, ) * (len(shape) - 1)
    torch.testing.assert_close(mean.flatten(), ref_mean)
    torch.testing.assert_close(var.flatten(), ref_var)
    f = w.reshape(shape[0], -1)
    torch.testing.assert_close(filter_norm(w, centered=False).flatten(), f.norm(dim=1))
    torch.testing.assert_close(filter_norm(w, centered=True).flatten(),
                               (f - ref_mean[:, None]).norm(dim=1))


def test_moments_of_float32_weights_with_a_large_offset_stay_accurate():
    w = _weight((8, 16, 3, 3), offset=0., dtype=torch.float32) * 1e-3 + 5.
    _, var = filter_moments(w)
    _, ref = filter_moments(w.double())
    torch.testing.assert_close(var.double(), ref, rtol=1e-3, atol=0)
