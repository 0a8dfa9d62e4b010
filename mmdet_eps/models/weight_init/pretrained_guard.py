"""mmengine's ``Pretrained`` init that keeps weights trained without WS out of WS convs.

A WS conv standardizes its filters, so ImageNet weights trained without WS give it a scrambled
start (the BN statistics no longer match the standardized convs) that nothing in the state-dict
keys reveals. :class:`GuardedPretrainedInit` replaces mmengine's ``Pretrained`` in the registry:
for a module without WS convs it is mmengine's, and for one with WS convs it judges the
checkpoint first:

- trained with WS (loaded silently): a file whose ``meta.trained_with_ws`` is True (the mark of
  ``tools/model_converters/convert_imagenet_ckpt.py``), a file in the paper authors' layout
  (their BN+WS releases) and mmdet's JHU GN+WS weights (``open-mmlab://jhu/*_gn_ws``);
- trained without WS (refused): ``torchvision://``, ``open-mmlab://`` names other than the JHU
  GN+WS ones, ``mmcls://``, torchvision / timm download URLs, and files marked False;
- anything else (a file or URL that does not say): loaded, with a warning.

``trained_with_ws`` in the ``init_cfg`` states it instead: True loads silently, False loads
weights trained without WS on purpose (the opt-out).

A refused checkpoint is not loaded, and the module's next forward raises
:class:`NonWSWeightsError`, unless a state dict holding all its WS conv weights is loaded first:
mmengine's runner initializes the weights before it loads ``load_from`` / ``--resume``, and such
a run must not be blocked.
"""
import logging
import re
from typing import Any, List, Optional

from mmcv.cnn.bricks.conv_ws import ConvAWS2d
from mmengine.logging import print_log
from mmengine.model.weight_init import PretrainedInit
from mmengine.registry import WEIGHT_INITIALIZERS
from mmengine.runner.checkpoint import CheckpointLoader
from torch import nn

from mmdet_eps.models.layers import get_norm_family

#: Checkpoint names and URLs of weights known to be trained without WS.
PLAIN_SOURCES = re.compile(
    r'(torchvision|modelzoo|mmcls|open-?mmlab)://'
    r'|https?://download\.pytorch\.org/models/'
    r'|https?://github\.com/(rwightman|huggingface)/pytorch-image-models/releases/')
#: mmdet's JHU GN+WS ImageNet weights: by name and by the URL the name resolves to.
WS_SOURCES = re.compile(r'open-?mmlab://jhu/\w+_gn_ws$'
                        r'|https?://download\.openmmlab\.com/pretrain/third_party/\w+_gn_ws-')
#: Top-level keys of the paper authors' ImageNet checkpoints (implus/PytorchInsight).
AUTHORS_KEYS = {'epoch', 'state_dict', 'acc', 'best_acc', 'optimizer'}
#: Where weights trained with WS come from, for the messages.
WS_WEIGHTS_HINT = (
    "Start from weights trained with WS: the authors' BN+WS ImageNet releases "
    '(implus/PytorchInsight) or your own from configs/imagenet/ (mmpretrain), converted with '
    "tools/model_converters/convert_imagenet_ckpt.py, or mmdet's JHU GN+WS weights "
    "('open-mmlab://jhu/resnet50_gn_ws'); see docs/convert.md.")


class NonWSWeightsError(RuntimeError):
    """A module with WS convs was to run on weights trained without WS."""


def ws_conv_weight_keys(module: nn.Module) -> List[str]:
    """State-dict keys of ``module``'s WS conv weights (ours and mmcv's ``ConvWS2d``; not
    ``ConvAWS2d``, which adapts a plain checkpoint itself)."""
    return [f'{name}.weight' if name else 'weight' for name, m in module.named_modules()
            if get_norm_family(m) == 'ws' and not isinstance(m, ConvAWS2d)]


def source_trained_with_ws(checkpoint: str) -> Optional[bool]:
    """Whether the checkpoint ``checkpoint`` names holds weights trained with WS, judged from
    its name alone: True, False, or None when the name does not tell."""
    if WS_SOURCES.match(checkpoint):
        return True
    return False if PLAIN_SOURCES.match(checkpoint) else None


