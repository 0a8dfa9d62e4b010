"""B2: the cost of the ε-shifted term in the optimizer step.

One ``optimizer.step()`` over the parameters of a WS-ResNet-50 / -101 backbone with fixed random
gradients. Candidates, each with its own copy of the parameters:

- ``sgd_wd`` (baseline): plain ``torch.optim.SGD`` (momentum 0.9, weight_decay 1e-4), one group.
- ``eps_sgd``: the optimizer ``EpsShiftedOptimWrapperConstructor`` builds (SGD momentum 0.9,
  ε-shifted term on the WS weights, coupled) - the thing the goal is about - as it runs in
  training: after a forward pass (untimed: every WS layer normalizes its weight). The forward
  leaves nothing for the step, which computes its unit filters from the weights.
- ``eps_sgd_cold``: the same step without a forward since the last update: equal to ``eps_sgd``
  (the check that no forward state is read).
- ``eps_groups_no_term``: the constructor's groups in a plain SGD, without the term (where the
  time goes).
- ``adamw`` / ``eps_adamw``: plain AdamW and the constructor's AdamW with the decoupled term.
- ``lsgd_loop``: anchor, the authors' LSGD style: a Python loop over tensors that adds the term
  to each 4-D weight's gradient and does the momentum update tensor by tensor.

    python benchmarks/b2_optimizer_step.py [--quick] [--device cuda]
"""
import copy

import torch
from torch import nn

from _common import Report, build_backbone, build_optim_wrapper, paired_ratio, start

LR, MOMENTUM, WD, EPS = 0.01, 0.9, 1e-4, 1e-3
ADAMW = dict(lr=1e-4, weight_decay=0.05)


class LSGDLoop(torch.optim.Optimizer):
    """The authors' LSGD, in their style: per tensor, in Python, the ε-shifted gradient
    ``wd * ((1 - eps/std) (W - mean) + mean)`` for every 4-D weight with ``size(1) != 1``
    (selected by rank), plain decay for the rest, then momentum SGD tensor by tensor."""

    def __init__(self, params, lr, momentum, weight_decay, eps):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            wd, momentum, eps = group['weight_decay'], group['momentum'], group['eps']
            for p in group['params']:
                if p.grad is None:
                    continue
                d_p = p.grad
                if p.dim() == 4 and p.size(1) != 1:
                    w = p.view(p.size(0), -1)
                    mean = w.mean(dim=1, keepdim=True)
                    std = w.std(dim=1, keepdim=True)
                    d_p = d_p.add(((1 - eps / std) * (w - mean) + mean).view_as(p), alpha=wd)
                elif wd != 0:
                    d_p = d_p.add(p, alpha=wd)
                state = self.state[p]
                if 'momentum_buffer' not in state:
                    buf = state['momentum_buffer'] = torch.clone(d_p).detach()
                else:
                    buf = state['momentum_buffer']
                    buf.mul_(momentum).add_(d_p)
                p.add_(buf, alpha=-group['lr'])


def forward_statistics(model: nn.Module):
    """What a training forward pass does to the WS weights (normalize them with autograd),
    without the convolutions: run untimed before a timed step."""
    convs = [m for m in model.modules() if getattr(m, 'norm_family', None)]

    def run():
        for m in convs:
            m.normalized_weight()
    return run


def extra_args(parser):
    parser.add_argument('--depths', type=int, nargs='+', default=None,
                        help='ResNet depths (default 50 101; 50 with --quick)')


def main(argv=None):
    args, env = start(__doc__.splitlines()[0], extra_args, argv)
    report = Report('B2', 'optimizer step: SGD + ε-shifted term (constructor) vs plain SGD+wd',
                    args, env, goal='eps_sgd <= 1.10x sgd_wd')
    device = args.device
    depths = args.depths or ([50] if args.quick else [50, 101])
    inner = 10 if device.startswith('cuda') else 1
    sgd = dict(type='SGD', lr=LR, momentum=MOMENTUM, weight_decay=WD)
    for depth in depths:
        torch.manual_seed(0)
        base = build_backbone('WSResNet', depth).to(device)
        for p in base.parameters():
            p.grad = torch.randn_like(p) * 1e-3

        def clone():
            model = copy.deepcopy(base)
            for p, q in zip(model.parameters(), base.parameters()):
                p.grad = q.grad.clone()
            return model

        eps_model, adamw_model = clone(), clone()
        coupled, decoupled = dict(eps=EPS, mode='coupled'), dict(eps=EPS, mode='decoupled')
        opts = {
            'sgd_wd': torch.optim.SGD(clone().parameters(), lr=LR, momentum=MOMENTUM,
                                      weight_decay=WD),
            'eps_sgd': build_optim_wrapper(eps_model, sgd, coupled).optimizer,
            'eps_sgd_cold': build_optim_wrapper(clone(), sgd, coupled).optimizer,
            'eps_groups_no_term': torch.optim.SGD(
                build_optim_wrapper(clone(), sgd, coupled).optimizer.param_groups),
        }
        opts['adamw'] = torch.optim.AdamW(clone().parameters(), **ADAMW)
        adamw = dict(type='AdamW', **ADAMW)
        opts['eps_adamw'] = build_optim_wrapper(adamw_model, adamw, decoupled).optimizer
        opts['lsgd_loop'] = LSGDLoop(clone().parameters(), LR, MOMENTUM, WD, EPS)
        n_params = sum(p.numel() for p in base.parameters())
        n_groups = len(opts['eps_sgd'].param_groups)
        print(f'B2 WS-ResNet-{depth}: {n_params / 1e6:.1f}M parameters, constructor groups: '
              f'{n_groups}', flush=True)
        timings = report.time({k: o.step for k, o in opts.items()}, 'sgd_wd', 25, warmup=3,
                              inner=inner, label=f'B2 R{depth}',
                              prepare={'eps_sgd': forward_statistics(eps_model),
                                       'eps_adamw': forward_statistics(adamw_model)})
        report.add(f'WS-ResNet-{depth}', timings, 'sgd_wd', goal_for='eps_sgd', goal_max=1.10,
                   labels={'sgd_wd': 'SGD+wd (plain)',
                           'eps_sgd': 'SGD + ε-shift (constructor), after forward',
                           'eps_sgd_cold': 'SGD + ε-shift, no forward since update',
                           'eps_groups_no_term': 'constructor groups, term off',
                           'adamw': 'AdamW (plain)', 'eps_adamw': 'AdamW + ε-shift decoupled',
                           'lsgd_loop': 'anchor: per-tensor loop (LSGD)'},
                   params=n_params, param_groups=n_groups)
        vs_adamw = paired_ratio(timings['eps_adamw']['times'], timings['adamw']['times'])['ratio']
        report.note(f'R{depth}: eps_adamw / adamw (paired median) = {vs_adamw:.3f}x')
        report.rows[-1]['eps_adamw_vs_adamw'] = vs_adamw
        del opts
    report.finish()
    return report


if __name__ == '__main__':
    main()
