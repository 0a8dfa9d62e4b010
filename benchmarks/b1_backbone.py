"""B1: training cost of weight standardization in a ResNet-50 backbone.

Forward + backward of a ResNet-50 backbone in train mode (BN training, ``norm_eval=False``, all
stages trainable, the four stage outputs summed into the loss), batch 2, at 320x320 and 512x512.
Candidates, each its own model with the same initial weights:

- ``plain`` (baseline): mmdet's ResNet-50 with plain convs.
- ``ws``: mmdet_eps ``WSResNet`` (``WSConv``: unbiased std, eps on the std, fused backward).
- ``mmcv_convws``: mmdet's ResNet with ``conv_cfg=dict(type='ConvWS')`` (mmcv's ``ConvWS2d``).
- ``timm_stdconv``: anchor, a timm-style ``StdConv2d`` (``F.batch_norm`` on the weight viewed as
  ``(1, C_out, n)``: different numerics - biased variance, eps inside the sqrt).

    python benchmarks/b1_backbone.py [--quick] [--device cuda] [--batch 2] [--sizes 320 1344x800]
"""
from typing import Callable, Dict

import torch
from torch import nn

from _common import Report, backbone_loss, build_backbone, parse_size, start

LABELS = {
    'plain': 'ResNet-50, plain convs',
    'ws': 'WSResNet-50 (mmdet_eps WSConv)',
    'mmcv_convws': 'anchor: mmcv ConvWS2d',
    'timm_stdconv': 'anchor: timm-style StdConv2d (F.batch_norm)',
}


class StdConv2d(nn.Conv2d):
    """timm-style weight standardization (the anchor, not the package's layer): the weight viewed
    as ``(1, C_out, n)`` through ``F.batch_norm(training=True)``: one fused kernel each way,
    biased variance, eps inside the sqrt."""

    def __init__(self, *args, eps: float = 1e-6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = nn.functional.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
            momentum=0., eps=self.eps).reshape_as(self.weight)
        return self._conv_forward(x, w, self.bias)


def build_backbones(depth: int = 50) -> Dict[str, nn.Module]:
    """``{name: nn.Module}`` in train mode with identical initial weights."""
    from mmdet.registry import MODELS
    MODELS.register_module('BenchStdConv2d', module=StdConv2d, force=True)
    models = {
        'plain': build_backbone('ResNet', depth),
        'ws': build_backbone('WSResNet', depth),
        'mmcv_convws': build_backbone('ResNet', depth, conv_cfg=dict(type='ConvWS')),
        'timm_stdconv': build_backbone('ResNet', depth, conv_cfg=dict(type='BenchStdConv2d')),
    }
    state = models['plain'].state_dict()
    for model in models.values():
        model.load_state_dict(state)
    return models


def train_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step():
        for p in model.parameters():
            p.grad = None
        backbone_loss(model, x).backward()
    return step


def extra_args(parser):
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--sizes', nargs='+', default=None,
                        help="input sizes, N or WxH (default 320 512; 64 with --quick)")
    parser.add_argument('--depth', type=int, default=50)


def main(argv=None):
    args, env = start(__doc__.splitlines()[0], extra_args, argv)
    report = Report('B1', f'ResNet-{args.depth} backbone forward+backward, WS vs plain', args,
                    env, goal='ws <= 1.03x plain')
    sizes = args.sizes or (['64'] if args.quick else ['320', '512'])
    models = {k: m.to(args.device) for k, m in build_backbones(args.depth).items()}
    for size in sizes:
        torch.manual_seed(0)
        height, width = parse_size(size)
        x = torch.randn(args.batch, 3, height, width, device=args.device)
        rounds = 30 if args.device.startswith('cuda') else 15 if height * width <= 320**2 else 9
        timings = report.time({k: train_step(m, x) for k, m in models.items()}, 'plain',
                              rounds, label=f'B1 {size}')
        report.add(f'batch {args.batch}, {width}x{height}', timings, 'plain', labels=LABELS,
                   goal_for='ws', goal_max=1.03, batch=args.batch, size=size)
    report.finish()
    return report


if __name__ == '__main__':
    main()