def checkpoint_trained_with_ws(ckpt: Any) -> Optional[bool]:
    """Whether a loaded checkpoint says its weights were trained with WS: the converter's
    ``meta.trained_with_ws``, or the paper authors' layout; None when it does not say."""
    if not isinstance(ckpt, dict):
        return None
    meta = ckpt.get('meta')
    if isinstance(meta, dict) and isinstance(meta.get('trained_with_ws'), bool):
        return meta['trained_with_ws']
    state = ckpt.get('state_dict')
    if set(ckpt) == AUTHORS_KEYS and isinstance(state, dict) and state and all(
            isinstance(k, str) and k.startswith('module.') for k in state):
        return True
    return None


class _HeldBack:
    """Keeps ``module`` from running on weights that were not loaded: its next forward raises
    ``message``, unless a state dict holding every key of ``keys`` is loaded into it first."""

    def __init__(self, module: nn.Module, keys: List[str], message: str) -> None:
        self.keys, self.message, self.replaced = keys, message, False
        self.handles = [module.register_forward_pre_hook(self._check),
                        module._register_load_state_dict_pre_hook(self._see_load)]

    def _see_load(self, state_dict: dict, prefix: str, *args) -> None:
        self.replaced = self.replaced or all(prefix + key in state_dict for key in self.keys)

    def _check(self, module: nn.Module, args) -> None:
        if not self.replaced:
            raise NonWSWeightsError(self.message)
        for handle in self.handles:
            handle.remove()


@WEIGHT_INITIALIZERS.register_module(name='Pretrained', force=True)
class GuardedPretrainedInit(PretrainedInit):
    """mmengine's ``Pretrained`` init that refuses weights trained without WS for WS convs.

    Args:
        checkpoint (str): As mmengine's ``PretrainedInit``.
        prefix (str, optional): As mmengine's ``PretrainedInit``. Defaults to None.
        map_location (str): As mmengine's ``PretrainedInit``. Defaults to 'cpu'.
        trained_with_ws (bool, optional): Whether the checkpoint's weights were trained with WS.
            True: load silently; False: load them into WS convs anyway (the opt-out). Defaults
            to None: judged from the checkpoint (see the module docstring).
    """

    def __init__(self, checkpoint: str, prefix: Optional[str] = None,
                 map_location: str = 'cpu', trained_with_ws: Optional[bool] = None) -> None:
        if not (trained_with_ws is None or isinstance(trained_with_ws, bool)):
            raise ValueError('init_cfg.trained_with_ws must be None, True or False, '
                             f'got {trained_with_ws!r}')
        super().__init__(checkpoint, prefix=prefix, map_location=map_location)
        self.trained_with_ws = trained_with_ws

    def __call__(self, module: nn.Module) -> None:
        keys = ws_conv_weight_keys(module)
        if not keys:
            return super().__call__(module)
        name = f'{type(module).__name__} ({len(keys)} WS convs)'
        stated = self.trained_with_ws
        judged = stated if stated is not None else self._judge()
        if judged is False and stated is None:
            message = (f'{name}: init_cfg loads {self.checkpoint!r}, weights trained without '
                       'weight standardization. A WS conv standardizes its filters, so these '
                       'weights give it a scrambled start (the BN statistics no longer match the '
                       'standardized convs) that nothing in the state-dict keys reveals. '
                       f'{WS_WEIGHTS_HINT} To load these weights anyway, set '
                       'trained_with_ws=False in the init_cfg.')
            print_log(f'{message} Not loaded: the first forward stops here unless a whole '
                      'checkpoint (load_from, --resume) replaces these weights first.',
                      logger='current', level=logging.WARNING)
            _HeldBack(module, keys, message)
            return None
        if judged is None:
            print_log(f'{name}: {self.checkpoint!r} does not say whether its weights were '
                      'trained with weight standardization (no meta.trained_with_ws mark); '
                      f'loading it. If they were trained without WS, the WS convs start '
                      f'scrambled. {WS_WEIGHTS_HINT} Set trained_with_ws=True in the init_cfg '
                      'once you know it.', logger='current', level=logging.WARNING)
        elif stated is False:
            print_log(f'{name}: loading {self.checkpoint!r}, weights trained without weight '
                      'standardization, as init_cfg.trained_with_ws=False asks.',
                      logger='current')
        return super().__call__(module)

    def _judge(self) -> Optional[bool]:
        """Judge the checkpoint by its name, else by what the loaded file says."""
        judged = source_trained_with_ws(str(self.checkpoint))
        if judged is None:
            judged = checkpoint_trained_with_ws(
                CheckpointLoader.load_checkpoint(self.checkpoint, map_location='cpu',
                                                 logger='current'))
        return judged
