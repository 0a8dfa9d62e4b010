"""Convert an ImageNet-pretrained ResNet/ResNeXt classifier into an mmdet backbone checkpoint.

Reads three layouts, all with torchvision's layer names (conv1, bn1, layerK.i.convJ/bnJ,
layerK.0.downsample.0/1, fc), which are also mmdet's ResNet names:

* ``pytorchinsight``: the paper authors' checkpoints (implus/PytorchInsight),
  ``{'epoch', 'state_dict', 'acc', 'best_acc', 'optimizer'}`` with every key prefixed ``module.``;
* ``torchvision``: a plain state dict, bare or under ``'state_dict'`` or ``'model'``;
* ``mmpretrain``: mmpretrain/mmcls classifiers, ``backbone.*`` next to ``head.fc.*``.

Writes ``{'state_dict': ..., 'meta': ...}`` that ``init_cfg=dict(type='Pretrained',
checkpoint=DST)`` of ``WSResNet``/``WSResNeXt`` (or mmdet's ResNet/ResNeXt) loads with no missing
keys. ``meta.trained_with_ws`` says whether the weights were trained with WS, so that the guarded
``Pretrained`` init (``mmdet_eps.models.weight_init``) loads them into WS convs silently or
refuses them: the authors' checkpoints are their BN+WS releases, torchvision's are plain, an
mmpretrain checkpoint names its convs in the config it saved; ``--trained-with-ws`` overrides.
The classifier is dropped; depth, ResNet vs ResNeXt, groups and base_width are inferred from the
tensors. The source is loaded weights-only, so a file carrying pickled code is refused before
anything in it runs, and DST is written atomically: it is either complete or absent.

Example::

    python tools/model_converters/convert_imagenet_ckpt.py ws_resnet50.pth.tar \\
        checkpoints/ws_r50.pth --depth 50 --arch resnet --verify
"""
import argparse
import logging
import os.path as osp
import re
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import torch
from mmdet.models.backbones import ResNet, ResNeXt
from mmdet.registry import MODELS
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope
from mmengine.runner.checkpoint import load_state_dict
from torch import Tensor

import mmdet_eps
from mmdet_eps.utils import UnsafeCheckpointError, atomic_output, safe_load, sha256sum

#: (block class name, blocks per stage) -> depth, from mmdet's ResNet.arch_settings.
DEPTHS = {(block.__name__, tuple(stages)): depth
          for depth, (block, stages) in ResNet.arch_settings.items()}
ARCHS = ('resnet', 'resnext')
CONVS = ('WSConv', 'Conv2d', 'WNConv', 'CWNConv')
#: Names in an mmengine checkpoint's saved config (``meta.cfg``) that build WS convs.
WS_CONFIG_NAMES = re.compile(r'\b(WSConv|ConvWS|WSResNet|WSResNeXt)\b')
#: ``--trained-with-ws`` -> ``convert``'s ``trained_with_ws``.
TRAINED_WITH_WS = {'auto': None, 'yes': True, 'no': False}

Spec = Dict[str, Any]  # arch, depth, stages, block, groups, base_width


class ConversionError(ValueError):
    """SRC is not a checkpoint this tool can convert, or not the one that was expected."""


class VerificationError(RuntimeError):
    """The converted backbone does not compute what the source network computes."""


