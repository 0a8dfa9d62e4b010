"""The ε-shifted regularizer against autograd of the paper's formulas, Theorem 1, the global
minimum, and plain-L2 equivalence at ε = 0."""
import pytest
import torch
from torch import nn

from mmdet_eps.engine.optimizers import eps_shifted_grad
from tests.conftest import load_script

from .helpers import CONVS, TinyNet, autograd_grad, build_optim_wrapper

FAMILIES = ['ws', 'wn', 'cwn']
OPTIMIZERS = {
    'SGD': dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.05),
    'Adam': dict(type='Adam', lr=0.01, weight_decay=0.05),
    'AdamW': dict(type='AdamW', lr=0.01, weight_decay=0.05),
}


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('eps', [0., 1e-3, 0.5])
def test_gradient_equals_autograd_of_paper_formula(family, eps):
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64) * 0.3 + 0.05
    torch.testing.assert_close(eps_shifted_grad(w, family, eps, 0.7),
                               autograd_grad(w, family, eps, 0.7))


@pytest.mark.parametrize('family', FAMILIES)
def test_eps_zero_is_plain_l2(family):
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(eps_shifted_grad(w, family, 0., 0.3), 0.3 * w)


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('mode', ['coupled', 'decoupled'])
@pytest.mark.parametrize('opt', list(OPTIMIZERS))
def test_one_step_with_zero_task_loss_moves_by_the_paper_gradient(family, mode, opt):
    torch.manual_seed(0)
    model = TinyNet(family).double()
    cfg = OPTIMIZERS[opt]
    wrapper = build_optim_wrapper(model, cfg, eps_shift=dict(eps=0.1, mode=mode))
    w0 = model.conv.weight.detach().clone()
    grad_r = autograd_grad(w0, family, 0.1, cfg['weight_decay'])
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    wrapper.step()
    if mode == 'decoupled' or opt == 'SGD':
        expected = w0 - cfg['lr'] * grad_r
    else:  # coupled Adam(W): the optimizer's own update of the gradient ∇R
        ref = w0.clone().requires_grad_(True)
        ref.grad = grad_r
        ref_opt = getattr(torch.optim, opt)([ref], lr=cfg['lr'], weight_decay=0.)
        ref_opt.step()
        expected = ref.detach()
    torch.testing.assert_close(model.conv.weight.detach(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('mode,opt,plain', [
    ('coupled', 'SGD', dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.05)),
    ('coupled', 'Adam', dict(type='Adam', lr=0.01, weight_decay=0.05)),
    ('decoupled', 'AdamW', dict(type='AdamW', lr=0.01, weight_decay=0.05)),
])
def test_eps_zero_reproduces_plain_weight_decay_trajectory(mode, opt, plain):
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 6, 6, dtype=torch.float64), torch.randint(0, 2, (8, ))
    models = [TinyNet('ws').double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    ours = build_optim_wrapper(models[0], OPTIMIZERS[opt], eps_shift=dict(eps=0., mode=mode))
    ref_groups = [
        {'params': [models[1].conv.weight, models[1].head.weight, models[1].fc.weight,
                    models[1].bn.weight]},
        # mmengine's rules give every bias, BN's too, bias_decay_mult (ours defaults to 0)
        {'params': [models[1].conv.bias, models[1].bn.bias, models[1].head.bias,
                    models[1].fc.bias],
         'weight_decay': 0.},
    ]
    ref = getattr(torch.optim, opt)(ref_groups, **{k: v for k, v in plain.items() if k != 'type'})
    for _ in range(20):
        for model, step in ((models[0], ours.update_params), (models[1], None)):
            loss = nn.functional.cross_entropy(model(x), y)
            if step is not None:
                step(loss)
            else:
                ref.zero_grad()
                loss.backward()
                ref.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize('family', ['wn', 'ws'])
def test_theorem1_decay_equals_rescaled_learning_rate(family):
    """Plain SGD with decay λ and SGD without decay at lr η d_q, d_q = 1/(p_q² (1 - λη)),
    p_{q+1} = (1 - λη) p_q, reach the same normalized weights step by step (Eq. 17-20)."""
    torch.manual_seed(0)
    lam, eta = 0.05, 0.2
    conv_a = CONVS[family](3, 6, 3, eps=0.).double()
    conv_b = CONVS[family](3, 6, 3, eps=0.).double()
    conv_b.load_state_dict(conv_a.state_dict())
    x = torch.randn(4, 3, 7, 7, dtype=torch.float64)
    target = torch.randn(4, 6, 5, 5, dtype=torch.float64)
    decayed = build_optim_wrapper(conv_a, dict(type='SGD', lr=eta, weight_decay=lam),
                                  eps_shift=dict(eps=0.), custom_keys={'bias': dict(lr_mult=0.)})
    rescaled = torch.optim.SGD([conv_b.weight], lr=eta)
    p = 1.
    for _ in range(30):
        decayed.update_params((conv_a(x) - target).square().mean())
        rescaled.param_groups[0]['lr'] = eta / (p**2 * (1 - lam * eta))
        rescaled.zero_grad()
        (conv_b(x) - target).square().mean().backward()
        rescaled.step()
        p *= 1 - lam * eta
        torch.testing.assert_close(conv_a.normalize(conv_a.weight),
                                   conv_b.normalize(conv_b.weight), rtol=1e-8, atol=1e-10)
    assert conv_a.weight.norm() < 0.8 * conv_b.weight.norm()  # decay did shrink W itself


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('eps', [0., 0.02])
def test_global_minimum(family, eps):
    """With zero task loss the ε-shifted term drives ||W|| (WN) to ε and (m, v) (WS) or
    (m, ||W - m||) (CWN) to (0, ε); plain L2 (ε = 0) drives them to 0."""
    torch.manual_seed(0)
    conv = CONVS[family](4, 5, 3).double()
    with torch.no_grad():
        conv.weight.add_(0.3)
    wrapper = build_optim_wrapper(conv, dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.5),
                                  eps_shift=dict(eps=eps))
    for _ in range(2000):
        for p in conv.parameters():
            p.grad = torch.zeros_like(p)
        wrapper.step()
    f = conv.weight.detach().reshape(5, -1)
    if family == 'wn':
        torch.testing.assert_close(f.norm(dim=1), torch.full((5, ), eps, dtype=f.dtype))
        return
    torch.testing.assert_close(f.mean(1), torch.zeros(5, dtype=f.dtype))
    spread = f.std(1, unbiased=False) if family == 'ws' else (f - f.mean(1, True)).norm(dim=1)
    torch.testing.assert_close(spread, torch.full((5, ), eps, dtype=f.dtype))


