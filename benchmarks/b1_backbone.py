"""B1: training cost of weight standardization in a ResNet-50 backbone.

Forward + backward of a ResNet-50 backbone in train mode (BN training, ``norm_eval=False``, all
stages trainable, the four stage outputs summed into the loss), batch 2, at 320x320 and 512x512.
Candidates, each its own model with the same initial weights:

- ``plain`` (baseline): mmdet's ResNet-50 with plain convs.
- ``ws``: mmdet_eps ``WSResNet`` (``WSConv``: unbiased std, eps on the std, fused backward).
- ``mmcv_convws``: mmdet's ResNet with ``conv_cfg=dict(type='ConvWS')`` (mmcv's ``ConvWS2d``).
- ``timm_stdconv``: anchor, a timm-style ``StdConv2d`` (``F.batch_norm`` on the weight viewed as
  ``(1, C_out, n)``: different numerics - biased variance, eps inside the sqrt).

Without mmdet (the GPU machine) the backbone is ``_torch_only.TorchResNet`` (same layout and
convs) with the package's WSConv, and the mmcv anchor is a copy of mmcv's ``conv_ws_2d``.

    python benchmarks/b1_backbone.py [--quick] [--device cuda] [--batch 2] [--sizes 320 1344x800]
"""
import os.path as osp
import sys

import torch
from torch import nn

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import Report, interleaved, parse_size, rounds_for, start, warmup_for  # noqa: E402
from _torch_only import MMCVStyleConvWS2d, StdConv2d, TorchResNet  # noqa: E402

LABELS = {
    'plain': 'ResNet-50, plain convs',
    'ws': 'WSResNet-50 (mmdet_eps WSConv)',
    'mmcv_convws': 'anchor: mmcv ConvWS2d',
    'timm_stdconv': 'anchor: timm-style StdConv2d (F.batch_norm)',
}


def register_anchor():
    """Make the timm-style anchor buildable from a ``conv_cfg`` (benchmark only)."""
    from mmdet.registry import MODELS
    MODELS.register_module('BenchStdConv2d', module=StdConv2d, force=True)


def build_backbones(pkg, depth: int = 50):
    """``{name: nn.Module}`` in train mode with identical initial weights."""
    if pkg.torch_only:
        models = {
            'plain': TorchResNet(depth, nn.Conv2d),
            'ws': TorchResNet(depth, pkg.WSConv),
            'mmcv_convws': TorchResNet(depth, MMCVStyleConvWS2d),
            'timm_stdconv': TorchResNet(depth, StdConv2d),
        }
    else:
        from mmdet.registry import MODELS
        register_anchor()
        common = dict(depth=depth, norm_eval=False, frozen_stages=-1, out_indices=(0, 1, 2, 3))
        models = {
            'plain': MODELS.build(dict(type='ResNet', **common)),
            'ws': MODELS.build(dict(type='WSResNet', **common)),
            'mmcv_convws': MODELS.build(dict(type='ResNet', conv_cfg=dict(type='ConvWS'),
                                             **common)),
            'timm_stdconv': MODELS.build(dict(type='ResNet', conv_cfg=dict(type='BenchStdConv2d'),
                                              **common)),
        }
    state = models['plain'].state_dict()
    for model in models.values():
        model.load_state_dict(state)
        model.train()
    return models


def train_step(model: nn.Module, x: torch.Tensor):
    def step():
        for p in model.parameters():
            p.grad = None
        outs = model(x)
        sum(o.float().mean() for o in outs).backward()
    return step


def extra_args(parser):
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--sizes', nargs='+', default=None,
                        help="input sizes, N or WxH (default 320 512; 64 with --quick)")
    parser.add_argument('--depth', type=int, default=50)


def main(argv=None):
    args, env, pkg = start(__doc__.splitlines()[0], extra_args, argv)
    report = Report('B1', f'ResNet-{args.depth} backbone forward+backward, WS vs plain', args,
                    env, goal='ws <= 1.03x plain')
    sizes = args.sizes or (['64'] if args.quick else ['320', '512'])
    models = {k: m.to(args.device) for k, m in build_backbones(pkg, args.depth).items()}
    for size in sizes:
        torch.manual_seed(0)
        height, width = parse_size(size)
        x = torch.randn(args.batch, 3, height, width, device=args.device)
        default_rounds = 15 if height * width <= 320 * 320 else 9
        if args.device.startswith('cuda'):
            default_rounds = 30
        timings = interleaved({k: train_step(m, x) for k, m in models.items()}, 'plain',
                              rounds_for(args, default_rounds), warmup=warmup_for(args),
                              device=args.device, label=f'B1 {size}')
        report.add(f'batch {args.batch}, {width}x{height}', timings, 'plain', labels=LABELS,
                   goal_for='ws', goal_max=1.03, batch=args.batch, size=size)
    report.finish()
    return report


if __name__ == '__main__':
    main()