def load_source(path: str) -> Any:
    """Load ``path`` weights-only (tensors, plain and numpy types); never run pickled code."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} does not exist or is not a file')
    try:
        return safe_load(path, map_location='cpu')
    except UnsafeCheckpointError:
        raise
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError... on bad files
        first = str(err).split('. ')[0].splitlines()[0] if str(err) else ''
        raise ConversionError(
            f'{path} is not a readable PyTorch checkpoint (truncated, corrupt or not written by '
            f'torch.save): {type(err).__name__}: {first}') from None


def extract_backbone(ckpt: Any) -> Tuple[Dict[str, Tensor], str, List[str]]:
    """Return the backbone tensors under mmdet names, the source format and the dropped keys."""
    if not isinstance(ckpt, dict):
        raise ConversionError(f'expected a dict of tensors, got {type(ckpt).__name__}')
    state = next((ckpt[k] for k in ('state_dict', 'model') if isinstance(ckpt.get(k), dict)),
                 ckpt)
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, Tensor)}
    fmt = 'torchvision'
    if tensors and all(k.startswith('module.') for k in tensors):
        tensors = {k[len('module.'):]: v for k, v in tensors.items()}
        fmt = 'pytorchinsight'
    if any(k.startswith('backbone.') for k in tensors):
        fmt, prefix = 'mmpretrain', 'backbone.'
        backbone = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        dropped = [k for k in tensors if not k.startswith(prefix)]
    else:
        backbone = {k: v for k, v in tensors.items() if not k.startswith('fc.')}
        dropped = [k for k in tensors if k.startswith('fc.')]
    required = ('conv1.weight', 'layer1.0.conv1.weight', 'layer1.0.conv2.weight')
    if not all(k in backbone and backbone[k].dim() == 4 for k in required):
        found = ', '.join(list(tensors)[:5]) or 'no tensors'
        raise ConversionError(
            f'no ResNet weights found: expected 4-D {", ".join(required)} (optionally under '
            f'module. or backbone.), found {found}')
    return backbone, fmt, dropped


def infer_trained_with_ws(ckpt: Any, fmt: str) -> Optional[bool]:
    """Whether the source's weights were trained with WS: the authors' checkpoints
    (``pytorchinsight``) are their BN+WS releases, torchvision's are plain, and an mmpretrain
    checkpoint tells by the config it saved (``meta.cfg``); None when nothing tells."""
    if fmt != 'mmpretrain':
        return fmt == 'pytorchinsight'
    meta = ckpt.get('meta')
    cfg = meta.get('cfg') if isinstance(meta, dict) else None
    return bool(WS_CONFIG_NAMES.search(cfg)) if isinstance(cfg, str) else None


def describe(spec: Spec) -> str:
    """A name such as ``ResNet-50`` or ``ResNeXt-101 (32x4d)``."""
    if spec['arch'] == 'resnext':
        return f"ResNeXt-{spec['depth']} ({spec['groups']}x{spec['base_width']}d)"
    return f"ResNet-{spec['depth']}"


def infer_arch(state: Dict[str, Tensor]) -> Spec:
    """Infer depth from the blocks per stage and ResNeXt groups/base_width from conv2's shape."""
    block = 'Bottleneck' if 'layer1.0.conv3.weight' in state else 'BasicBlock'
    stages = tuple(len({k.split('.')[1] for k in state if k.startswith(f'layer{i}.')})
                   for i in range(1, 5))
    depth = DEPTHS.get((block, stages))
    if depth is None:
        known = '; '.join(f'{d}: {b} {list(s)}' for (b, s), d in DEPTHS.items())
        raise ConversionError(f'{block} blocks per stage {list(stages)} match no ResNet depth '
                              f'({known})')
    # conv2 of the first block maps width -> width channels with weight (width, width/groups, ...)
    width = state['layer1.0.conv1.weight'].shape[0]
    per_group = state['layer1.0.conv2.weight'].shape[1]
    if width % per_group:
        raise ConversionError(f'layer1.0.conv2 has {per_group} input channels per group, which '
                              f'does not divide the {width} channels of layer1.0.conv1')
    groups = width // per_group
    if groups > 1 and block == 'BasicBlock':
        raise ConversionError(f'grouped BasicBlocks (groups={groups}) are not a ResNeXt that '
                              'mmdet builds')
    # mmdet's ResNeXt: width = floor(planes * base_width / 64) * groups, planes = 64 in stage 1
    spec = dict(arch='resnext' if groups > 1 else 'resnet', depth=depth, block=block,
                stages=list(stages))
    if groups > 1:
        spec.update(groups=groups, base_width=width // groups)
    return spec


def _backbone_keys(spec: Spec) -> Dict[str, torch.Size]:
    """The state-dict keys and shapes of mmdet's backbone for ``spec`` (built on 'meta')."""
    with torch.device('meta'):
        if spec['arch'] == 'resnext':
            model = ResNeXt(depth=spec['depth'], groups=spec['groups'],
                            base_width=spec['base_width'])
        else:
            model = ResNet(depth=spec['depth'])
    return {k: v.shape for k, v in model.state_dict().items()}


def to_mmdet(state: Dict[str, Tensor], spec: Spec) -> Tuple['OrderedDict[str, Tensor]', int]:
    """Check ``state`` against mmdet's backbone key by key and shape by shape; return it in
    mmdet's order, with missing BN ``num_batches_tracked`` counters (old torchvision files) set
    to 0 so that a strict ``load_state_dict`` passes, and how many were added."""
    expected = _backbone_keys(spec)
    missing = [k for k in expected if k not in state and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in expected]
    shapes = [f'{k} {tuple(state[k].shape)} != {tuple(s)}' for k, s in expected.items()
              if k in state and state[k].shape != s]
    problems = [f'{what}: {", ".join(keys[:4])}{" ..." if len(keys) > 4 else ""}'
                for what, keys in (('missing', missing), ('unexpected', unexpected),
                                   ('shape mismatch', shapes)) if keys]
    if problems:
        raise ConversionError(f'not a plain {describe(spec)} as mmdet builds it: '
                              + '; '.join(problems))
    added = sum(k not in state for k in expected)
    out = OrderedDict((k, state[k] if k in state else torch.tensor(0)) for k in expected)
    return out, added


def backbone_cfg(spec: Spec, conv: str = 'WSConv', checkpoint: Optional[str] = None,
                 **init_kwargs) -> dict:
    """The mmdet backbone config for ``spec``, loading ``checkpoint`` if given (with
    ``init_kwargs`` in its ``init_cfg``)."""
    cfg = dict(type='WSResNeXt' if spec['arch'] == 'resnext' else 'WSResNet',
               depth=spec['depth'], conv_cfg=dict(type=conv))
    if spec['arch'] == 'resnext':
        cfg.update(groups=spec['groups'], base_width=spec['base_width'])
    if checkpoint is not None:
        cfg['init_cfg'] = dict(type='Pretrained', checkpoint=checkpoint, **init_kwargs)
    return cfg


def verify_checkpoint(reference: Dict[str, Tensor], dst: str, spec: Spec, conv: str = 'WSConv',
                      input_size: int = 224) -> float:
    """Compare the backbone loaded directly from the source tensors with one initialised from
    ``dst`` by mmengine's Pretrained init (what a detector config does, missing keys included)
    on a random input in eval mode; return the largest absolute difference of the four stage
    outputs, raising :class:`VerificationError` beyond float32 round-off. The comparison is of
    functions, so ``dst`` is loaded whatever its weights were trained with."""
    cfg = dict(backbone_cfg(spec, conv), out_indices=(0, 1, 2, 3))
    logger = MMLogger.get_current_instance()
    level = logger.level
    with DefaultScope.overwrite_default_scope('mmdet'):
        source = MODELS.build(cfg)
        load_state_dict(source, reference, strict=True)
        ours = MODELS.build(dict(cfg, init_cfg=dict(type='Pretrained', checkpoint=dst,
                                                    trained_with_ws=False)))
        logger.setLevel(logging.WARNING)  # init_weights logs every parameter at INFO level
        try:
            ours.init_weights()
        finally:
            logger.setLevel(level)
    source.eval()  # mmdet's ResNet.train returns None, so no chaining
    ours.eval()
    x = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = source(x), ours(x)
    diff = max((a - b).abs().max().item() for a, b in zip(expected, got))
    scale = max(a.abs().max().item() for a in expected)
    if not diff <= 1e-5 * max(1.0, scale):  # also catches NaN/inf
        raise VerificationError(f'{describe(spec)} from {dst} differs from the source network '
                                f'(conv={conv}): max |diff| {diff:.3g}, output scale {scale:.3g}')
    return diff


def convert(src: str, dst: str, depth: Optional[int] = None, arch: Optional[str] = None,
            verify: bool = False, force: bool = False, conv: str = 'WSConv',
            input_size: int = 224, groups: Optional[int] = None,
            base_width: Optional[int] = None, trained_with_ws: Optional[bool] = None) -> dict:
    """Convert SRC into the backbone checkpoint DST and return its meta.

    ``depth``/``arch`` (and for a ResNeXt ``groups``/``base_width``, e.g. 32/4 for the X-101
    32x4d configs) state the expected network: any other is refused, since a detector's
    Pretrained init would skip mismatched tensors with a mere warning. With ``verify`` the
    written checkpoint is checked by :func:`verify_checkpoint` (with convs of type ``conv``)
    before it replaces DST. Refuses to overwrite DST unless ``force``. ``trained_with_ws``
    states whether SRC's weights were trained with WS (None: :func:`infer_trained_with_ws`);
    ``meta.trained_with_ws`` records it, and is left out when unknown.
    """
    src, dst = osp.abspath(src), osp.abspath(dst)
    if osp.realpath(src) == osp.realpath(dst):
        raise ConversionError('DST must not be SRC')
    if osp.exists(dst) and not force:
        raise FileExistsError(f'{dst} exists; use --force to replace it')
    steps = 4 if verify else 3
    print(f'[1/{steps}] loading {src}')
    ckpt = load_source(src)
    state, fmt, dropped = extract_backbone(ckpt)
    spec = infer_arch(state)
    print(f'found {describe(spec)} ({fmt} format): {spec["block"]} blocks per stage '
          f'{spec["stages"]}, dropping {len(dropped)} classifier tensors '
          f'({", ".join(dropped[:3])}{" ..." if len(dropped) > 3 else ""})')
    wanted = {k: v for k, v in (('arch', arch), ('depth', depth), ('groups', groups),
                                ('base_width', base_width)) if v is not None}
    if any(spec.get(k) != v for k, v in wanted.items()):
        raise ConversionError(
            f'{src} holds {describe(spec)} (arch={spec["arch"]}, depth={spec["depth"]}) but '
            + ', '.join(f'{k}={v}' for k, v in wanted.items()) + ' was expected; nothing written')
    print(f'[2/{steps}] converting {len(state)} tensors')
    out, added = to_mmdet(state, spec)
    if added:
        print(f'added {added} missing BN num_batches_tracked counters (set to 0)')
    if trained_with_ws is None:
        trained_with_ws = infer_trained_with_ws(ckpt, fmt)
    print({True: 'trained with WS: yes', False: 'trained with WS: no (WS backbones refuse it)',
           None: 'trained with WS: unknown (WS backbones load it with a warning; state it with '
                 '--trained-with-ws)'}[trained_with_ws])
    marked = {} if trained_with_ws is None else dict(trained_with_ws=trained_with_ws)
    meta = dict(source=src, format=fmt, sha256=sha256sum(src), arch=spec['arch'],
                depth=spec['depth'],
                **{k: spec[k] for k in ('groups', 'base_width') if k in spec}, **marked,
                converter=f'mmdet-eps {mmdet_eps.__version__} '
                'tools/model_converters/convert_imagenet_ckpt.py')
    print(f'[3/{steps}] saving {len(out)} tensors')
    with atomic_output(dst) as tmp:
        torch.save(dict(state_dict=out, meta=meta), tmp)
        if verify:
            print(f'[4/{steps}] verifying against the source network (conv={conv}, '
                  f'input 1x3x{input_size}x{input_size})')
            diff = verify_checkpoint(state, tmp, spec, conv, input_size)
            print(f'verify ok: max |diff| of the stage outputs = {diff:.3g}')
    print(f'wrote {dst}\nuse it as: backbone={backbone_cfg(spec, conv, dst)}')
    return meta


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point; returns 0, 1 (verification failed) or 2 (refused/bad input)."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='ImageNet checkpoint (PytorchInsight, torchvision, mmpretrain)')
    parser.add_argument('dst', help='backbone checkpoint to write')
    parser.add_argument('--depth', type=int, choices=sorted(set(DEPTHS.values())),
                        help='expected depth; another is refused')
    parser.add_argument('--arch', choices=ARCHS, help='expected family; another is refused')
    parser.add_argument('--groups', type=int,
                        help='expected ResNeXt groups (32 for 32x4d); another is refused')
    parser.add_argument('--base-width', type=int,
                        help='expected ResNeXt width per group (4 for 32x4d); another is refused')
    parser.add_argument('--verify', action='store_true',
                        help='check that the converted backbone computes what the source does')
    parser.add_argument('--conv', choices=CONVS, default='WSConv',
                        help='conv type used by --verify (the authors\' checkpoints are WS)')
    parser.add_argument('--input-size', type=int, default=224, help='--verify input size')
    parser.add_argument('--trained-with-ws', choices=tuple(TRAINED_WITH_WS), default='auto',
                        help='whether SRC was trained with WS (recorded in meta; auto: yes for '
                        "the authors' checkpoints, no for torchvision's, from the saved config "
                        'for mmpretrain)')
    parser.add_argument('--force', action='store_true', help='replace an existing DST')
    args = parser.parse_args(argv)
    try:
        convert(args.src, args.dst, args.depth, args.arch, args.verify, args.force, args.conv,
                args.input_size, args.groups, args.base_width,
                TRAINED_WITH_WS[args.trained_with_ws])
    except VerificationError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    except (ConversionError, UnsafeCheckpointError, FileNotFoundError, FileExistsError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
