"""ResNet and ResNeXt with weight-standardized convolutions.

Thin subclasses of mmdet's backbones: same arguments, same state-dict keys; the default
``conv_cfg`` differs, and the normalized convs are normalized in groups (``group_by``), a few
kernels per group instead of a few per conv.
"""
from typing import List, Optional, Tuple

import torch.distributed as dist
from mmdet.models.backbones import ResNet, ResNeXt
from mmdet.registry import MODELS
from mmdet.utils import ConfigType
from torch import Tensor

from mmdet_eps.models.layers import FilterGroups, NormalizedConv2d

#: ``'stage'``: one autograd node per residual stage (the stem joins the first), so DDP still
#: overlaps; ``'backbone'``: one for the whole backbone (fewest ops); None: every conv alone;
#: ``'auto'``: ``'stage'`` when built in a distributed run of several processes, else
#: ``'backbone'``.
GROUP_BY = ('auto', 'stage', 'backbone', None)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GroupedNormMixin:
    """Attaches :class:`FilterGroups` to the backbone's stages or to the whole backbone.

    The groups whose region starts with the backbone (the whole backbone, or the stem with the
    first stage) are normalized by the backbone's own ``forward`` rather than by hooks, so that
    ``torch.compile`` of the backbone traces one frame, as for mmdet's ResNet; later stages'
    groups are bracketed by hooks on the stage modules, which the compiler inlines.
    """

    def _group_convs(self, group_by: Optional[str], fused: Optional[bool]) -> None:
        if group_by not in GROUP_BY:
            raise ValueError(f'{type(self).__name__}: group_by must be one of {GROUP_BY}, '
                             f'got {group_by!r}')
        if not (fused is None or isinstance(fused, bool)):
            raise ValueError(f'{type(self).__name__}: fused must be None, True or False, '
                             f'got {fused!r}')
        if fused is not None:  # also for convs that normalize alone
            for module in self.modules():
                if isinstance(module, NormalizedConv2d):
                    module.fused = fused
        if group_by == 'auto':
            group_by = 'stage' if _distributed() else 'backbone'
        self.group_by = group_by
        attached: List[FilterGroups] = []
        if group_by == 'stage':
            stages = [getattr(self, name) for name in self.res_layers]
            stem = [getattr(self, 'stem' if self.deep_stem else 'conv1')]
            attached = [FilterGroups(self, stem + stages[:1], fused, hooks=False)]
            attached += [FilterGroups(stage, fused=fused) for stage in stages[1:]]
        elif group_by == 'backbone':
            attached = [FilterGroups(self, fused=fused, hooks=False)]
        self.filter_groups: List[FilterGroups] = [g for g in attached if g.groups]
        #: The groups this backbone's ``forward`` normalizes and releases itself.
        self.own_groups: Optional[FilterGroups] = (
            attached[0] if attached and attached[0].groups else None)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        own = self.own_groups
        if own is None:
            return super().forward(x)
        own.normalize()
        try:
            return super().forward(x)
        finally:
            own.release()

    def ungroup_convs(self) -> None:
        """Detach the filter groups (their hooks and their hold on the convs): every conv
        normalizes alone again. Call it before replacing the convs, as the bake tool does."""
        for groups in self.filter_groups:
            groups.remove()
        self.filter_groups = []
        self.own_groups = None
        self.group_by = None


def _ws_conv_cfg(conv_cfg: Optional[ConfigType]) -> ConfigType:
    return dict(type='WSConv') if conv_cfg is None else conv_cfg


@MODELS.register_module()
class WSResNet(_GroupedNormMixin, ResNet):
    """mmdet's ResNet (depths 18-152) with ``WSConv`` as its default conv.

    Args:
        conv_cfg (dict, optional): Conv layer config. Defaults to ``dict(type='WSConv')``.
        group_by (str, optional): How the normalized convs are batched (per filter shape, one
            autograd node per region): ``'stage'`` (a region per residual stage, the stem with
            the first: DDP all-reduces a stage's gradients while earlier stages run their
            backward), ``'backbone'`` (one region: fewest ops), None (each conv alone) or
            ``'auto'`` (``'stage'`` if built in a distributed run of several processes, else
            ``'backbone'``). Defaults to ``'auto'``.
        fused (bool, optional): Normalize with the fused CPU ops (one op forward and one
            backward per region, ``mmdet_eps.ops``) or torch ops (a few per filter shape, any
            device). Defaults to None: fused where they apply (CPU weights, extension built).
        *args, **kwargs: As mmdet's ``ResNet``.
    """

    def __init__(self, *args, conv_cfg: Optional[ConfigType] = None,
                 group_by: Optional[str] = 'auto', fused: Optional[bool] = None,
                 **kwargs) -> None:
        super().__init__(*args, conv_cfg=_ws_conv_cfg(conv_cfg), **kwargs)
        self._group_convs(group_by, fused)


@MODELS.register_module()
class WSResNeXt(_GroupedNormMixin, ResNeXt):
    """mmdet's ResNeXt (``groups``, ``base_width``) with ``WSConv`` as its default conv.

    Args:
        conv_cfg (dict, optional): Conv layer config. Defaults to ``dict(type='WSConv')``.
        group_by (str, optional): As :class:`WSResNet`. Defaults to ``'auto'``.
        fused (bool, optional): As :class:`WSResNet`. Defaults to None.
        *args, **kwargs: As mmdet's ``ResNeXt``.
    """

    def __init__(self, *args, conv_cfg: Optional[ConfigType] = None,
                 group_by: Optional[str] = 'auto', fused: Optional[bool] = None,
                 **kwargs) -> None:
        super().__init__(*args, conv_cfg=_ws_conv_cfg(conv_cfg), **kwargs)
        self._group_convs(group_by, fused)
