"""The ε-shifted step: computed from the parameters as the step finds them, the λW part delegated
to the optimizer's own weight decay, fused, single- and multi-tensor paths, odd tensors."""
import pytest
import torch
from torch import nn

from mmdet_eps.engine.optimizers import eps_shifted_grad, make_eps_shifted
from mmdet_eps.models.backbones import WSResNet

from .helpers import CONVS, autograd_grad, build_optim_wrapper

FAMILIES = ['ws', 'wn', 'cwn']


def test_forwards_leave_nothing_on_the_layers():
    """The step computes from the parameters: no forward state for it to read."""
    for fused in (True, False):
        conv = CONVS['ws'](4, 6, 3, fused=fused)
        before = set(vars(conv))
        conv(torch.randn(1, 4, 5, 5)).sum().backward()
        assert set(vars(conv)) == before and not conv.weight.__dict__


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('mode', ['coupled', 'decoupled'])
@pytest.mark.parametrize('impl', ['fused', 'foreach', 'single_tensor'])
def test_step_after_forward_equals_the_paper_gradient(family, mode, impl):
    """Each implementation of forward + step."""
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
        make_eps_shifted(opt)
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
    make_eps_shifted(opt)
    w0 = [p.detach().clone() for p in params]
    opt.step()
    for p, w in zip(params, w0):
        torch.testing.assert_close(p.detach(), w - eps_shifted_grad(w, 'cwn', 0.5, 0.1))


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('mode', ['coupled', 'decoupled'])
@pytest.mark.parametrize('model', ['conv', 'backbone'])
def test_data_write_between_backward_and_step_is_seen(fused, mode, model):
    """As torch's weight decay: the term is the paper's gradient at the weight as the step finds
    it, after a write through ``.data`` (which no version counter sees)."""
    torch.manual_seed(0)
    lam, eps, lr = 0.05, 0.3, 0.1
    if model == 'conv':
        net = CONVS['ws'](3, 4, 3, fused=fused).double()
        conv, x = net, torch.randn(1, 3, 5, 5, dtype=torch.float64)
    else:
        net = WSResNet(depth=18, base_channels=8, norm_eval=False, fused=fused).double()
        conv, x = net.layer2[0].conv2, torch.randn(2, 3, 32, 32, dtype=torch.float64)
    wrapper = build_optim_wrapper(net, dict(type='SGD', lr=lr, weight_decay=lam),
                                  eps_shift=dict(eps=eps, mode=mode, fused=fused))
    out = net(x)
    sum(o.square().sum() for o in (out if isinstance(out, tuple) else (out, ))).backward()
    conv.weight.data.mul_(2.).add_(0.01)
    w, g = conv.weight.detach().clone(), conv.weight.grad.clone()
    wrapper.step()
    torch.testing.assert_close(conv.weight.detach(),
                               w - lr * (g + autograd_grad(w, 'ws', eps, lam)))
