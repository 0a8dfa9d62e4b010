#!/usr/bin/env python
"""Bake a detector's weight-normalized convs into plain ``nn.Conv2d`` for deployment.

Every WS / WN / CWN conv (mmdet_eps ``WSConv``, ``WNConv`` incl. its gain, ``CWNConv``, and
mmcv's ``ConvWS2d`` / ``ConvAWS2d``) computes ``conv(x, normalize(W))``. Baking stores
``normalize(W)`` as the weight of a plain conv, so the deployed model does the same arithmetic
with no normalization code, and runs anywhere a plain ResNet runs (ONNX, TensorRT, mmdeploy).

    python tools/model_converters/bake_ws.py CONFIG CHECKPOINT OUT [--out-config OUT.py] \
        [--cfg-options ...]

writes

- ``OUT``: a checkpoint ``{'meta', 'state_dict'}`` whose state dict plain convs load (same keys;
  WNConv's ``gain`` and ConvAWS's ``weight_gamma``/``weight_beta`` are folded in and dropped);
- ``--out-config`` (default: ``OUT`` with suffix ``.py``): the config with ``WSResNet`` ->
  ``ResNet``, ``WSResNeXt`` -> ``ResNeXt`` and every ``conv_cfg`` naming a normalized conv set to
  ``None`` (plain conv).

Before writing, it builds the model of the new config, loads the baked state dict strictly,
checks that no normalized conv is left, and compares its features (``extract_feat``) on a random
input with the original model's: they must agree to float rounding (``--atol``). Both files are
written atomically (temporary file, then rename): a failed run leaves no partial output.
"""
import argparse
import copy
import os.path as osp
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from mmdet_eps.models.layers import get_norm_family

#: The backbones whose default conv is a normalized one, and their plain counterparts.
PLAIN_BACKBONES = {'WSResNet': 'ResNet', 'WSResNeXt': 'ResNeXt'}


def _log(msg: str) -> None:
    print(f'[bake_ws {time.strftime("%H:%M:%S")}] {msg}', flush=True)


# ----------------------------------------------------------------------------- torch only

def normalized_weight(module: nn.Module) -> Optional[torch.Tensor]:
    """The weight ``module``'s forward convolves with, or None for a plain module."""
    if get_norm_family(module) is None:
        return None
    if hasattr(module, 'normalize'):  # mmdet_eps' layers (WNConv's gain included)
        return module.normalize(module.weight)
    if hasattr(module, '_get_weight'):  # mmcv's ConvAWS2d
        return module._get_weight(module.weight)
    w = module.weight  # mmcv's ConvWS2d: conv_ws_2d's arithmetic
    flat = w.view(w.size(0), -1)
    shape = (w.size(0), ) + (1, ) * (w.dim() - 1)
    mean = flat.mean(dim=1, keepdim=True).view(shape)
    std = flat.std(dim=1, keepdim=True).view(shape)
    return (w - mean) / (std + module.eps)


