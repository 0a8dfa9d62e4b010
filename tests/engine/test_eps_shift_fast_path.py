"""The fast paths of the ε-shifted step: statistics remembered from the forward pass, coefficients
of a whole group at once, foreach updates, non-contiguous tensors."""
import pytest
import torch
from torch import nn

from mmdet_eps.engine.optimizers import eps_shifted_regularizer
from mmdet_eps.engine.optimizers.eps_shifted_regularizer import (apply_eps_shift,
                                                                 eps_shift_coefficients,
                                                                 eps_shifted_grad,
                                                                 group_coefficients)
from mmdet_eps.models.layers.filter_stats import (centered_filters, filter_center_stats,
                                                  filter_raw_norm, forget_filter_stats)

from .helpers import CONVS, autograd_grad, build_optim_wrapper

FAMILIES = ['ws', 'wn', 'cwn']


@pytest.fixture(params=['per_tensor', 'foreach'])
def update_path(request, monkeypatch):
    """Both update paths: tensor by tensor (CPU) and foreach calls (GPUs), here on CPU."""
    if request.param == 'foreach':
        monkeypatch.setattr(eps_shifted_regularizer, 'PER_TENSOR_DEVICES', ())
    return request.param


def _stats(weight, family):
    with torch.no_grad():
        return filter_raw_norm(weight) if family == 'wn' else filter_center_stats(weight)[1]


@pytest.mark.parametrize('family', FAMILIES)
def test_forward_statistics_are_reused_until_the_weight_changes(family):
    torch.manual_seed(0)
    conv = CONVS[family](4, 6, 3).double()
    conv(torch.randn(1, 4, 5, 5, dtype=torch.float64)).sum().backward()
    first = _stats(conv.weight, family)
    assert _stats(conv.weight, family) is first  # remembered from the forward pass
    with torch.no_grad():
        conv.weight.mul_(2.)  # any in-place op bumps the version counter
    second = _stats(conv.weight, family)
    assert second is not first
    torch.testing.assert_close(second, 2 * first)
    # .data writes bypass the version counter: forget_filter_stats is the documented way out
    conv.weight.data.mul_(0.5)
    forget_filter_stats(conv.weight)
    torch.testing.assert_close(_stats(conv.weight, family), first)


def test_nothing_is_remembered_when_autograd_needs_the_statistics():
    w = torch.randn(5, 3, 3, 3, requires_grad=True)
    _, mean, norm = centered_filters(w)  # grad enabled, w requires grad: computed, not stored
    with torch.no_grad():
        assert filter_center_stats(w)[1] is not norm
    mean2, norm2 = filter_center_stats(w)  # with grad: always computed, differentiable
    assert norm2.requires_grad


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('mode', ['coupled', 'decoupled'])
def test_step_after_forward_equals_the_paper_gradient(family, mode, update_path):
    torch.manual_seed(0)
    lr, lam, eps = 0.1, 0.3, 0.05
    conv = CONVS[family](3, 6, 3).double()
    wrapper = build_optim_wrapper(conv, dict(type='SGD', lr=lr, weight_decay=lam),
                                  eps_shift=dict(eps=eps, mode=mode),
                                  custom_keys={'bias': dict(lr_mult=0.)})
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    for _ in range(3):
        w0 = conv.weight.detach().clone()
        loss = conv(x).square().mean()
        grad = torch.autograd.grad(loss, conv.weight, retain_graph=True)[0]
        wrapper.update_params(loss)  # forward statistics are reused by the step
        expected = w0 - lr * (grad + autograd_grad(w0, family, eps, lam))
        torch.testing.assert_close(conv.weight.detach(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('family', FAMILIES)
def test_group_coefficients_equal_per_tensor_ones(family):
    torch.manual_seed(0)
    weights = [torch.randn(s, dtype=torch.float64) * 0.2 + 0.03
               for s in [(8, 4, 3, 3), (16, 8, 1, 1), (4, 4, 3, 3), (8, 4, 3, 3)]]
    a_list, b_list = group_coefficients(weights, family, 0.01, 0.4)
    for i, w in enumerate(weights):
        a, b = eps_shift_coefficients(w, family, 0.01, 0.4)
        torch.testing.assert_close(a_list[i].flatten(), a.flatten())
        if family == 'wn':
            assert b_list == []
        else:
            torch.testing.assert_close(b_list[i].flatten(), b.flatten())
        got = torch.addcmul(b_list[i] if b_list else torch.zeros(()), w.flatten(1), a_list[i])
        torch.testing.assert_close(got.view_as(w), eps_shifted_grad(w, family, 0.01, 0.4))


@pytest.mark.parametrize('mode', ['coupled', 'decoupled'])
def test_channels_last_weights_and_gradients(mode, update_path):
    torch.manual_seed(0)
    convs = [CONVS['ws'](4, 8, 3).double() for _ in range(2)]
    convs[1].load_state_dict(convs[0].state_dict())
    convs[1].to(memory_format=torch.channels_last)
    assert not convs[1].weight.is_contiguous()
    opts = []
    for conv in convs:
        opt = torch.optim.SGD([dict(params=[conv.weight], eps_shift_family='ws',
                                    eps_shift_lambda=0.2, eps_shift_eps=0.1,
                                    eps_shift_mode=mode, weight_decay=0.)], lr=0.1)
        opt.register_step_pre_hook(apply_eps_shift)
        conv.weight.grad = torch.ones_like(conv.weight)
        opt.step()
        opts.append(opt)
    torch.testing.assert_close(convs[1].weight, convs[0].weight)
    assert not convs[1].weight.is_contiguous()


def test_mixed_dtypes_in_one_group_are_handled_apart(update_path):
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(4, 3, 3, 3)), nn.Parameter(torch.randn(6, 2, 3, 3).double())]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = torch.optim.SGD([dict(params=params, eps_shift_family='cwn', eps_shift_lambda=0.1,
                                eps_shift_eps=0.5, eps_shift_mode='coupled')], lr=1.)
    opt.register_step_pre_hook(apply_eps_shift)
    w0 = [p.detach().clone() for p in params]
    opt.step()
    for p, w in zip(params, w0):
        torch.testing.assert_close(p.detach(), w - eps_shifted_grad(w, 'cwn', 0.5, 0.1))
