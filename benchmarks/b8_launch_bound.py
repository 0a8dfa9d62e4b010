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
import os.path as osp
import sys

import torch
from torch import nn

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import Report, interleaved, parse_size, rounds_for, start, warmup_for  # noqa: E402
from _torch_only import MMCVStyleConvWS2d, TorchResNet  # noqa: E402

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


def build(name: str, pkg, depth: int, width: int, frozen: int) -> nn.Module:
    """The backbone of candidate ``name``."""
    group_by = {'ws_eps_stage': 'stage', 'ws_eps_per_conv': None}.get(name, 'auto')
    fused = False if name in ('ws_eps_torch', 'ws_eps_autograd') else None
    if pkg.torch_only:
        conv = {'plain': nn.Conv2d, 'mmcv_convws': MMCVStyleConvWS2d}.get(name, pkg.WSConv)
        model = TorchResNet(depth, conv, width)
        stages = [model.layer1, model.layer2, model.layer3, model.layer4]
        regions = {'stage': [(model, [model.conv1, model.layer1])] + stages[1:],
                   'auto': [model], None: []}[group_by]  # 'auto' in one process: 'backbone'
        model.filter_groups = pkg.group_normalized_convs(regions, fused)
        for module in model.modules():
            if fused is not None and hasattr(module, 'fused'):
                module.fused = fused
        if frozen >= 0:  # as mmdet's ResNet._freeze_stages: the stem, then stages 1..frozen
            for module in [model.conv1, model.bn1] + stages[:frozen]:
                module.eval().requires_grad_(False)
        return model
    from mmdet.registry import MODELS
    common = dict(depth=depth, base_channels=width, norm_eval=False, frozen_stages=frozen)
    if name == 'plain':
        return MODELS.build(dict(type='ResNet', **common))
    if name == 'mmcv_convws':
        return MODELS.build(dict(type='ResNet', conv_cfg=dict(type='ConvWS'), **common))
    return MODELS.build(dict(type='WSResNet', group_by=group_by, fused=fused, **common))


def optimizer(name: str, model: nn.Module, pkg) -> torch.optim.Optimizer:
    eps = name.startswith('ws_eps')
    if pkg.torch_only:
        params = [p for p in model.parameters() if p.requires_grad]
        kwargs = {k: v for k, v in SGD.items() if k != 'type'}
        if not eps:
            return torch.optim.SGD(params, **kwargs)
        reg = pkg.regularizer
        ws = [m.weight for m in model.modules()
              if getattr(m, 'norm_family', None) and m.weight.requires_grad]
        ids = {id(p) for p in ws}
        rest = [p for p in params if id(p) not in ids]
        opt = torch.optim.SGD([{'params': ws, reg.FAMILY_KEY: 'ws', reg.LAMBDA_KEY: SGD[
            'weight_decay'], reg.EPS_KEY: EPS, reg.MODE_KEY: 'coupled'}, {'params': rest}],
            **kwargs)
        opt.register_step_pre_hook(reg.EpsShiftStep())
        return opt
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
    cfg = dict(type='EpsShiftedOptimWrapperConstructor' if eps else
               'DefaultOptimWrapperConstructor',
               optim_wrapper_cfg=dict(type='OptimWrapper', optimizer=SGD))
    if eps:
        cfg['paramwise_cfg'] = dict(eps_shift=dict(eps=EPS))
    return OPTIM_WRAPPER_CONSTRUCTORS.build(cfg)(model).optimizer


@contextlib.contextmanager
def autograd_backward(pkg):
    """Eager torch ops run the traceable expression (autograd derives its backward)."""
    module = pkg.filter_normalize
    select = module.select_impl
    module.select_impl = lambda *args: (module.Impl.TRACEABLE if select(*args) is
                                        module.Impl.TORCH else select(*args))
    try:
        yield
    finally:
        module.select_impl = select


def iteration(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, pkg,
              autograd: bool = False):
    def run():
        with autograd_backward(pkg) if autograd else contextlib.nullcontext():
            sum(o.float().mean() for o in model(x)).backward()
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
    args, env, pkg = start(__doc__.splitlines()[0], extra_args, argv)
    from mmdet_eps.utils.op_count import count_ops
    report = Report('B8', f'thin ResNet-{args.depth} iteration (launch-bound): ops and time',
                    args, env, goal='ws_eps adds <= 200 ops and <= 1.10x at frozen_stages=-1')
    for frozen in args.frozen:
        torch.manual_seed(0)
        models = {name: build(name, pkg, args.depth, args.width, frozen).to(args.device)
                  for name in LABELS}
        state = models['plain'].state_dict()
        fns, ops = {}, {}
        x = torch.randn(args.batch, 3, *parse_size(args.size), device=args.device)
        for name, model in models.items():
            model.load_state_dict(state)
            model.train()
            fns[name] = iteration(model, optimizer(name, model, pkg), x, pkg,
                                  autograd=name == 'ws_eps_autograd')
            fns[name]()  # momentum buffers exist before counting
            ops[name] = count_ops(fns[name]).total
        timings = interleaved(fns, 'plain', rounds_for(args, 40), warmup=warmup_for(args, 5),
                              device=args.device, inner=1 if args.quick else 5,
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
