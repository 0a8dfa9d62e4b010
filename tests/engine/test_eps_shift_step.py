"""The ε-shifted step: unit filters reused from the forward, the λW part delegated to the
optimizer's own weight decay, single- and multi-tensor paths, odd tensors."""
import pytest
import torch
from torch import nn

from mmdet_eps.engine.optimizers import EpsShiftStep, eps_shifted_grad
from mmdet_eps.models.layers import take_unit_filters, unit_filters
from mmdet_eps.models.layers.filter_stats import FilterMoments, take_filter_moments

from .helpers import CONVS, autograd_grad, build_optim_wrapper

FAMILIES = ['ws', 'wn', 'cwn']


@pytest.mark.parametrize('family', FAMILIES)
def test_forward_records_unit_filters_until_the_weight_changes(family):
    torch.manual_seed(0)
    conv = CONVS[family](4, 6, 3, fused=False).double()  # the torch-ops path records units
    conv(torch.randn(1, 4, 5, 5, dtype=torch.float64)).sum().backward()
    centered = family != 'wn'
    recorded = conv.step_stats.unit  # the layer owns it, not the weight tensor
    assert not conv.weight.__dict__
    torch.testing.assert_close(recorded, unit_filters(conv.weight, centered))
    assert take_unit_filters(conv.weight, centered, conv) is recorded  # the forward's, once
    assert take_unit_filters(conv.weight, centered, conv) is not recorded  # then recomputed
    conv(torch.randn(1, 4, 5, 5, dtype=torch.float64))
    with torch.no_grad():
        conv.weight.mul_(-2.).add_(0.1)  # any in-place write bumps the version counter
    fresh = take_unit_filters(conv.weight, centered, conv)
    torch.testing.assert_close(fresh, unit_filters(conv.weight, centered))
    assert not torch.allclose(fresh, recorded)


@pytest.mark.parametrize('family', FAMILIES)
def test_fused_forward_records_moments_until_the_weight_changes(family):
    torch.manual_seed(0)
    conv = CONVS[family](4, 6, 3, fused=True).double()
    conv(torch.randn(1, 4, 5, 5, dtype=torch.float64)).sum().backward()
    centered = family != 'wn'
    record = conv.step_stats
    assert isinstance(record, FilterMoments)
    (mean, ), (rstd, ), (offset, ) = take_filter_moments([conv.weight], centered, [conv])
    assert mean is record.mean and offset == record.offset  # the forward's, once
    unit = (conv.weight - mean.view(-1, 1, 1, 1)) * rstd.view(-1, 1, 1, 1)
    torch.testing.assert_close(unit, unit_filters(conv.weight, centered))
    assert conv.step_stats is None
    conv(torch.randn(1, 4, 5, 5, dtype=torch.float64))
    with torch.no_grad():
        conv.weight.mul_(-2.).add_(0.1)
    torch.testing.assert_close(take_unit_filters(conv.weight, centered, conv),
                               unit_filters(conv.weight, centered))  # recomputed


