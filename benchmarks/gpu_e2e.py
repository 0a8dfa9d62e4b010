"""GPU end-to-end check (issue 11): training-iteration time of the paper's detectors, baseline vs
WS vs WS + ε-shifted L2, fp32 and AMP, with correctness checks on the device and a profile.

Run by ``benchmarks/gpu_e2e.sh``, which installs the stack on the GPU machine first. Sections,
each written to the JSON as soon as it is done (a run cut short keeps what it finished):

1. ``layers``: every normalized conv (WS, CWN, WN) on the device, alone and grouped, forward and
   weight gradient against the textbook expression in float64; the ε-shifted step of each family
   (after a forward and without one) against ``w - lr (g + λ∇R)``, ∇R by autograd in float64.
2. ``eps_step``: one training step of ``cascade_rcnn_ws_eps_r50``; every WS weight's update equals
   the paper's ``-lr (g + λ∇R)`` (and not the plain-decay one), ``eps_shifted_grad`` too.
3. ``timing``: ``model.train_step(batch, optim_wrapper)`` of the Cascade, Faster and Mask R-CNN
   R-50 triples of ``configs/`` (random init, every other setting kept; the three share weights,
   BN statistics calibrated once on the batch, lr capped at 0.002) on a fixed synthetic batch of
   2 COCO-size images, interleaved rounds after warm-up, fp32 and AMP (CUDA only).
4. ``profile``: one ``torch.profiler`` iteration per Cascade variant, split into backbone forward
   and backward (and their normalization ops), the step's ε-shifted term (its own range), the rest.
5. ``compiled``: the Cascade baseline and WS + ε ``train_step`` under ``torch.compile`` (as
   mmengine's ``compile=True``), compile time and s/iter (on CUDA, or ``--compile``).
6. ``loss_decreases``, ``stats_hook_logs``, ``coco_eval``: ``tools/train.py`` trains
   ``cascade_rcnn_ws_eps_r50`` a few dozen iterations on a synthetic COCO-layout set (with
   ``WeightNormStatsHook``), ``tools/test.py`` evaluates the checkpoint with ``CocoMetric``.

``--quick`` (the dry run) shrinks images, proposals and sampled RoIs, the set, the rounds and the
iterations so that everything runs on a CPU in a few minutes: a test of the script.
"""
import argparse
import copy
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.torch_version import TorchVersion

from _common import (
    REPO,
    RESULTS_DIR,
    build_optim_wrapper,
    environment,
    format_table,
    interleaved,
    load_package,
    load_tool,
    paired_ratio,
    parse_args,
    rel_err,
    synchronizer,
    write_json,
)

ARCHS = ('cascade_rcnn', 'faster_rcnn', 'mask_rcnn')
ARCH_NAMES = dict(cascade_rcnn='Cascade R-CNN', faster_rcnn='Faster R-CNN',
                  mask_rcnn='Mask R-CNN')
VARIANTS = ('baseline', 'ws', 'ws_eps')
VARIANT_NAMES = dict(baseline='R-50', ws='WS R-50', ws_eps='WS+ε R-50')
CONFIGS = dict(baseline='{}_r50.py', ws='{}_ws_r50.py', ws_eps='{}_ws_eps_r50.py')
#: Goals of the issue: (candidate, reference, max ratio).
GOALS = (('ws_eps', 'baseline', 1.03), ('ws_eps', 'ws', 1.01))
LR_CAP = 0.002
#: Large lr and λ for the ε-step check, so that the term dominates float32 rounding of W.
CHECK_LR, CHECK_LAMBDA = 0.5, 0.1
STEP_TOL = 1e-4
#: ``--quick``: proposals per image and RoIs sampled per image and stage (mmdet: 1000-2000, 512).
SMOKE_PROPOSALS, SMOKE_ROIS = 64, 32
#: The top-level forward ops of a plain ResNet (batch norm: on 4-D activations), and their inner
#: ops, which torch 2.1's profiler now and then lists at the top level; anything else in a WS
#: backbone's forward is its weight normalization.
PLAIN_BACKBONE_OPS = frozenset([
    'aten::conv2d', 'aten::convolution', 'aten::_convolution', 'aten::mkldnn_convolution',
    'aten::relu', 'aten::relu_', 'aten::clamp_min', 'aten::clamp_min_', 'aten::add',
    'aten::add_', 'aten::max_pool2d', 'aten::max_pool2d_with_indices'])
#: Batch norm as the profiler may list it at the top level (torch 2.1 lists its inner ops there).
BATCH_NORM_OPS = frozenset(['aten::batch_norm', 'aten::_batch_norm_impl_index',
                            'aten::native_batch_norm'])


def extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work', required=True, help='scratch folder (data, work dirs)')
    parser.add_argument('--archs', nargs='+', choices=ARCHS, default=list(ARCHS))
    parser.add_argument('--check-iters', type=int, default=None,
                        help='tools/train.py iterations of the loss check')
    parser.add_argument('--deadline', type=float, default=None,
                        help='unix time by which everything must be written; rounds shrink')
    parser.add_argument('--build-info', default=None, help='JSON written by gpu_e2e.sh')
    parser.add_argument('--commit', default='unknown')
    parser.add_argument('--compile', action='store_true',
                        help='time the compiled Cascade train_step (default on CUDA)')
    parser.add_argument('--compile-backend', default='inductor')
    parser.set_defaults(out=osp.join(RESULTS_DIR, 'gpu_e2e'))


