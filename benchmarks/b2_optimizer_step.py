"""B2: the cost of the ε-shifted term in the optimizer step.

One ``optimizer.step()`` over the parameters of a WS-ResNet-50 / -101 backbone with fixed random
gradients. Candidates, each with its own copy of the parameters:

- ``sgd_wd`` (baseline): plain ``torch.optim.SGD`` (momentum 0.9, weight_decay 1e-4), one group.
- ``eps_sgd``: the optimizer ``EpsShiftedOptimWrapperConstructor`` builds (SGD momentum 0.9,
  ε-shifted term on the WS weights, coupled) - the thing the goal is about - as it runs in
  training: after a forward pass. The WS layers compute each weight's unit filters while
  normalizing it in the forward (that cost belongs to the forward and is in B1/B3); the step
  reuses them (``filter_stats``). Before each timed step, untimed, every WS layer normalizes its
  weight as the forward does.
- ``eps_sgd_cold``: the same step without a forward since the last update, so the step computes
  the unit filters itself (the worst case: e.g. a step on weights no forward used).
- ``eps_groups_no_term``: the same groups with the term's hook removed (where the time goes).
- ``adamw`` / ``eps_adamw``: plain AdamW and the constructor's AdamW with the decoupled term.
- ``lsgd_loop``: anchor, the authors' LSGD style: a Python loop over tensors that adds the term
  to each 4-D weight's gradient and does the momentum update tensor by tensor.

Without mmdet (the GPU machine) the backbone is ``_torch_only.TorchResNet`` with the package's
WSConv and the constructor's three groups are rebuilt by hand (WS weights: ε-shifted, their λW
left to the optimizer's own decay as the constructor does; BN weights: decay; biases: no
decay); the hook is the package's ``EpsShiftStep``.

    python benchmarks/b2_optimizer_step.py [--quick] [--device cuda]
"""
import copy
import os.path as osp
import statistics
import sys

import torch
from torch import nn

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import Report, interleaved, rounds_for, start, warmup_for  # noqa: E402
from _torch_only import TorchResNet  # noqa: E402

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


def build_backbone(depth: int, pkg, device: str) -> nn.Module:
    if pkg.torch_only:
        return TorchResNet(depth, conv=pkg.WSConv).to(device)
    from mmdet.registry import MODELS
    return MODELS.build(dict(type='WSResNet', depth=depth, norm_eval=False)).to(device)


def eps_optimizer(model: nn.Module, pkg, optimizer: dict, mode: str) -> torch.optim.Optimizer:
    """The constructor's optimizer (with mmdet), or the same groups and hook by hand."""
    if not pkg.torch_only:
        from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
        constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
            type='EpsShiftedOptimWrapperConstructor',
            optim_wrapper_cfg=dict(type='OptimWrapper', optimizer=optimizer),
            paramwise_cfg=dict(eps_shift=dict(eps=EPS, mode=mode))))
        return constructor(model).optimizer
    reg = pkg.regularizer
    kwargs = {k: v for k, v in optimizer.items() if k != 'type'}
    wd = kwargs['weight_decay']
    ws_weights = [m.weight for m in model.modules() if getattr(m, 'norm_family', None)]
    ids = {id(p) for p in ws_weights}
    decayed, biases = [], []
    for name, p in model.named_parameters():
        if id(p) in ids:
            continue
        (biases if name.endswith('bias') else decayed).append(p)
    groups = [
        {'params': ws_weights, 'weight_decay': wd, reg.FAMILY_KEY: 'ws', reg.LAMBDA_KEY: wd,
         reg.EPS_KEY: EPS, reg.MODE_KEY: mode},
        {'params': decayed},
        {'params': biases, 'weight_decay': 0.},
    ]
    opt = getattr(torch.optim, optimizer['type'])(groups, **kwargs)
    opt.register_step_pre_hook(reg.EpsShiftStep())
    return opt


