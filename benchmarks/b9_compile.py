"""B9: the compiled train step - WS-ResNet-50 + ε-shifted SGD vs ResNet-50 + SGD under inductor.

What mmengine's ``compile=True`` compiles: one function doing forward, loss, backward and the
optimizer step (the ε-shifted term traced into it), compiled with ``torch.compile`` (inductor),
in train mode (BN training, all stages trainable). Candidates, same
initial weights, each compiled once before timing:

- ``plain`` (baseline): mmdet's ResNet-50 + mmengine's default constructor (SGD, momentum 0.9,
  weight decay 1e-4).
- ``ws_eps``: ``WSResNet-50`` + ``EpsShiftedOptimWrapperConstructor``, defaults: on a CPU the
  fused ops as registered custom ops in the compiled graph (channels-last outputs, the layout
  of inductor's CPU convolutions), the normalization and the ε-term alike.
- ``ws_eps_torch_ops``: the same with ``fused=False`` (layers and step): plain torch ops (a
  filter shape's small weights concatenated, large ones alone), which inductor fuses itself:
  the path a GPU takes.

Cases: batch 2 at 320x320 (goal <= 1.05x, 20 rounds) and the B8 thin proxy
(``base_channels=4``, 32x32, goal <= 1.08x, 200 rounds). Reported besides the paired time
ratio: compile time (first call, cold: no inductor cache), graph breaks of the forward + loss
(``torch._dynamo.explain``; goal 0) and the kernels inductor generated
(``torch._inductor.metrics.generated_kernel_count``; the difference to ``plain`` is what the
normalization costs in kernels).

    python benchmarks/b9_compile.py [--quick] [--device cuda] [--cases full thin]
"""
import os
import time

import torch
from torch import nn

from _common import Report, backbone_loss, build_backbone, build_optim_wrapper, start

SGD = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4)
EPS = 1e-3
LABELS = {
    'plain': 'ResNet-50 + SGD, compiled',
    'ws_eps': 'WSResNet-50 + ε-shifted SGD, compiled',
    'ws_eps_torch_ops': '  same, fused=False (torch ops that inductor fuses: a GPU\'s path)',
}
#: case -> (base_channels, input size, batch, goal, timed rounds): the thin proxy's iterations
#: take milliseconds, so it gets more rounds for the same noise
CASES = {'full': (64, 320, 2, 1.05, 20), 'thin': (4, 32, 2, 1.08, 200)}


def build(name: str, width: int, device: str):
    """``(model, optimizer)`` of candidate ``name``."""
    if name == 'plain':
        model = build_backbone('ResNet', base_channels=width).to(device)
        return model, build_optim_wrapper(model, SGD).optimizer
    fused = False if name == 'ws_eps_torch_ops' else None
    model = build_backbone('WSResNet', base_channels=width, fused=fused).to(device)
    return model, build_optim_wrapper(model, SGD, dict(eps=EPS, fused=fused)).optimizer


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    backbone_loss(model, x).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def extra_args(parser):
    parser.add_argument('--cases', nargs='+', choices=list(CASES), default=list(CASES))
    parser.add_argument('--backend', default='inductor')


def main(argv=None):
    args, env = start(__doc__.splitlines()[0], extra_args, argv)
    import tempfile

    import torch._dynamo
    import torch._inductor.config
    from torch._inductor import metrics
    # cold compiles, as a user's first run: no FX graph cache, kernels built in a fresh folder
    torch._inductor.config.fx_graph_cache = False
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = tempfile.mkdtemp(prefix='b9_inductor_')
    report = Report('B9', 'compiled train step (forward, backward, step)', args, env,
                    goal='ws_eps <= 1.05x at 320x320, <= 1.08x on the thin proxy, 0 breaks')
    for case in args.cases:
        width, size, batch, goal, rounds = CASES[case]
        if args.quick:
            width, size = min(width, 8), min(size, 64)
        torch.manual_seed(0)
        x = torch.randn(batch, 3, size, size, device=args.device)
        built = {name: build(name, width, args.device) for name in LABELS}
        state = built['plain'][0].state_dict()
        fns, extra = {}, {}
        for name, (model, opt) in built.items():
            model.load_state_dict(state)
            torch._dynamo.reset()
            breaks = torch._dynamo.explain(backbone_loss)(model, x).graph_break_count
            torch._dynamo.reset()
            metrics.reset()
            step = torch.compile(train_step, backend=args.backend)
            start_time = time.perf_counter()
            step(model, opt, x)  # compiles forward, backward and the step
            compile_s = time.perf_counter() - start_time
            extra[name] = dict(graph_breaks=breaks, compile_s=round(compile_s, 1),
                               kernels=metrics.generated_kernel_count)
            fns[name] = (lambda s=step, m=model, o=opt: s(m, o, x))
            fns[name]()  # a second call: recompiles nothing
        timings = report.time(fns, 'plain', rounds, warmup=3, label=f'B9 {case}')
        for name, t in timings.items():
            t.update(extra[name])
            t['extra_kernels'] = extra[name]['kernels'] - extra['plain']['kernels']
        report.add(f'{case}: base_channels={width}, {batch}x{size}x{size}', timings, 'plain',
                   labels=LABELS, goal_for='ws_eps', goal_max=goal)
        report.note(f'{case}: ' + ', '.join(
            f'{n} compile {e["compile_s"]} s, {e["graph_breaks"]} graph breaks, '
            f'{e["kernels"]} kernels' for n, e in extra.items()))
        row = next(r for r in report.rows if r['case'] == report.rows[-1]['case']
                   and r['name'] == 'ws_eps')
        row['goal_met'] &= extra['ws_eps']['graph_breaks'] == 0
    report.finish()
    return report


if __name__ == '__main__':
    main()