class Settings:
    """Sizes of a run: COCO-size on the GPU, tiny with ``--quick``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.smoke = smoke = args.quick
        self.image_shapes = [(3, 96, 128), (3, 96, 112)] if smoke else [(3, 800, 1333),
                                                                         (3, 800, 1067)]
        self.num_boxes = [3, 5]
        self.rounds = args.rounds or (1 if smoke else 20)
        self.min_rounds = 1 if smoke else 5
        self.warmup = args.warmup or (1 if smoke else 3)
        self.check_iters = args.check_iters or (6 if smoke else 40)
        self.set_size = (160, 128) if smoke else (1333, 800)
        self.num_train, self.num_val = (4, 2) if smoke else (32, 8)
        self.precisions = ['fp32'] + (['amp'] if args.device.startswith('cuda') else [])
        #: Seconds kept for the profile and the tools checks when rounds are sized.
        self.reserve_s = 20 if smoke else 150

    def as_dict(self) -> Dict:
        return dict(vars(self))


# --------------------------------------------------------------------------- building

def load_config(arch: str, variant: str, smoke: bool):
    """The project's config of ``arch`` x ``variant``, with a random-init backbone; with
    ``smoke``, fewer proposals and sampled RoIs (the heads' cost on a CPU), same layers."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(REPO, 'configs', CONFIGS[variant].format(arch)))
    cfg.model.backbone.init_cfg = None
    if smoke:
        train, test = cfg.model.train_cfg, cfg.model.test_cfg
        train.rpn_proposal.update(nms_pre=SMOKE_PROPOSALS, max_per_img=SMOKE_PROPOSALS)
        test.rpn.update(nms_pre=SMOKE_PROPOSALS, max_per_img=SMOKE_PROPOSALS)
        for stage in train.rcnn if isinstance(train.rcnn, (list, tuple)) else [train.rcnn]:
            stage.sampler.num = SMOKE_ROIS
        test.rcnn.max_per_img = SMOKE_ROIS
    return cfg


def build_model(cfg, device: str) -> nn.Module:
    from mmdet.registry import MODELS
    model = MODELS.build(copy.deepcopy(cfg.model))
    model.init_weights()
    return model.to(device).train()


def optim_cfg(cfg, precision: str, lr_cap: Optional[float] = LR_CAP) -> Dict:
    """The config's optimizer wrapper, as ``tools/train.py --amp`` would change it for AMP."""
    optim = copy.deepcopy(cfg.optim_wrapper.to_dict())
    if lr_cap is not None:
        optim['optimizer']['lr'] = min(optim['optimizer']['lr'], lr_cap)
    if precision == 'amp':
        optim.update(type='AmpOptimWrapper', loss_scale='dynamic')
    return optim


def build_wrapper(model: nn.Module, optim: Dict):
    from mmengine.optim import build_optim_wrapper as build
    return build(model, copy.deepcopy(optim))


def make_batch(settings: Settings, with_mask: bool) -> Dict:
    """Two synthetic images of COCO training size with a few boxes (and bitmap masks) each."""
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(batch_size=len(settings.image_shapes),
                          image_shapes=settings.image_shapes, num_items=settings.num_boxes,
                          num_classes=80, with_mask=with_mask)


@torch.no_grad()
def calibrate_bn(model: nn.Module, batch: Dict) -> None:
    """Set the BN running statistics of a random backbone from the batch (momentum None: the
    plain average), then restore the config's train mode (frozen stages, ``norm_eval``)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    data = model.data_preprocessor(batch, False)
    model.extract_feat(data['inputs'])
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.train()


def calibrated_cascade(settings: Settings, device: str) -> Tuple:
    """``cascade_rcnn_ws_eps_r50``'s config and model, random init with calibrated BN."""
    cfg = load_config('cascade_rcnn', 'ws_eps', settings.smoke)
    torch.manual_seed(0)
    model = build_model(cfg, device)
    calibrate_bn(model, make_batch(settings, with_mask=False))
    return cfg, model


def build_triple(arch: str, device: str, batch: Dict, smoke: bool) -> Tuple[Dict, Dict]:
    """The three variants of ``arch`` with the same weights and calibrated BN."""
    cfgs = {v: load_config(arch, v, smoke) for v in VARIANTS}
    torch.manual_seed(0)
    models = {v: build_model(cfgs[v], device) for v in VARIANTS}
    state = models['baseline'].state_dict()
    for v in VARIANTS:
        models[v].load_state_dict(state)
        calibrate_bn(models[v], batch)
    return cfgs, models


# --------------------------------------------------------------------------- 1-2. numerics

#: Weight shapes of a ResNet-50: the stem, 1x1 and 3x3 convs, the widest 1x1s.
SHAPES = [(64, 3, 7, 7), (64, 64, 1, 1), (64, 64, 3, 3), (256, 64, 1, 1), (512, 512, 3, 3),
          (2048, 512, 1, 1), (1024, 2048, 1, 1)]


def textbook_normalize(w: torch.Tensor, eps: float, centered: bool,
                       divisor: float) -> torch.Tensor:
    """``u / (||u|| / sqrt(divisor) + eps)`` per filter, ``u = W - m`` (centered) or ``W``."""
    f = w.reshape(w.shape[0], -1)
    u = f - f.mean(1, keepdim=True) if centered else f
    return (u / (u.norm(dim=1, keepdim=True) / divisor**0.5 + eps)).view_as(w)


def paper_grad(w: torch.Tensor, family: str, eps: float, lam: float) -> torch.Tensor:
    """λ∇R of the paper's ε-shifted term by autograd in float64 on the CPU, per filter:
    R = n/2 (m² + (v - ε)²) for WS (v the population std; Eq. 28), ½ (||W|| - ε)² for WN,
    ½ (n m² + (||W - m|| - ε)²) for CWN."""
    w = w.detach().double().cpu().requires_grad_(True)
    f = w.reshape(w.shape[0], -1)
    n, m = f.shape[1], f.mean(1)
    if family == 'ws':
        r = n * (m**2 + (f.std(1, unbiased=False) - eps)**2)
    elif family == 'wn':
        r = (f.norm(dim=1) - eps)**2
    else:
        r = n * m**2 + ((f - m[:, None]).norm(dim=1) - eps)**2
    (0.5 * lam * r.sum()).backward()
    return w.grad


def check_layers(device: str) -> Dict:
    """WS / CWN / WN convs on ``device``, alone and grouped, and the ε-shifted step of each
    family (built by the constructor), against float64 references on the CPU."""
    from mmdet_eps.models.layers import CWNConv, WNConv, WSConv, normalize_filter_batch
    errors: Dict[str, float] = {}

    def record(key: str, value: torch.Tensor, ref: torch.Tensor) -> None:
        errors[key] = max(errors.get(key, 0.), rel_err(value, ref))

    def compare(key, weights64, ours, grads64, normalize, eps, centered, divisor) -> None:
        """``normalize(ours)`` and its weight gradient against the textbook in float64."""
        outs = normalize(ours)
        torch.autograd.backward(outs, [g.to(device, torch.float32) for g in grads64])
        refs = [w.clone().requires_grad_(True) for w in weights64]
        expected = [textbook_normalize(w, eps, centered, divisor) for w in refs]
        torch.autograd.backward(expected, grads64)
        for out, ref, w, w64 in zip(outs, expected, ours, refs):
            record(f'{key} forward', out, ref)
            record(f'{key} weight grad', w.grad, w64.grad)

    torch.manual_seed(0)
    for shape in SHAPES:
        w64 = torch.randn(shape, dtype=torch.float64) * 0.05 + 0.01 * torch.randn(
            shape[0], 1, 1, 1, dtype=torch.float64)
        n = w64[0].numel()
        for key, cls, kwargs, centered, divisor in [
                ('ws', WSConv, {}, True, n - 1),
                ('ws population', WSConv, dict(unbiased=False, eps=0.), True, n),
                ('cwn', CWNConv, {}, True, 1), ('wn', WNConv, {}, False, 1)]:
            conv = cls(shape[1], shape[0], shape[2:], bias=False, **kwargs).to(device)
            with torch.no_grad():
                conv.weight.copy_(w64)
            compare(key, [w64], [conv.weight], [torch.randn_like(w64)],
                    lambda ws: [conv.normalize(ws[0])], conv.eps, centered, divisor)
    for trailing, counts in [((64, 1, 1), (64, 256, 256, 256)), ((256, 3, 3), (256, 256, 256))]:
        ws64 = [torch.randn((c, ) + trailing, dtype=torch.float64) * 0.05 for c in counts]
        n = ws64[0][0].numel()
        compare('ws grouped', ws64,
                [w.to(device, torch.float32).requires_grad_(True) for w in ws64],
                [torch.randn_like(w) for w in ws64],
                lambda ws: normalize_filter_batch(ws, 1e-5, True, n - 1), 1e-5, True, n - 1)
    sgd = dict(type='SGD', lr=CHECK_LR, weight_decay=CHECK_LAMBDA)
    for family, cls in (('ws', WSConv), ('cwn', CWNConv), ('wn', WNConv)):
        for after_forward in (True, False):
            conv = cls(64, 128, 3, bias=False).to(device)
            optimizer = build_optim_wrapper(nn.Sequential(conv), sgd, dict(eps=0.02)).optimizer
            if after_forward:  # the step reuses the statistics the forward recorded
                conv(torch.randn(2, 64, 16, 16, device=device)).square().mean().backward()
            else:
                conv.weight.grad = torch.randn_like(conv.weight) * 1e-3
            w0, g0 = conv.weight.detach().double().cpu(), conv.weight.grad.double().cpu()
            optimizer.step()
            expected = -CHECK_LR * (g0 + paper_grad(w0, family, 0.02, CHECK_LAMBDA))
            key = f'{family} step' + (' after a forward' if after_forward else ', cold')
            record(key, conv.weight.detach().double().cpu() - w0, expected)
    worst = max(errors.values())
    return dict(ok=bool(worst < STEP_TOL), device=device, errors=errors, tolerance=STEP_TOL,
                detail=f'{len(errors)} comparisons (normalization forward and weight grad of '
                       f'WS/CWN/WN, alone and grouped, on {len(SHAPES)} ResNet-50 shapes; the '
                       f'ε-step of each family): worst relative error {worst:.1e} '
                       f'(tolerance {STEP_TOL:g})')


def check_eps_step(device: str, settings: Settings) -> Dict:
    """One step of the ws_eps Cascade R-CNN on ``device`` against the float64 CPU reference."""
    from mmdet_eps.engine.optimizers import eps_shifted_grad
    from mmdet_eps.models.layers import get_norm_family
    cfg, model = calibrated_cascade(settings, device)
    batch = make_batch(settings, with_mask=False)
    optim = optim_cfg(cfg, 'fp32', lr_cap=None)
    optim['optimizer'].update(lr=CHECK_LR, weight_decay=CHECK_LAMBDA)
    eps = optim['paramwise_cfg']['eps_shift']['eps']
    wrapper = build_wrapper(model, optim)
    weights = [m.weight for _, m in model.named_modules()
               if get_norm_family(m) == 'ws' and m.weight.requires_grad]
    # train_step, split at the step to read the gradients it steps with
    with wrapper.optim_context(model):
        data = model.data_preprocessor(batch, True)
        losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    wrapper.backward(loss)
    before = [(w.detach().double().cpu(), w.grad.detach().double().cpu()) for w in weights]
    grad_err = max(rel_err(eps_shifted_grad(w.detach(), 'ws', eps, CHECK_LAMBDA),
                           paper_grad(w0, 'ws', eps, CHECK_LAMBDA))
                   for w, (w0, _) in zip(weights, before))
    wrapper.step()
    step = torch.cat([(w.detach().double().cpu() - w0).flatten() for w, (w0, _) in
                      zip(weights, before)])
    expected = torch.cat([(-CHECK_LR * (g0 + paper_grad(w0, 'ws', eps, CHECK_LAMBDA))).flatten()
                          for w0, g0 in before])
    plain = torch.cat([(-CHECK_LR * (g0 + CHECK_LAMBDA * w0)).flatten() for w0, g0 in before])
    step_err = rel_err(step, expected)
    plain_err = ((step - plain).abs().max() / expected.abs().max()).item()
    ok = bool(step_err < STEP_TOL and grad_err < STEP_TOL and plain_err > 10 * step_err)
    return dict(ok=ok, device=device, weights=len(weights), eps=eps, lr=CHECK_LR,
                lam=CHECK_LAMBDA, step_rel_err=step_err, plain_decay_rel_err=plain_err,
                eps_shifted_grad_rel_err=grad_err, tolerance=STEP_TOL,
                detail=f'{len(weights)} WS weights: step error {step_err:.1e}, '
                       f'eps_shifted_grad error {grad_err:.1e} (tolerance {STEP_TOL:g}); '
                       f'the plain-decay update is {plain_err:.1e} away')


# --------------------------------------------------------------------------- 2. timing

def train_steps(steps: Dict[str, Callable], batch: Dict, wrappers: Dict,
                losses: Dict[str, float]) -> Dict[str, Callable[[], None]]:
    """``steps[v](batch, wrappers[v])`` with the same proposal / RoI sampling draws for every
    variant; each records its last loss in ``losses``."""
    def step(v: str) -> Callable[[], None]:
        def run() -> None:
            torch.manual_seed(1)
            losses[v] = float(torch.as_tensor(steps[v](batch, wrappers[v])['loss']).detach())
        return run
    return {v: step(v) for v in steps}


def time_triple(arch: str, precision: str, models: Dict, wrappers: Dict, batch: Dict,
                settings: Settings, device: str, budget_s: Optional[float]) -> Dict:
    """Interleaved ``train_step`` rounds of the three variants; rounds fit ``budget_s``."""
    losses: Dict[str, float] = {}
    fns = train_steps({v: models[v].train_step for v in VARIANTS}, batch, wrappers, losses)
    warm = interleaved(fns, 'baseline', settings.warmup, warmup=0, device=device)
    per_round = sum(t['times'][-1] for t in warm.values())
    rounds = settings.rounds
    if budget_s is not None:
        rounds = max(settings.min_rounds, min(rounds, int(budget_s / per_round)))
    label = f'{arch} {precision}'
    timings = interleaved(fns, 'baseline', rounds, warmup=0, device=device, label=label)
    row = dict(arch=arch, precision=precision, rounds=rounds, warmup=settings.warmup,
               median_s={v: timings[v]['median_s'] for v in VARIANTS},
               times={v: timings[v]['times'] for v in VARIANTS},
               last_loss=dict(losses), finite=all(np.isfinite(list(losses.values()))))
    row['ratios'] = {f'{c}/{r}': paired_ratio(timings[c]['times'], timings[r]['times'])
                     for c, r, _ in GOALS}
    row['goals'] = {f'{c}/{r}': dict(max=limit, met=row['ratios'][f'{c}/{r}']['ratio'] <= limit)
                    for c, r, limit in GOALS}
    if device.startswith('cuda'):
        row['max_memory_gb'] = torch.cuda.max_memory_allocated() / 2**30
    return row


def time_compiled(models: Dict, wrappers: Dict, batch: Dict, settings: Settings, device: str,
                  backend: str) -> Dict:
    """Compiled ``train_step`` of the Cascade baseline and WS + ε (mmengine's ``compile=True``),
    compile time of each and interleaved rounds."""
    losses: Dict[str, float] = {}
    pair = ('baseline', 'ws_eps')
    batch = copy.deepcopy(batch)  # numpy metainfo as the pipeline gives it (tuples): dynamo
    for sample in batch['data_samples']:  # turns arrays into tensors it cannot deepcopy
        sample.set_metainfo({k: tuple(v.tolist()) for k, v in sample.metainfo_items()
                             if isinstance(v, np.ndarray)})
    fns = train_steps({v: torch.compile(models[v].train_step, backend=backend) for v in pair},
                      batch, wrappers, losses)
    first = interleaved(fns, 'baseline', 1, warmup=0, device=device)  # the compiles
    compile_s = {v: round(first[v]['times'][0], 1) for v in pair}
    timings = interleaved(fns, 'baseline', settings.rounds, warmup=settings.warmup,
                          device=device, label=f'compiled {backend}')
    ratio = paired_ratio(timings['ws_eps']['times'], timings['baseline']['times'])
    return dict(backend=backend, compile_s=compile_s, rounds=settings.rounds,
                median_s={v: timings[v]['median_s'] for v in pair}, ratio=ratio,
                goal=dict(max=1.03, met=ratio['ratio'] <= 1.03),
                finite=all(np.isfinite(list(losses.values()))))


# --------------------------------------------------------------------------- 3. profile

class Ranges:
    """``record_function`` ranges opened and closed by hooks (module and optimizer hooks are
    public APIs; the ranges show in the profile like any other)."""

    def __init__(self) -> None:
        self.open: Dict[str, object] = {}
        self.handles: List = []

    def enter(self, name: str) -> None:
        rf = torch.profiler.record_function(name)
        rf.__enter__()
        self.open[name] = rf

    def exit(self, name: str) -> None:
        rf = self.open.pop(name, None)
        if rf is not None:
            rf.__exit__(None, None, None)

    def around_module(self, module: nn.Module, name: str) -> None:
        """The range opens before the module's other pre-hooks (a WS backbone normalizes its
        weights in one) and closes after its other forward hooks."""
        self.handles.append(module.register_forward_pre_hook(lambda *_: self.enter(name),
                                                             prepend=True))
        self.handles.append(module.register_forward_hook(lambda *_: self.exit(name)))

    def around_step(self) -> None:
        """``e2e/step`` around the whole step (global step hooks; the ε-shifted optimizers open
        their own range, ``EPS_SHIFT_RANGE``, around the term)."""
        from torch.optim.optimizer import (
            register_optimizer_step_post_hook,
            register_optimizer_step_pre_hook,
        )
        self.handles.append(register_optimizer_step_pre_hook(lambda *_: self.enter('e2e/step')))
        self.handles.append(register_optimizer_step_post_hook(lambda *_: self.exit('e2e/step')))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _subtree(event) -> List:
    out, stack = [], [event]
    while stack:
        e = stack.pop()
        out.append(e)
        stack.extend(e.cpu_children)
    return out


def _is_plain_backbone_op(event) -> bool:
    if event.name in BATCH_NORM_OPS:  # a batch norm over weights viewed (1, C, n) is WS
        shapes = getattr(event, 'input_shapes', None) or []
        return not shapes or not shapes[0] or len(shapes[0]) == 4
    return event.name in PLAIN_BACKBONE_OPS


def attribute(events, use_device: bool) -> Dict[str, float]:
    """Milliseconds of each part of one profiled iteration (device kernel time on CUDA,
    inclusive CPU time on the CPU)."""
    from torch.autograd import DeviceType

    from mmdet_eps.engine.optimizers.eps_shifted_optimizer import EPS_SHIFT_RANGE
    # CPU-side events only: on CUDA the profile also holds each range as a device-side
    # annotation of the same name, whose time the CPU range already counts through its kernels
    events = [e for e in events if e.device_type == DeviceType.CPU]

    def cost(e) -> float:
        return (e.device_time_total if use_device else e.cpu_time_total) / 1e3

    def ranges(name: str) -> List:
        return [e for e in events if e.name == name]

    parts = dict.fromkeys(['total', 'backbone_fwd', 'backbone_fwd_norm', 'backbone_bwd',
                           'backbone_bwd_norm', 'step_eps_shift', 'step_rest'], 0.)
    iteration = ranges('e2e/iteration')
    parts['total'] = sum(cost(e) for e in iteration)
    parts['wall'] = sum(e.cpu_time_total for e in iteration) / 1e3
    seq_class: Dict[int, bool] = {}  # sequence number -> is a normalization op
    for rng in ranges('e2e/backbone'):
        parts['backbone_fwd'] += cost(rng)
        for op in rng.cpu_children:
            norm = not _is_plain_backbone_op(op)
            if norm:
                parts['backbone_fwd_norm'] += cost(op)
            for e in _subtree(op):
                if getattr(e, 'sequence_nr', -1) >= 0:
                    seq_class[e.sequence_nr] = norm
    for e in events:
        if e.name.startswith('autograd::engine::evaluate_function') and \
                e.sequence_nr in seq_class:
            parts['backbone_bwd'] += cost(e)
            if seq_class[e.sequence_nr]:
                parts['backbone_bwd_norm'] += cost(e)
    parts['step_eps_shift'] = sum(cost(e) for e in ranges(EPS_SHIFT_RANGE))
    parts['step_rest'] = sum(cost(e) for e in ranges('e2e/step')) - parts['step_eps_shift']
    parts['rest'] = parts['total'] - parts['backbone_fwd'] - parts['backbone_bwd'] - \
        parts['step_eps_shift'] - parts['step_rest']
    return parts


def profile_variant(model: nn.Module, wrapper, batch: Dict, device: str) -> Dict[str, float]:
    """One ``train_step`` under ``torch.profiler`` with the ranges of :class:`Ranges`; the
    model and wrapper have run the timed rounds, so it is a steady iteration."""
    from torch.profiler import ProfilerActivity, profile, record_function
    activities = [ProfilerActivity.CPU]
    if device.startswith('cuda'):
        activities.append(ProfilerActivity.CUDA)
    ranges = Ranges()
    ranges.around_module(model.backbone, 'e2e/backbone')
    ranges.around_step()
    try:
        with profile(activities=activities, record_shapes=True) as prof:
            with record_function('e2e/iteration'):
                torch.manual_seed(1)
                model.train_step(batch, wrapper)
                synchronizer(device)()
    finally:
        ranges.remove()
    return attribute(prof.events(), use_device=device.startswith('cuda'))


# --------------------------------------------------------------------------- 4. tools checks

def name_coco_categories(layout: Dict) -> None:
    """Give the toy set COCO's 80 categories (its 5 shapes are ids 1-5), so that the 80-class
    detectors' dataset and metric index every label they predict."""
    from mmdet.datasets import CocoDataset
    categories = [dict(id=k + 1, name=c) for k, c in enumerate(CocoDataset.METAINFO['classes'])]
    for split in ('train', 'val'):
        path = osp.join(layout['root'], layout[split]['ann_file'])
        with open(path) as f:
            coco = json.load(f)
        with open(path, 'w') as f:
            json.dump(dict(coco, categories=categories), f)


def tools_config(settings: Settings, layout: Dict, ckpt: str, path: str) -> None:
    """``cascade_rcnn_ws_eps_r50`` on the toy set ``layout`` for the train/test tools: iteration
    loop, constant lr scaled for batch 2 (``auto_scale_lr``), every-iteration logging with
    ``WeightNormStatsHook``, starting from the calibrated random init ``ckpt``; test score
    threshold 0, so that the metric has detections to score."""
    cfg = load_config('cascade_rcnn', 'ws_eps', settings.smoke)
    iters = settings.check_iters
    for split, loader in (('train', cfg.train_dataloader), ('val', cfg.test_dataloader)):
        ds = loader.dataset
        ds.update(data_root=layout['root'] + '/', ann_file=layout[split]['ann_file'],
                  data_prefix=dict(img=layout[split]['img_dir']))
        if settings.smoke:
            loader.update(num_workers=0, persistent_workers=False)
            for t in ds.pipeline:
                if t['type'] == 'Resize':
                    t['scale'] = settings.set_size
    cfg.test_evaluator.ann_file = osp.join(layout['root'], layout['val']['ann_file'])
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters)
    cfg.param_scheduler = None
    cfg.auto_scale_lr.enable = True
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=iters, by_epoch=False)
    cfg.log_processor = dict(type='LogProcessor', window_size=1, by_epoch=False)
    cfg.custom_hooks = [dict(type='WeightNormStatsHook', interval=1)]
    cfg.model.test_cfg.rcnn.score_thr = 0.  # an untrained detector still returns its top boxes
    cfg.load_from = ckpt
    cfg.dump(path)


