"""Grouped normalization: same numbers as mmcv's per-conv ConvWS2d, one autograd node per
group, DDP-friendly gradient order, no stale weights (MeanTeacher, .data, load_state_dict)."""
import copy

import pytest
import torch
from mmdet.engine.hooks import MeanTeacherHook
from mmdet.models.backbones import ResNet
from torch import nn

from mmdet_eps.models.backbones import WSResNet
from mmdet_eps.models.layers import CWNConv, FilterGroups, WNConv, WSConv
from mmdet_eps.utils.op_count import count_ops


def _pair(group_by, depth=18, fused=None, **kwargs):
    """A WS-ResNet and mmdet's ResNet with mmcv's ConvWS (per conv, no cache), same weights."""
    torch.manual_seed(0)
    ours = WSResNet(depth=depth, group_by=group_by, base_channels=8, norm_eval=False,
                    fused=fused, **kwargs)
    ref = ResNet(depth=depth, conv_cfg=dict(type='ConvWS'), base_channels=8, norm_eval=False,
                 **kwargs)
    ref.load_state_dict(ours.state_dict())
    return ours.double(), ref.double()


def _outputs_and_grads(model, x):
    model.zero_grad()
    outs = model(x)
    sum(o.square().mean() for o in outs).backward()
    return outs, [p.grad for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize('group_by', ['auto', 'stage', 'backbone', None])
@pytest.mark.parametrize('depth', [18, pytest.param(50, marks=pytest.mark.slow)])
@pytest.mark.parametrize('fused', [None, False])
def test_grouped_backbone_equals_mmcv_convws(group_by, depth, fused):
    ours, ref = _pair(group_by, depth, fused=fused)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    (outs, grads), (ref_outs, ref_grads) = _outputs_and_grads(ours, x), _outputs_and_grads(ref, x)
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def _normalize_nodes(model, x):
    """Number of normalization nodes in the autograd graph of one forward."""
    seen, stack, count = set(), [sum(o.sum() for o in model(x)).grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += type(node).__name__ in ('_NormalizeFiltersBackward',
                                         '_FusedNormalizeFiltersBackward')
        stack.extend(n for n, _ in node.next_functions)
    return count


@pytest.mark.parametrize('fused', [True, False])
def test_one_autograd_node_per_region(fused):
    x = torch.randn(2, 3, 32, 32)
    stage = WSResNet(depth=50, base_channels=4, group_by='stage', fused=fused)
    # filter shapes per region; the stem joins the first stage
    assert [len(g.groups) for g in stage.filter_groups] == [1 + 3, 4, 4, 4]
    assert _normalize_nodes(stage, x) == 4  # one per stage
    backbone = WSResNet(depth=50, base_channels=4, group_by='backbone', fused=fused)
    assert [len(g.groups) for g in backbone.filter_groups] == [11]
    assert _normalize_nodes(backbone, x) == 1
    per_conv = WSResNet(depth=50, base_channels=4, group_by=None, fused=fused)
    assert _normalize_nodes(per_conv, x) == 53


def test_stage_groups_finish_a_stage_before_the_next_starts_its_backward():
    """What DDP needs to overlap: every weight gradient of stage k is accumulated before any of
    stage k-1's (gradient hooks record the order)."""
    model = WSResNet(depth=50, base_channels=4, group_by='stage')
    order = []
    for name, p in model.named_parameters():
        if name.startswith('layer') and p.dim() == 4:
            p.register_hook(lambda _, s=int(name[5]): order.append(s))
    sum(o.sum() for o in model(torch.randn(2, 3, 32, 32))).backward()
    assert len(order) == 52
    assert order == sorted(order, reverse=True)


def test_frozen_stages_are_normalized_without_autograd():
    ours, ref = _pair('stage', frozen_stages=1)
    ours.train(), ref.train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for a, b in zip(ours(x), ref(x)):
        torch.testing.assert_close(a, b)
    sum(o.sum() for o in ours(x)).backward()
    assert ours.layer1[0].conv1.weight.grad is None
    assert ours.layer2[0].conv1.weight.grad is not None


class _SemiModel(nn.Module):
    """What MeanTeacherHook updates: a student and a frozen eval-mode teacher."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = copy.deepcopy(student)
        self.teacher.eval()  # mmdet's ResNet.train() returns None: no chaining
        self.teacher.requires_grad_(False)


def test_teacher_follows_mean_teacher_momentum_updates():
    """mmdet's MeanTeacherHook writes the teacher through .data every iteration; the teacher,
    run in eval under no_grad as SemiBaseDetector does, must use the new weights."""
    torch.manual_seed(0)
    model = _SemiModel(WSResNet(depth=18, base_channels=8, group_by='stage',
                                norm_eval=False).double())
    ref = ResNet(depth=18, conv_cfg=dict(type='ConvWS'), base_channels=8).double()
    ref.eval()
    hook = MeanTeacherHook(momentum=0.5)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    opt = torch.optim.SGD(model.student.parameters(), lr=0.5)
    for _ in range(3):
        with torch.no_grad():
            model.teacher(x)  # a pseudo-label pass before the update
        sum(o.square().mean() for o in model.student(x)).backward()
        opt.step()
        opt.zero_grad()
        hook.momentum_update(model, 0.5)
        ref.load_state_dict(model.teacher.state_dict())
        with torch.no_grad():
            for a, b in zip(model.teacher(x), ref(x)):
                torch.testing.assert_close(a, b)


def test_mixed_families_group_by_kind():
    torch.manual_seed(0)
    region = nn.Sequential(WSConv(4, 6, 3), WSConv(4, 6, 3, unbiased=False), CWNConv(4, 5, 3),
                           WNConv(4, 3, 3), WNConv(4, 3, 3, gain=True), WSConv(4, 2, 3))
    groups = FilterGroups(region)
    assert sorted(len(g.convs) for g in groups.groups) == [1, 1, 1, 2]  # the gain conv alone
    x = torch.randn(1, 4, 5, 5)
    grouped = [m(x) for m in region]  # outside the region's forward: each alone
    groups.normalize()
    together = [m(x) for m in region]
    groups.release()
    for a, b in zip(grouped, together):
        torch.testing.assert_close(a, b)
    assert all(g.weights is None for g in groups.groups)


def test_activation_checkpointing_leaves_convs_alone():
    model = WSResNet(depth=18, base_channels=8, with_cp=True)
    assert model.filter_groups == []
    model(torch.randn(2, 3, 32, 32, requires_grad=True))[0].sum().backward()


def test_channels_last_and_autocast_match_the_per_conv_path():
    torch.manual_seed(0)
    grouped = WSResNet(depth=18, base_channels=8, group_by='stage', norm_eval=False)
    alone = WSResNet(depth=18, base_channels=8, group_by=None, norm_eval=False)
    alone.load_state_dict(grouped.state_dict())
    grouped.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = [model(x) for model in (grouped, alone)]
    for a, b in zip(*outs):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    sum(o.float().square().mean() for o in outs[0]).backward()
    assert all(torch.isfinite(p.grad).all() for p in grouped.parameters() if p.grad is not None)


def test_group_by_is_validated_and_auto_is_backbone_in_one_process():
    with pytest.raises(ValueError, match='group_by'):
        WSResNet(depth=18, group_by='layer')
    with pytest.raises(ValueError, match='fused'):
        WSResNet(depth=18, fused='yes')
    alone = WSResNet(depth=18, base_channels=8, group_by=None, fused=False)
    assert all(m.fused is False for m in alone.modules() if isinstance(m, WSConv))
    assert WSResNet(depth=18, base_channels=8).group_by == 'backbone'


def test_auto_groups_per_stage_in_a_distributed_run(monkeypatch):
    from mmdet_eps.models.backbones import grouped_norm
    monkeypatch.setattr(grouped_norm.dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(grouped_norm.dist, 'get_world_size', lambda: 2)
    assert WSResNet(depth=18, base_channels=8).group_by == 'stage'


@pytest.mark.slow
def test_grouping_cuts_the_ops_of_a_thin_resnet50():
    """Op counts are deterministic: fwd + bwd of a thin WS-ResNet-50 (the launch-bound regime
    of benchmarks/b8_launch_bound.py) against mmdet's plain ResNet-50."""
    x = torch.randn(2, 3, 32, 32)

    def ops(model):
        return count_ops(lambda: sum(o.sum() for o in model(x)).backward())

    plain_ops = ops(ResNet(depth=50, base_channels=4))
    plain = plain_ops.total
    grouped = ops(WSResNet(depth=50, base_channels=4, group_by='backbone', fused=False)).total
    per_conv = ops(WSResNet(depth=50, base_channels=4, group_by=None, fused=False)).total
    fused = ops(WSResNet(depth=50, base_channels=4, group_by='backbone', fused=True))
    # the fused backward reads the saved outputs, which autograd detaches (metadata, no kernel)
    detach = 'aten.detach.default'
    fused_extra = fused.total - plain - (fused.by_name[detach] - plain_ops.by_name[detach])
    # torch ops: a few kernels per filter shape plus the metadata-only views that give group
    # norm's backward the shapes its schema says (7 per filter shape, no kernel)
    assert grouped - plain <= 250
    assert per_conv - plain > 3 * (grouped - plain)
    assert fused_extra <= 2  # one op forward, one backward
