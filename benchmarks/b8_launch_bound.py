"""B8: the launch-bound regime - ops dispatched and time of a thin ResNet-50 training iteration.

On a GPU at 2 images per card, weight standardization costs what it dispatches, not what it
computes. A *thin* ResNet-50 (``base_channels=4``, batch 2, 32x32, one thread) does almost no
arithmetic, so on a CPU its time is per-op overhead too: the regime is reproduced here. One
iteration = forward + backward + SGD step (momentum 0.9, weight decay 1e-4, ``foreach=True`` for
every candidate so that the CPU dispatches what a GPU would), in train mode. Candidates, same
initial weights:

- ``plain`` (baseline): mmdet's ResNet-50, mmengine's default constructor.
- ``ws``: ``WSResNet`` (default ``group_by='auto'``: one process, so grouped over the whole
  backbone), default constructor (plain decay).
- ``ws_eps``: ``WSResNet`` + ``EpsShiftedOptimWrapperConstructor`` - the goal's candidate (on a
  CPU with the extension built: the fused ops, one op forward and one backward per region).
- ``ws_eps_torch``: the same with ``fused=False``: torch ops, what a GPU runs today.
- ``ws_eps_autograd``: the same torch ops with autograd's backward of the textbook expression
  (the traceable path, forced in eager mode) instead of the hand-written one: whether that
  backward pays.
- ``ws_eps_stage``: the same with ``group_by='stage'``, what ``'auto'`` gives a DDP run (one node
  per stage, so a stage's gradients can be all-reduced while earlier stages run backward).
- ``ws_eps_per_conv``: the same with ``group_by=None`` (every conv alone, as before grouping).
- ``mmcv_convws``: mmdet's ResNet with mmcv's ``ConvWS2d``, default constructor.

Each is run with ``frozen_stages`` -1 and 1 (mmdet's setting). Reported: aten ops per iteration
(a ``TorchDispatchMode`` counter, deterministic) and the paired time ratio.

    python benchmarks/b8_launch_bound.py [--quick] [--device cuda] [--size 32] [--width 4]
"""
import contextlib
from typing import Callable

import torch
from torch import nn

from _common import Report, backbone_loss, build_backbone, build_optim_wrapper, parse_size, start

SGD = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4, foreach=True)
EPS = 1e-3
LABELS = {
    'plain': 'ResNet-50, plain convs + SGD',
    'ws': 'WSResNet-50 (default grouping) + SGD',
    'ws_eps': 'WSResNet-50 + ε-shifted SGD (constructor)',
    'ws_eps_torch': "  same, fused=False (torch ops: a GPU's path)",
    'ws_eps_autograd': "  same, fused=False with autograd's backward (no hand-written one)",
    'ws_eps_stage': "  same, group_by='stage' (DDP's)",
    'ws_eps_per_conv': '  same, group_by=None (per conv)',
    'mmcv_convws': 'mmcv ConvWS2d + SGD',
}


def build(name: str, depth: int, width: int, frozen: int) -> nn.Module:
    """The backbone of candidate ``name``."""
    common = dict(depth=depth, base_channels=width, frozen_stages=frozen)
    if name in ('plain', 'mmcv_convws'):
        conv_cfg = dict(type='ConvWS') if name == 'mmcv_convws' else None
        return build_backbone('ResNet', conv_cfg=conv_cfg, **common)
    group_by = {'ws_eps_stage': 'stage', 'ws_eps_per_conv': None}.get(name, 'auto')
    fused = False if name in ('ws_eps_torch', 'ws_eps_autograd') else None
    return build_backbone('WSResNet', group_by=group_by, fused=fused, **common)


@contextlib.contextmanager
def autograd_backward():
    """Eager torch ops run the traceable expression (autograd derives its backward)."""
    from mmdet_eps.models.layers import filter_normalize as module
    select = module.select_impl
    module.select_impl = lambda *args: (module.Impl.TRACEABLE if select(*args) is
                                        module.Impl.TORCH else select(*args))
    try:
        yield
    finally:
        module.select_impl = select


def iteration(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
              autograd: bool = False) -> Callable[[], None]:
    def run():
        with autograd_backward() if autograd else contextlib.nullcontext():
            backbone_loss(model, x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return run


def extra_args(parser):
    parser.add_argument('--depth', type=int, default=50)
    parser.add_argument('--width', type=int, default=4, help='base_channels')
    parser.add_argument('--size', default='32', help='N or WxH')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--frozen', type=int, nargs='+', default=[-1, 1])
    parser.set_defaults(threads=1)


def main(argv=None):
    args, env = start(__doc__.splitlines()[0], extra_args, argv)
    from mmdet_eps.utils.op_count import count_ops
    report = Report('B8', f'thin ResNet-{args.depth} iteration (launch-bound): ops and time',
                    args, env, goal='ws_eps adds <= 200 ops and <= 1.10x at frozen_stages=-1')
    for frozen in args.frozen:
        torch.manual_seed(0)
        models = {name: build(name, args.depth, args.width, frozen).to(args.device)
                  for name in LABELS}
        state = models['plain'].state_dict()
        fns, ops = {}, {}
        x = torch.randn(args.batch, 3, *parse_size(args.size), device=args.device)
        for name, model in models.items():
            model.load_state_dict(state)
            model.train()
            eps_shift = dict(eps=EPS) if name.startswith('ws_eps') else None
            opt = build_optim_wrapper(model, SGD, eps_shift).optimizer
            fns[name] = iteration(model, opt, x, autograd=name == 'ws_eps_autograd')
            fns[name]()  # momentum buffers exist before counting
            ops[name] = count_ops(fns[name]).total
        timings = report.time(fns, 'plain', 40, warmup=5, inner=1 if args.quick else 5,
                              label=f'B8 frozen_stages={frozen}')
        for name, t in timings.items():
            t['ops'], t['extra_ops'] = ops[name], ops[name] - ops['plain']
        report.add(f'frozen_stages={frozen}', timings, 'plain', labels=LABELS,
                   goal_for='ws_eps' if frozen == -1 else None, goal_max=1.10,
                   frozen_stages=frozen)
        report.note(f'frozen_stages={frozen}: aten ops per iteration ' + ', '.join(
            f'{n} {o} ({o - ops["plain"]:+d})' for n, o in ops.items()))
        if frozen == -1:
            row = next(r for r in report.rows if r['case'] == report.rows[-1]['case']
                       and r['name'] == 'ws_eps')
            row['goal'] = '<= 200 extra ops, <= 1.10x'
            row['goal_met'] &= ops['ws_eps'] - ops['plain'] <= 200
    report.finish()
    return report


if __name__ == '__main__':
    main()
