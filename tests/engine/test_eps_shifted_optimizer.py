"""The ε-shifted optimizers: the term inside the base optimizer's ``step``, with the base's hooks,
schedulers, closures, state dicts, copies and pickles, and after a ``torch.compile``."""
import copy
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from mmdet_eps.engine.optimizers import (
    EpsShiftedOptimizer,
    eps_shifted_class,
    eps_shifted_grad,
    make_eps_shifted,
)
from tests.conftest import REPO, needs_dynamo

LAM, EPS, LR = 0.1, 0.5, 0.1


def _param(seed: int = 0) -> nn.Parameter:
    torch.manual_seed(seed)
    p = nn.Parameter(torch.randn(4, 3, 3, 3, dtype=torch.float64))
    p.grad = torch.randn_like(p)
    return p


def _groups(p: nn.Parameter, mode: str = 'coupled') -> list:
    return [dict(params=[p], eps_shift_family='ws', eps_shift_lambda=LAM, eps_shift_eps=EPS,
                 eps_shift_mode=mode, weight_decay=0.)]


def test_one_class_per_base_a_subclass_of_it():
    cls = eps_shifted_class(torch.optim.SGD)
    assert cls is eps_shifted_class(torch.optim.SGD) and eps_shifted_class(cls) is cls
    assert issubclass(cls, torch.optim.SGD) and issubclass(cls, EpsShiftedOptimizer)
    assert cls.__name__ == 'EpsShiftedSGD'
    with pytest.raises(TypeError, match='Optimizer subclass'):
        eps_shifted_class(nn.Linear)


def test_step_is_the_term_then_the_base_update_with_hooks_and_schedulers():
    p, q = _param(), _param()
    opt = make_eps_shifted(torch.optim.SGD(_groups(p), lr=LR, momentum=0.9))
    calls = []
    opt.register_step_pre_hook(lambda *_: calls.append('pre'))
    opt.register_step_post_hook(lambda *_: calls.append('post'))
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    expected = q.detach() - LR * (q.grad + eps_shifted_grad(q, 'ws', EPS, LAM))
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no "lr_scheduler.step() before optimizer.step()"
        opt.step()
        scheduler.step()
    assert calls == ['pre', 'post']
    torch.testing.assert_close(p.detach(), expected)
    assert opt.param_groups[0]['lr'] == LR / 2


def test_turning_an_optimizer_after_a_scheduler_wrapped_it_is_refused():
    opt = torch.optim.SGD(_groups(_param()), lr=LR)
    torch.optim.lr_scheduler.StepLR(opt, 1)
    with pytest.raises(ValueError, match='already wrapped'):
        make_eps_shifted(opt)


def test_closure_runs_first_then_the_term_on_its_gradients():
    p, q = _param(), _param()
    opt = make_eps_shifted(torch.optim.SGD(_groups(p), lr=LR))

    def closure():
        opt.zero_grad()
        loss = p.square().sum()
        loss.backward()
        return loss

    w = q.detach().clone()
    loss = opt.step(closure)
    assert loss.item() == pytest.approx(w.square().sum().item())
    torch.testing.assert_close(p.detach(), w - LR * (2 * w + eps_shifted_grad(w, 'ws', EPS, LAM)))


class _NoGradSGD(torch.optim.Optimizer):
    """A third-party style optimizer: ``@torch.no_grad()`` instead of torch's wrapper."""

    def __init__(self, params, lr):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group['params']:
                p.add_(p.grad, alpha=-group['lr'])


@pytest.mark.parametrize('mode', ['coupled', 'decoupled'])
@pytest.mark.parametrize('base', [torch.optim.SGD, _NoGradSGD])
def test_any_base_optimizer_gets_the_term_in_both_modes(base, mode):
    p, q = _param(), _param()
    opt = make_eps_shifted(base(_groups(p, mode), lr=LR))
    opt.step()
    torch.testing.assert_close(
        p.detach(), q.detach() - LR * (q.grad + eps_shifted_grad(q, 'ws', EPS, LAM)))
    assert not p.grad.requires_grad


@pytest.mark.parametrize('clone', [copy.deepcopy, lambda o: pickle.loads(pickle.dumps(o))],
                         ids=['deepcopy', 'pickle'])
def test_copies_keep_the_term(clone):
    """torch's ``__getstate__`` keeps no hooks: a term in a step pre-hook would vanish here."""
    p, q = _param(), _param()
    opt = clone(make_eps_shifted(torch.optim.SGD(_groups(p), lr=LR, momentum=0.9)))
    assert type(opt) is eps_shifted_class(torch.optim.SGD)
    copied = opt.param_groups[0]['params'][0]
    copied.grad = q.grad.clone()  # a copied Parameter has no gradient
    expected = q.detach() - LR * (q.grad + eps_shifted_grad(q, 'ws', EPS, LAM))
    opt.step()
    torch.testing.assert_close(copied.detach(), expected)


def test_state_dict_is_the_base_optimizers():
    """Checkpoints of plain and ε-shifted optimizers load into each other (resume either way)."""
    p = _param()
    eps_opt = make_eps_shifted(torch.optim.SGD(_groups(p), lr=LR, momentum=0.9))
    eps_opt.step()
    plain = torch.optim.SGD(_groups(_param(1)), lr=LR, momentum=0.9)
    plain.load_state_dict(eps_opt.state_dict())
    torch.testing.assert_close(plain.state_dict()['state'][0]['momentum_buffer'],
                               eps_opt.state[p]['momentum_buffer'])
    fresh = make_eps_shifted(torch.optim.SGD(_groups(_param(1)), lr=LR, momentum=0.9))
    fresh.load_state_dict(plain.state_dict())
    assert fresh.state_dict()['param_groups'] == eps_opt.state_dict()['param_groups']


@needs_dynamo
def test_the_term_runs_after_the_first_compile_in_a_process():
    """torch < 2.3 strips the step wrapper of every torch.optim class at the first
    torch.compile (step hooks stop); the term, part of the subclass's step, keeps running."""
    code = (
        'import torch\n'
        'from mmdet_eps.engine.optimizers import eps_shifted_grad, make_eps_shifted\n'
        "torch.compile(lambda x: x.sin() + 1, backend='aot_eager')(torch.randn(3))\n"
        'p = torch.nn.Parameter(torch.randn(4, 3, 3, 3, dtype=torch.float64))\n'
        'p.grad = torch.zeros_like(p)\n'
        "opt = make_eps_shifted(torch.optim.SGD([dict(params=[p], eps_shift_family='ws', "
        "eps_shift_lambda=0.1, eps_shift_eps=0.5, eps_shift_mode='coupled')], lr=1.))\n"
        'w = p.detach().clone()\n'
        'opt.step()\n'
        "print(float((p.detach() - (w - eps_shifted_grad(w, 'ws', 0.5, 0.1))).abs().max()))")
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) < 1e-12
