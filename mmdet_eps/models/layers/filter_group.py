"""Normalize the weights of many convs together: one autograd node per region of a model.

A ResNet-50 has 53 WS convs but only a dozen filter shapes. :class:`FilterGroups` attaches to a
region of a model (a backbone stage, or a whole backbone) and splits the region's normalized
convs into :class:`FilterGroup` s, one per filter shape and kind. When the region's forward
starts, all its groups are normalized in one call (one autograd node, a few kernels per group)
and each group holds its members' results (``weights``), from which each member takes its own;
when the region's forward ends, the groups drop them. So the owner of a normalized weight is its
group, and it lives for one forward of its region: nothing carries over to the next call, and
every write to a weight is seen.

Cutting regions per stage keeps DDP's overlap: a stage's weight gradients are complete as soon as
that stage's backward is done, while earlier stages still run theirs.
"""
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

from torch import Tensor, nn

from .filter_normalize import normalize_batch
from .normalized_conv import NormalizedConv2d


class FilterGroup:
    """Normalized convs of one filter shape and kind, normalized together.

    The members' settings (``eps``, std divisor) are read when the group is built.

    Args:
        convs (Sequence[NormalizedConv2d]): Members; they must agree on ``group_key()`` and
            belong to no other group.
    """

    def __init__(self, convs: Sequence[NormalizedConv2d]) -> None:
        if not convs:
            raise ValueError('a FilterGroup needs at least one conv')
        key = convs[0].group_key()
        for index, conv in enumerate(convs):
            if conv.group_key() != key:
                raise ValueError(f'{conv} cannot be normalized together with {convs[0]}')
            if conv.filter_group is not None:
                raise ValueError(f'{conv} already belongs to a FilterGroup')
            conv.filter_group, conv.group_index = self, index
        self.convs: List[NormalizedConv2d] = list(convs)
        self.spec = convs[0].filter_norm()
        self.sizes = [conv.out_channels for conv in convs]
        #: The members' normalized weights during one forward of the region, else None.
        self.weights: Optional[Tuple[Tensor, ...]] = None

    def params(self) -> List[Tensor]:
        """The members' weights (read through ``_parameters``: no ``Module.__getattr__``)."""
        return [conv._parameters['weight'] for conv in self.convs]

    def hold(self, weights: List[Tensor]) -> None:
        """Keep the members' normalized weights for this forward."""
        self.weights = tuple(weights)

    def release(self) -> None:
        """Drop the normalized weights (autograd keeps what backward needs)."""
        self.weights = None

    def dissolve(self) -> None:
        """Let the members normalize themselves again."""
        self.release()
        for conv in self.convs:
            conv.filter_group = None


class FilterGroups:
    """The groups of one region: normalized together at the start of the region's forward,
    released at its end, by forward hooks on the region or by the region's own forward
    (``hooks=False``: a backbone brackets its forward itself, so that ``torch.compile`` of the
    backbone sees one frame).

    Convs are grouped by ``group_key()`` in the order the region lists them. Convs that cannot
    join a group (``groupable`` False, e.g. WNConv with a gain) and regions run under activation
    checkpointing (``with_cp``: the recomputation in backward happens outside the region's
    forward) are left to normalize themselves.

    Args:
        region (nn.Module): The module whose forward brackets the normalization.
        members (Sequence[nn.Module], optional): The modules whose convs are grouped, all run
            within ``region``'s forward. Defaults to None: ``region`` itself.
        fused (bool, optional): Normalize with the fused CPU ops or torch ops (see
            ``filter_normalize.normalize_batch``). Defaults to None: fused where they apply.
        hooks (bool): Bracket the region's forward with hooks; False: the region's forward
            calls :meth:`normalize` and :meth:`release` itself. Defaults to True.
    """

    def __init__(self, region: nn.Module, members: Optional[Sequence[nn.Module]] = None,
                 fused: Optional[bool] = None, hooks: bool = True) -> None:
        self.fused = fused
        by_key: 'OrderedDict[tuple, List[NormalizedConv2d]]' = OrderedDict()
        modules = [m for member in (members or [region]) for m in member.modules()]
        if not any(getattr(m, 'with_cp', False) for m in modules):
            for module in modules:
                if isinstance(module, NormalizedConv2d) and module.groupable:
                    by_key.setdefault(module.group_key(), []).append(module)
        self.groups = [FilterGroup(convs) for convs in by_key.values()]
        self.specs = [group.spec for group in self.groups]
        self.handles = []
        if self.groups and hooks:
            self.handles = [region.register_forward_pre_hook(self._normalize),
                            region.register_forward_hook(self._release)]

    def normalize(self) -> None:
        """Normalize every group's weights in one call and hand them to the groups."""
        outs = normalize_batch(self.specs, [group.params() for group in self.groups], self.fused)
        for group, weights in zip(self.groups, outs):
            group.hold(weights)

    def release(self) -> None:
        for group in self.groups:
            group.release()

    def _normalize(self, module: nn.Module, args) -> None:
        self.normalize()

    def _release(self, module: nn.Module, args, output) -> None:
        self.release()

    def remove(self) -> None:
        """Detach from the region: its convs normalize themselves again."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        for group in self.groups:
            group.dissolve()