def test_frozen_or_no_grad_forwards_record_nothing():
    conv = CONVS['ws'](4, 6, 3)
    with torch.no_grad():
        conv(torch.randn(1, 4, 5, 5))
    conv.weight.requires_grad_(False)
    conv(torch.randn(1, 4, 5, 5))
    assert conv.step_stats is None


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('mode', ['coupled', 'decoupled'])
@pytest.mark.parametrize('impl', ['fused', 'foreach', 'single_tensor'])
def test_step_after_forward_equals_the_paper_gradient(family, mode, impl):
    """Each implementation of forward + step (the step follows what the forward recorded)."""
    torch.manual_seed(0)
    lr, lam, eps = 0.1, 0.3, 0.05
    foreach = impl == 'foreach'
    conv = CONVS[family](3, 6, 3, fused=impl == 'fused').double()
    wrapper = build_optim_wrapper(conv, dict(type='SGD', lr=lr, weight_decay=lam,
                                             foreach=foreach),
                                  eps_shift=dict(eps=eps, mode=mode),
                                  custom_keys={'bias': dict(lr_mult=0.)})
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    for _ in range(3):
        w0 = conv.weight.detach().clone()
        loss = conv(x).square().mean()
        grad = torch.autograd.grad(loss, conv.weight, retain_graph=True)[0]
        wrapper.update_params(loss)
        expected = w0 - lr * (grad + autograd_grad(w0, family, eps, lam))
        torch.testing.assert_close(conv.weight.detach(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('optimizer, mode, delegated', [
    ('SGD', 'coupled', True), ('SGD', 'decoupled', False), ('AdamW', 'decoupled', True),
    ('AdamW', 'coupled', False), ('Adam', 'coupled', True), ('Adadelta', 'coupled', False)])
@pytest.mark.parametrize('fused', [True, False])
def test_lambda_w_goes_to_the_optimizer_only_in_its_own_form(optimizer, mode, delegated, fused):
    """Delegated or not, one step equals the formula: W - lr(g + λ∇R) (coupled SGD) etc."""
    torch.manual_seed(0)
    lam, eps, lr = 0.2, 0.1, 0.05
    conv = CONVS['ws'](3, 4, 3, fused=fused).double()
    wrapper = build_optim_wrapper(conv, dict(type=optimizer, lr=lr, weight_decay=lam),
                                  eps_shift=dict(eps=eps, mode=mode, fused=fused))
    group = next(g for g in wrapper.optimizer.param_groups if 'eps_shift_family' in g)
    # the fused step does λW in its own pass: never delegated
    assert group['weight_decay'] == (lam if delegated and not fused else 0.)
    ref = CONVS['ws'](3, 4, 3).double()
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    w0 = conv.weight.detach().clone()
    wrapper.update_params(conv(x).square().mean())
    # reference: the same optimizer without decay, the term applied by hand
    ref_opt = getattr(torch.optim, optimizer)([ref.weight], lr=lr, weight_decay=0.)
    ref(x).square().mean().backward()
    term = autograd_grad(w0, 'ws', eps, lam)
    with torch.no_grad():
        if mode == 'coupled':
            ref.weight.grad += term
        else:
            ref.weight -= lr * term
    ref_opt.step()
    torch.testing.assert_close(conv.weight, ref.weight, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize('foreach', [False, True])
@pytest.mark.parametrize('mode', ['coupled', 'decoupled'])
def test_channels_last_weights_and_gradients(mode, foreach):
    torch.manual_seed(0)
    convs = [CONVS['ws'](4, 8, 3).double() for _ in range(2)]
    convs[1].load_state_dict(convs[0].state_dict())
    convs[1].to(memory_format=torch.channels_last)
    assert not convs[1].weight.is_contiguous()
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    for conv in convs:
        opt = torch.optim.SGD([dict(params=[conv.weight], eps_shift_family='ws',
                                    eps_shift_lambda=0.2, eps_shift_eps=0.1,
                                    eps_shift_mode=mode, weight_decay=0.)], lr=0.1,
                              foreach=foreach)
        opt.register_step_pre_hook(EpsShiftStep(conv))
        conv(x).square().sum().backward()
        opt.step()
    torch.testing.assert_close(convs[1].weight, convs[0].weight)
    assert not convs[1].weight.is_contiguous()


@pytest.mark.parametrize('foreach', [False, True])
def test_mixed_dtypes_and_shapes_in_one_group(foreach):
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(4, 3, 3, 3)), nn.Parameter(torch.randn(6, 2, 3, 3).double())]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = torch.optim.SGD([dict(params=params, eps_shift_family='cwn', eps_shift_lambda=0.1,
                                eps_shift_eps=0.5, eps_shift_mode='coupled')], lr=1.,
                          foreach=foreach)
    opt.register_step_pre_hook(EpsShiftStep())  # no model: statistics computed at the step
    w0 = [p.detach().clone() for p in params]
    opt.step()
    for p, w in zip(params, w0):
        torch.testing.assert_close(p.detach(), w - eps_shifted_grad(w, 'cwn', 0.5, 0.1))


@pytest.mark.parametrize('fused', [True, False])
def test_data_write_between_forward_and_step_keeps_the_forward_statistics(fused):
    """The step's term uses the statistics of the forward, like the loss gradient in .grad (a
    write through .data bypasses the version counter; documented in filter_stats): its unit
    filters (torch ops), or its per-filter mean and rstd applied to the weight (fused)."""
    torch.manual_seed(0)
    conv = CONVS['ws'](3, 4, 3, fused=fused).double()
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    conv(x).sum().backward()
    w_forward = conv.weight.detach().clone()
    conv.weight.data.add_(torch.randn_like(w_forward))
    unit = take_unit_filters(conv.weight, True, conv)
    expected = unit_filters(w_forward, True)
    if fused:
        flat = w_forward.flatten(1)
        mean = flat.mean(1).view(-1, 1, 1, 1)
        rstd = flat.var(1, unbiased=False).rsqrt().view(-1, 1, 1, 1)
        expected = (conv.weight.detach() - mean) * rstd
    torch.testing.assert_close(unit, expected)