def forward_statistics(model: nn.Module):
    """What a training forward pass does to the WS weights (normalize them with autograd,
    recording their unit filters), without the convolutions: run untimed before a timed step."""
    convs = [m for m in model.modules() if getattr(m, 'norm_family', None)]

    def run():
        for m in convs:
            m.normalized_weight()
    return run


def paired(times_a, times_b) -> float:
    return statistics.median(a / b for a, b in zip(times_a, times_b))


def extra_args(parser):
    parser.add_argument('--depths', type=int, nargs='+', default=None,
                        help='ResNet depths (default 50 101; 50 with --quick)')


def main(argv=None):
    args, env, pkg = start(__doc__.splitlines()[0], extra_args, argv)
    report = Report('B2', 'optimizer step: SGD + ε-shifted term (constructor) vs plain SGD+wd',
                    args, env, goal='eps_sgd <= 1.20x sgd_wd')
    device = args.device
    depths = args.depths or ([50] if args.quick else [50, 101])
    rounds = rounds_for(args, default=25, quick=2)
    inner = 10 if device.startswith('cuda') else 1
    sgd = dict(type='SGD', lr=LR, momentum=MOMENTUM, weight_decay=WD)
    for depth in depths:
        torch.manual_seed(0)
        base = build_backbone(depth, pkg, device)
        for p in base.parameters():
            p.grad = torch.randn_like(p) * 1e-3

        def clone():
            model = copy.deepcopy(base)
            for p, q in zip(model.parameters(), base.parameters()):
                p.grad = q.grad.clone()
            return model

        eps_model = clone()
        opts = {
            'sgd_wd': torch.optim.SGD(clone().parameters(), lr=LR, momentum=MOMENTUM,
                                      weight_decay=WD),
            'eps_sgd': eps_optimizer(eps_model, pkg, sgd, 'coupled'),
            'eps_sgd_cold': eps_optimizer(clone(), pkg, sgd, 'coupled'),
        }
        adamw_model = clone()
        no_term = eps_optimizer(clone(), pkg, sgd, 'coupled')
        no_term._optimizer_step_pre_hooks.clear()
        opts['eps_groups_no_term'] = no_term
        opts['adamw'] = torch.optim.AdamW(clone().parameters(), **ADAMW)
        opts['eps_adamw'] = eps_optimizer(adamw_model, pkg, dict(type='AdamW', **ADAMW),
                                          'decoupled')
        opts['lsgd_loop'] = LSGDLoop(clone().parameters(), LR, MOMENTUM, WD, EPS)
        n_params = sum(p.numel() for p in base.parameters())
        n_groups = len(opts['eps_sgd'].param_groups)
        print(f'B2 WS-ResNet-{depth}: {n_params / 1e6:.1f}M parameters, constructor groups: '
              f'{n_groups}', flush=True)
        timings = interleaved({k: o.step for k, o in opts.items()}, 'sgd_wd', rounds,
                              warmup=warmup_for(args, 3), device=device, inner=inner,
                              label=f'B2 R{depth}',
                              prepare={'eps_sgd': forward_statistics(eps_model),
                                       'eps_adamw': forward_statistics(adamw_model)})
        report.add(f'WS-ResNet-{depth}', timings, 'sgd_wd', goal_for='eps_sgd', goal_max=1.20,
                   labels={'sgd_wd': 'SGD+wd (plain)',
                           'eps_sgd': 'SGD + ε-shift (constructor), after forward',
                           'eps_sgd_cold': 'SGD + ε-shift, no forward since update',
                           'eps_groups_no_term': 'constructor groups, term off',
                           'adamw': 'AdamW (plain)', 'eps_adamw': 'AdamW + ε-shift decoupled',
                           'lsgd_loop': 'anchor: per-tensor loop (LSGD)'},
                   params=n_params, param_groups=n_groups)
        vs_adamw = paired(timings['eps_adamw']['times'], timings['adamw']['times'])
        report.note(f'R{depth}: eps_adamw / adamw (paired median) = {vs_adamw:.3f}x')
        report.rows[-1]['eps_adamw_vs_adamw'] = vs_adamw
        del opts
    report.finish()
    return report


if __name__ == '__main__':
    main()