#: The authors' LSGD (classification/imagenet_fast.py) as published, as the B2 benchmark runs it:
#: ``λ((1 - ε/std)(W - mean) + mean)`` with torch's default (unbiased) std added to the gradient
#: of every 4-D weight with ``size(1) != 1`` before the momentum update, plain decay elsewhere.
AuthorsLSGD = load_script('benchmarks/b2_optimizer_step.py').LSGDLoop


def _trajectories(std: str, steps: int = 4):
    """Our constructor's SGD (std option ``std``) and the authors' LSGD on the same net."""
    torch.manual_seed(0)
    ours = nn.Sequential(CONVS['ws'](3, 6, 3, bias=False), nn.Flatten(), nn.LazyLinear(2))
    ours(torch.randn(1, 3, 5, 5))
    ours = ours.double()
    theirs = nn.Sequential(CONVS['ws'](3, 6, 3, bias=False), nn.Flatten(), nn.Linear(54, 2))
    theirs = theirs.double()
    theirs.load_state_dict(ours.state_dict())
    lr, lam, eps = 0.1, 0.05, 0.2
    wrapper = build_optim_wrapper(ours, dict(type='SGD', lr=lr, momentum=0.9, weight_decay=lam),
                                  eps_shift=dict(eps=eps, std=std), bias_decay_mult=1.)
    lsgd = AuthorsLSGD(theirs.parameters(), lr, 0.9, lam, eps)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    for _ in range(steps):
        wrapper.update_params(ours(x).square().mean())
        theirs(x).square().mean().backward()
        lsgd.step()
        lsgd.zero_grad()
    return ours[0].weight.detach(), theirs[0].weight.detach()


def test_unbiased_std_option_reproduces_the_authors_lsgd():
    ours, theirs = _trajectories('unbiased')
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


def test_population_std_differs_from_lsgd_only_by_the_std_in_the_eps_term():
    """One step from the same state: ours - theirs = lr λ ε (1/v - 1/s_u)(W - m), exactly."""
    ours, theirs = _trajectories('population', steps=1)
    torch.manual_seed(0)
    w0 = nn.Sequential(CONVS['ws'](3, 6, 3, bias=False))[0].weight.detach().double()
    f = w0.flatten(1)
    centered = f - f.mean(1, keepdim=True)
    v, s_u = f.std(1, unbiased=False, keepdim=True), f.std(1, keepdim=True)
    expected = 0.1 * 0.05 * 0.2 * (1 / v - 1 / s_u) * centered
    torch.testing.assert_close((ours - theirs).flatten(1), expected, rtol=1e-9, atol=1e-15)
    assert expected.abs().max() > 1e-6
