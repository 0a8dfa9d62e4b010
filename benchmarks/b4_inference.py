"""B4: eval-mode inference (``torch.no_grad``) of a WS backbone vs plain, and of the baked one.

ResNet-50 backbones in eval mode, batch 2, 320x320 and 512x512:

- ``plain`` (baseline): mmdet's ResNet-50, plain convs.
- ``ws``: ``WSResNet-50``; in eval mode under no_grad each stage standardizes its weights in every
  forward, grouped and without autograd (nothing is cached, so every write to a weight is seen).
- ``baked``: the WS backbone after ``tools/model_converters/bake_ws.py``'s ``bake_module`` (plain
  ``nn.Conv2d`` holding the standardized weights) - what a deployed model runs.

BN running statistics are first calibrated on random inputs (a fresh WS backbone with default
running stats overflows), then copied, so all three compute on realistic activations.

    python benchmarks/b4_inference.py [--quick] [--device cuda]
"""
import copy

import torch
from torch import nn

from _common import Report, build_backbone, load_tool, rel_err, start


@torch.no_grad()
def calibrate_bn(model: nn.Module, size: int, device: str) -> None:
    """Cumulative BN running statistics from a few random batches, then eval mode."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    gen = torch.Generator(device='cpu').manual_seed(0)
    for _ in range(3):
        model(torch.randn(2, 3, size, size, generator=gen).to(device))
    model.eval()


def build(device: str, calib_size: int):
    plain, ws = build_backbone('ResNet'), build_backbone('WSResNet')
    ws.load_state_dict(plain.state_dict())
    plain, ws = plain.to(device), ws.to(device)
    calibrate_bn(plain, calib_size, device)
    calibrate_bn(ws, calib_size, device)
    baked = copy.deepcopy(ws)
    n = len(load_tool('model_converters/bake_ws').bake_module(baked))
    baked.eval()
    return dict(plain=plain, ws=ws, baked=baked), n


def extra_args(parser):
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--sizes', type=int, nargs='+', default=None)


def main(argv=None):
    args, env = start(__doc__.splitlines()[0], extra_args, argv)
    report = Report('B4', 'eval inference (no_grad): WS and baked vs plain', args, env,
                    goal='ws and baked: 1.00x within noise')
    sizes = args.sizes or ([64] if args.quick else [320, 512])
    models, n_baked = build(args.device, min(sizes))
    report.note(f'baked {n_baked} WSConv into nn.Conv2d')
    with torch.no_grad():
        x = torch.randn(1, 3, min(sizes), min(sizes), device=args.device)
        ref = models['ws'](x)
        got = models['baked'](x)
        diff = max(rel_err(b, a) for a, b in zip(ref, got))
    report.note(f'baked vs WS outputs: max relative difference {diff:.2e}')
    for size in sizes:
        torch.manual_seed(0)
        x = torch.randn(args.batch, 3, size, size, device=args.device)

        def infer(model):
            def run():
                with torch.no_grad():
                    model(x)
            return run
        rounds = 40 if args.device.startswith('cuda') else (20 if size <= 320 else 12)
        timings = report.time({k: infer(m) for k, m in models.items()}, 'plain', rounds,
                              label=f'B4 {size}')
        report.add(f'batch {args.batch}, {size}x{size}', timings, 'plain',
                   labels={'plain': 'ResNet-50, plain convs',
                           'ws': 'WSResNet-50, eval (weights standardized per forward)',
                           'baked': 'WSResNet-50 baked by tools/model_converters/bake_ws.py'},
                   batch=args.batch, size=size)
    report.finish()
    return report


if __name__ == '__main__':
    main()