def run_tool(args: List[str], log: str, deadline: Optional[float]) -> int:
    """Run a script of tools/ with this interpreter; -1 when it outlives the deadline (given at
    least a minute)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    timeout = 1800. if deadline is None else max(60., deadline - time.time())
    with open(log, 'w') as f:
        try:
            return subprocess.run([sys.executable] + args, cwd=REPO, env=env, stdout=f,
                                  stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return -1


def last_json_lines(pattern: str) -> List[Dict]:
    files = sorted(glob.glob(pattern))
    if not files:
        return []
    with open(files[-1]) as f:
        return [json.loads(line) for line in f if line.strip()]


def check_with_tools(settings: Settings, device: str, work: str,
                     deadline: Optional[float]) -> Dict[str, Dict]:
    """Train a few dozen iterations with tools/train.py, evaluate with tools/test.py."""
    width, height = settings.set_size
    layout = load_tool('misc/make_toy_coco').make_toy_coco(
        osp.join(work, 'toy_coco'), settings.num_train, settings.num_val, width=width,
        height=height, force=True)
    name_coco_categories(layout)
    _, model = calibrated_cascade(settings, device)
    ckpt = osp.join(work, 'calibrated_init.pth')
    torch.save(dict(state_dict={k: v.cpu() for k, v in model.state_dict().items()},
                    meta=dict(note='random init, BN calibrated on a synthetic batch')), ckpt)
    del model
    config = osp.join(work, 'cascade_rcnn_ws_eps_r50_synth.py')
    tools_config(settings, layout, ckpt, config)
    train_dir, test_dir = osp.join(work, 'train'), osp.join(work, 'test')
    start = time.time()
    rc = run_tool(['tools/train.py', config, '--work-dir', train_dir],
                  osp.join(work, 'train.log'), deadline)
    train_s = time.time() - start
    scalars = last_json_lines(osp.join(train_dir, '*', 'vis_data', 'scalars.json'))
    losses = [s['loss'] for s in scalars if 'loss' in s]
    k = max(2, len(losses) // 4)
    first, last = (float(np.mean(losses[:k])), float(np.mean(losses[-k:]))) if losses else (
        float('nan'), float('nan'))
    out = {}
    out['loss_decreases'] = dict(
        ok=bool(rc == 0 and len(losses) == settings.check_iters and last < first),
        iterations=len(losses), first_mean=first, last_mean=last, window=k, exit_code=rc,
        seconds=round(train_s, 1), losses=losses,
        detail=f'tools/train.py, {len(losses)} iterations: mean loss of the first {k} '
               f'{first:.3f}, of the last {k} {last:.3f}')
    hook_keys = sorted({key for s in scalars for key in s if key.startswith('wn_stats/')})
    hook_lines = sum(1 for s in scalars if 'wn_stats/max_inv_std' in s)
    out['stats_hook_logs'] = dict(
        ok=bool(hook_lines == len(losses) > 0 and 'wn_stats/eff_lr' in hook_keys), keys=hook_keys,
        lines=hook_lines, last={key: scalars[-1].get(key) for key in hook_keys} if scalars else {},
        detail=f'WeightNormStatsHook logged {hook_keys} on {hook_lines} of {len(losses)} '
               'iterations')
    ckpts = sorted(glob.glob(osp.join(train_dir, 'iter_*.pth')))
    metrics: Dict = {}
    rc_test = None
    if ckpts:
        start = time.time()
        rc_test = run_tool(['tools/test.py', config, ckpts[-1], '--work-dir', test_dir],
                           osp.join(work, 'test.log'), deadline)
        test_s = time.time() - start
        lines = last_json_lines(osp.join(test_dir, '*', '*.json'))
        metrics = {k2: v for line in lines for k2, v in line.items() if k2.startswith('coco/')}
    m_ap = metrics.get('coco/bbox_mAP')
    out['coco_eval'] = dict(
        ok=bool(rc_test == 0 and isinstance(m_ap, (int, float))), exit_code=rc_test,
        metrics=metrics, seconds=round(test_s, 1) if ckpts else None,
        detail=f'tools/test.py on {settings.num_val} synthetic images: coco/bbox_mAP {m_ap} '
               '(a random-init detector after a few dozen iterations: only that it runs counts)')
    return out


# --------------------------------------------------------------------------- report

def markdown(result: Dict) -> str:
    env, build = result['env'], result.get('build') or {}
    head = (f'GPU end-to-end (issue 11): {env.get("gpu", env.get("processor"))}, '
            f'torch {env["torch"]}, mmcv {env.get("mmcv", "?")} '
            f'({build.get("mode", "?")} build'
            f'{", %s s" % build["seconds"] if "seconds" in build else ""}), '
            f'{env["time"][:10]}, commit {result["commit"]}'
            + (' (SMOKE: tiny images, not a measurement)' if result['settings']['smoke'] else ''))
    shapes = ' and '.join(f'{s[2]}x{s[1]}' for s in result['settings']['image_shapes'])
    lines = [f'### {head}', '',
             f'`model.train_step` s/iter, batch 2 ({shapes}), median of interleaved rounds '
             '(paired ratios, IQR in brackets):', '',
             '| detector | precision | rounds | R-50 | WS R-50 | WS+ε R-50 | WS+ε ÷ R-50 | '
             'WS+ε ÷ WS | goals (≤ 1.03x, ≤ 1.01x) |',
             '|---|---|---:|---:|---:|---:|---|---|---|']
    for row in result['timing']:
        r = row['ratios']
        goals = ', '.join('met' if g['met'] else '**not met**' for g in row['goals'].values())
        cells = ' | '.join(f'{row["median_s"][v]:.4f}' for v in VARIANTS)
        ratio = ' | '.join(f'{r[k]["ratio"]:.3f}x ({r[k]["q1"]:.3f}-{r[k]["q3"]:.3f})'
                           for k in r)
        lines.append(f'| {ARCH_NAMES[row["arch"]]} | {row["precision"]} | {row["rounds"]} | '
                     f'{cells} | {ratio} | {goals}'
                     + ('' if row['finite'] else ' (non-finite loss)') + ' |')
    for skipped in result.get('skipped', []):
        lines.append(f'| {skipped} | | | | | | | | skipped: out of time |')
    for prof in result['profile']:
        unit = 'GPU kernel ms' if prof['device'].startswith('cuda') else 'CPU ms'
        lines += ['', f'Where the time goes: one `torch.profiler` iteration, '
                  f'{ARCH_NAMES[prof["arch"]]} {prof["precision"]} ({unit}; backbone backward = '
                  'the autograd nodes of its forward ops):', '',
                  '| part | ' + ' | '.join(VARIANT_NAMES[v] for v in VARIANTS) + ' |',
                  '|---|' + '---:|' * len(VARIANTS)]
        names = [('backbone forward', 'backbone_fwd'),
                 ('- of which weight normalization ops', 'backbone_fwd_norm'),
                 ('backbone backward', 'backbone_bwd'),
                 ('- of which weight normalization ops', 'backbone_bwd_norm'),
                 ('optimizer step: the ε-shifted term', 'step_eps_shift'),
                 ('optimizer step, rest', 'step_rest'),
                 ('rest (heads, losses, their backward, preprocessing)', 'rest'),
                 ('total', 'total'), ('iteration wall time (CPU clock)', 'wall')]
        parts = prof['parts']
        for label, key in names:
            lines.append(f'| {label} | ' + ' | '.join(
                f'{parts[v][key]:.1f}' for v in VARIANTS) + ' |')
        base = parts['baseline']
        for label, keys in (("backbone forward + backward, minus R-50's",
                             ('backbone_fwd', 'backbone_bwd')),
                            ("total, minus R-50's", ('total', ))):
            lines.append(f'| {label} | ' + ' | '.join(
                f'{sum(parts[v][k] - base[k] for k in keys):+.1f}' for v in VARIANTS) + ' |')
    compiled = result.get('compiled')
    if compiled:
        r, med = compiled['ratio'], compiled['median_s']
        lines += ['', f'Compiled `train_step` (`torch.compile`, {compiled["backend"]}), Cascade '
                  f'R-CNN fp32, {compiled["rounds"]} rounds: R-50 {med["baseline"]:.4f} s, '
                  f'WS+ε R-50 {med["ws_eps"]:.4f} s, ratio {r["ratio"]:.3f}x '
                  f'({r["q1"]:.3f}-{r["q3"]:.3f}; goal ≤ 1.03x: '
                  f'{"met" if compiled["goal"]["met"] else "**not met**"}); compile '
                  f'{compiled["compile_s"]["baseline"]} s / {compiled["compile_s"]["ws_eps"]} s.']
    for bench in result['benchmarks']:
        lines += ['', format_table(bench['rows'], title=f'{bench["bench"]}: {bench["title"]}')]
        lines += [f'- {note}' for note in bench['notes']]
    lines += ['', '| check | result | detail |', '|---|---|---|']
    for name, check in result['checks'].items():
        lines.append(f'| {name} | {"pass" if check["ok"] else "**FAIL**"} | {check["detail"]} |')
    return '\n'.join(lines) + '\n'


def save(result: Dict, out: str) -> None:
    write_json(osp.join(out, 'gpu_e2e.json'), result)
    with open(osp.join(out, 'gpu_e2e.md'), 'w') as f:
        f.write(markdown(result))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(__doc__.splitlines()[0], extra_args, argv)
    settings = Settings(args)
    device = args.device
    torch.set_flush_denormal(True)
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    load_package()
    env = environment(args)
    env['cuda'] = torch.version.cuda
    build = None
    if args.build_info and osp.exists(args.build_info):
        with open(args.build_info) as f:
            build = json.load(f)
    result = dict(env=env, commit=args.commit, build=build,
                  settings=settings.as_dict(), checks={}, timing=[],
                  profile=[], skipped=[], sections={}, benchmarks=[])
    for path in sorted(glob.glob(osp.join(args.out, 'b[0-9]_*.json'))):  # BENCH of gpu_e2e.sh
        with open(path) as f:
            bench = json.load(f)
        result['benchmarks'].append({k: bench[k] for k in ('bench', 'title', 'rows', 'notes')})

    def remaining() -> Optional[float]:
        return None if args.deadline is None else args.deadline - time.time()

    start = time.time()

    def section(name: str) -> None:
        """Print the section and record when it started (seconds since the driver began)."""
        result['sections'][name] = round(time.time() - start, 1)
        print(f'== {name} (at {result["sections"][name]} s)', flush=True)

    section('layers')
    result['checks']['layers'] = check_layers(device)
    print(result['checks']['layers']['detail'], flush=True)
    section('eps_step')
    result['checks']['eps_step'] = check_eps_step(device, settings)
    print(result['checks']['eps_step']['detail'], flush=True)
    save(result, args.out)

    sections = [(a, p) for a in args.archs for p in settings.precisions]
    done = 0
    for arch in args.archs:
        batch = make_batch(settings, with_mask=arch == 'mask_rcnn')
        cfgs, models = build_triple(arch, device, batch, settings.smoke)
        wrappers: Dict[str, Dict] = {}
        for precision in settings.precisions:
            left = remaining()
            budget = None
            if left is not None:
                budget = (left - settings.reserve_s) / (len(sections) - done)
                if budget <= 0:
                    result['skipped'].append(f'{ARCH_NAMES[arch]} {precision}')
                    done += 1
                    continue
            section(f'timing {arch} {precision}')
            if device.startswith('cuda'):
                torch.cuda.reset_peak_memory_stats()
            wrappers[precision] = {v: build_wrapper(models[v], optim_cfg(cfgs[v], precision))
                                   for v in VARIANTS}
            result['timing'].append(time_triple(arch, precision, models, wrappers[precision],
                                                batch, settings, device, budget))
            done += 1
            save(result, args.out)
        if arch == 'cascade_rcnn' and TorchVersion(torch.__version__) < '2.4':
            print(f'compiled section skipped: torch {torch.__version__} (torch.compile of the '
                  'detectors needs torch >= 2.4)', flush=True)
        elif arch == 'cascade_rcnn' and (args.compile or device.startswith('cuda')):
            section(f'compiled {arch} fp32 ({args.compile_backend})')
            result['compiled'] = time_compiled(models, wrappers['fp32'], batch, settings,
                                               device, args.compile_backend)
            save(result, args.out)
        if arch == 'cascade_rcnn':
            for precision, timed in wrappers.items():
                section(f'profile {arch} {precision}')
                parts = {v: profile_variant(models[v], timed[v], batch, device) for v in VARIANTS}
                result['profile'].append(dict(arch=arch, precision=precision, device=device,
                                              parts=parts))
                save(result, args.out)
        del models, wrappers
        if device.startswith('cuda'):
            torch.cuda.empty_cache()

    section('tools/train.py + tools/test.py')
    result['checks'].update(check_with_tools(settings, device, args.work,
                                             args.deadline))
    for name, check in result['checks'].items():
        print(f'{name}: {"pass" if check["ok"] else "FAIL"}: {check["detail"]}', flush=True)
    section('end')
    save(result, args.out)
    print(markdown(result), flush=True)
    return 0 if all(c['ok'] for c in result['checks'].values()) else 1


if __name__ == '__main__':
    sys.exit(main())