def plain_conv(module: nn.Conv2d, weight: torch.Tensor) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` with ``module``'s geometry, ``weight`` and bias."""
    conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                     stride=module.stride, padding=module.padding, dilation=module.dilation,
                     groups=module.groups, bias=module.bias is not None,
                     padding_mode=module.padding_mode, device=weight.device, dtype=weight.dtype)
    conv.weight.copy_(weight)
    if module.bias is not None:
        conv.bias.copy_(module.bias)
    conv.train(module.training)
    return conv


@torch.no_grad()
def bake_module(model: nn.Module) -> List[Tuple[str, str]]:
    """Replace, in place, every normalized conv of ``model`` by a plain conv holding its
    normalized weight. Returns ``(name, class name)`` of each replaced module."""
    for module in model.modules():  # grouped backbones: no hooks left normalizing old convs
        if hasattr(module, 'ungroup_convs'):
            module.ungroup_convs()
    baked = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Conv2d) or type(module) is nn.Conv2d:
            continue
        weight = normalized_weight(module)
        if weight is None:
            continue
        parent_name, _, child = name.rpartition('.')
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, plain_conv(module, weight.detach()))
        baked.append((name, type(module).__name__))
    return baked


# ----------------------------------------------------------------------------- config

def _names_normalized_conv(conv_type) -> bool:
    """Whether a ``conv_cfg`` type (a registry name or a class) builds a normalized conv."""
    from mmengine.registry import MODELS
    cls = MODELS.get(conv_type) if isinstance(conv_type, str) else conv_type
    return cls is not None and get_norm_family(cls) is not None


def bake_config_dict(cfg: dict) -> Tuple[dict, List[str]]:
    """A copy of ``cfg`` with normalized backbones and conv_cfgs made plain; and what changed."""
    changes: List[str] = []

    def walk(node, path):
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                where = f'{path}.{key}' if path else str(key)
                if (key == 'conv_cfg' and isinstance(value, dict)
                        and _names_normalized_conv(value.get('type'))):
                    changes.append(f'{where}: {value} -> None')
                    out[key] = None
                elif key == 'type' and value in PLAIN_BACKBONES:
                    changes.append(f'{where}: {value} -> {PLAIN_BACKBONES[value]}')
                    out[key] = PLAIN_BACKBONES[value]
                else:
                    out[key] = walk(value, where)
            return out
        if isinstance(node, (list, tuple)):
            return type(node)(walk(v, f'{path}[{i}]') for i, v in enumerate(node))
        return node

    return walk(copy.deepcopy(cfg), ''), changes


# ----------------------------------------------------------------------------- main

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments."""
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config of the trained detector')
    parser.add_argument('checkpoint', help='its checkpoint')
    parser.add_argument('out', help='baked checkpoint to write (.pth)')
    parser.add_argument('--out-config', help='baked config to write (default: OUT with .py)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, key=value (as in tools/test.py)')
    parser.add_argument('--input-size', type=int, nargs=2, default=(256, 320),
                        metavar=('H', 'W'), help='random input of the feature check')
    parser.add_argument('--atol', type=float, default=1e-4,
                        help='largest feature difference accepted (relative to max |feature|)')
    return parser.parse_args(argv)


def _extract(model, x):
    feats = model.extract_feat(x)
    return list(feats) if isinstance(feats, (list, tuple)) else [feats]


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    """Bake, check, then write the checkpoint and the config; returns what was done."""
    args = parse_args(argv)
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint

    out_config = args.out_config or osp.splitext(args.out)[0] + '.py'
    if osp.abspath(out_config) == osp.abspath(args.out):
        raise SystemExit('bake_ws: --out-config must differ from OUT')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import mmdet_eps  # noqa: F401  registers WS layers, safe checkpoint loading
    from mmdet_eps.utils import atomic_output, write_atomic
    register_all_modules(init_default_scope=False)
    init_default_scope(cfg.get('default_scope', 'mmdet'))

    _log(f'building {cfg.model.type} from {args.config}')
    model = MODELS.build(cfg.model)
    _log(f'loading {args.checkpoint}')
    checkpoint = load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    model.eval()

    torch.manual_seed(0)
    x = torch.randn(1, 3, *args.input_size)
    can_check = hasattr(model, 'extract_feat')
    with torch.no_grad():
        reference = _extract(model, x) if can_check else None

    baked = bake_module(model)
    if not baked:
        raise SystemExit('bake_ws: the model has no weight-normalized conv: nothing to bake')
    counts: Dict[str, int] = {}
    for _, kind in baked:
        counts[kind] = counts.get(kind, 0) + 1
    _log(f'baked {len(baked)} convs: ' + ', '.join(f'{n} {k}' for k, n in sorted(counts.items())))
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}

    cfg_dict, changes = bake_config_dict(cfg.to_dict())
    for change in changes:
        _log(f'config {change}')
    baked_cfg = Config(cfg_dict)

    _log('checking: build the baked config, load strictly, compare features')
    plain = MODELS.build(baked_cfg.model)
    leftover = [name for name, m in plain.named_modules() if normalized_weight(m) is not None]
    if leftover:
        raise SystemExit(f'bake_ws: the baked config still builds normalized convs at '
                         f'{leftover[:5]}{" ..." if len(leftover) > 5 else ""}: their conv_cfg '
                         'is not one bake_ws knows; edit the config by hand')
    plain.load_state_dict(state_dict, strict=True)
    plain.eval()
    max_diff = None
    if can_check:
        with torch.no_grad():
            outputs = _extract(plain, x)
        scale = max(r.abs().max().item() for r in reference) or 1.
        max_diff = max((o - r).abs().max().item() for o, r in zip(outputs, reference)) / scale
        _log(f'features: max |baked - original| / max |original| = {max_diff:.3g}')
        if not max_diff <= args.atol:
            raise SystemExit(f'bake_ws: baked features differ by {max_diff:.3g} > '
                             f'--atol {args.atol}; nothing written')
    else:
        _log('the model has no extract_feat: feature check skipped')

    meta = dict(checkpoint.get('meta', {}) if isinstance(checkpoint, dict) else {})
    meta.update(baked_from=osp.abspath(args.checkpoint), baked_convs=len(baked),
                baked_config=osp.abspath(out_config))
    with atomic_output(args.out) as tmp:
        torch.save(dict(meta=meta, state_dict=state_dict), tmp)
    _log(f'wrote {args.out}')
    write_atomic(out_config, baked_cfg.pretty_text)
    _log(f'wrote {out_config}')
    return dict(out=args.out, out_config=out_config, baked=baked, changes=changes,
                max_rel_diff=max_diff)


if __name__ == '__main__':
    main(sys.argv[1:])
