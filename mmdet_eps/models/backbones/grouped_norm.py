"""Grouped normalization for WS backbones: the normalized convs of a region (a stage, or the
whole backbone) are normalized together, a few kernels per filter shape instead of a few per
conv."""
from typing import List, Optional, Tuple

import torch.distributed as dist
from mmdet.utils import ConfigType
from torch import Tensor, nn

from mmdet_eps.models.layers import FilterGroups, NormalizedConv2d

#: ``'stage'``: one autograd node per stage (the stem joins the first), so DDP still overlaps;
#: ``'backbone'``: one for the whole backbone (fewest ops); None: every conv alone; ``'auto'``:
#: ``'stage'`` when built in a distributed run of several processes, else ``'backbone'``.
GROUP_BY = ('auto', 'stage', 'backbone', None)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def ws_conv_cfg(conv_cfg: Optional[ConfigType]) -> ConfigType:
    """A WS backbone's ``conv_cfg``: ``WSConv`` unless one is given."""
    return dict(type='WSConv') if conv_cfg is None else conv_cfg


class GroupedNormMixin:
    """Attaches :class:`FilterGroups` to the backbone's stages or to the whole backbone.

    The groups whose region starts with the backbone (the whole backbone, or the stem with the
    first stage) are normalized by the backbone's own ``forward`` rather than by hooks, so that
    ``torch.compile`` of the backbone traces one frame, as for mmdet's ResNet; later stages'
    groups are bracketed by hooks on the stage modules, which the compiler inlines. A backbone
    using it defines :meth:`_stage_regions`.
    """

    def _stage_regions(self) -> Tuple[List[nn.Module], List[nn.Module]]:
        """The regions of ``group_by='stage'``: the modules that run first (the stem and the
        first stage, normalized by the backbone's forward), and each later stage."""
        raise NotImplementedError

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
            first, later = self._stage_regions()
            attached = [FilterGroups(self, first, fused, hooks=False)]
            attached += [FilterGroups(stage, fused=fused) for stage in later]
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
