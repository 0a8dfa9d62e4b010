"""mmengine's ``compile=True`` trains the WS + ε toy detectors: the compiled ``train_step``
(forward, backward and the ε-shifted optimizer step) gives the losses and weights
of eager training over the same iterations and seed. And the ε-step after compiled forwards
stays exact through gradient accumulation, in-place and ``.data`` writes and stage grouping."""
import math
from pathlib import Path

import pytest
import torch
import torch._dynamo
from mmdet.models.backbones import ResNet
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapper
from mmengine.runner import Runner
from torch._dynamo.utils import counters

from mmdet_eps.models.backbones import WSResNet
from tests.conftest import needs_compile
from tests.toy_run import toy_config

from .helpers import autograd_grad, build_optim_wrapper

pytestmark = [pytest.mark.slow, needs_compile]



@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class _Losses(Hook):
    def __init__(self) -> None:
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.losses.append(float(outputs['loss']))


def _train(config: str, root: Path, work_dir: Path, compile_cfg=None, sgd: bool = False):
    cfg = toy_config(config, root, work_dir, max_epochs=1)
    cfg.train_cfg.val_interval = 100  # training only
    if sgd:  # the paper's optimizer; AdamW's first steps (lr * sign(g)) amplify rounding
        cfg.optim_wrapper.optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4)
    cfg.randomness = dict(seed=0)
    cfg.visualizer.name = f'vis_{work_dir.name}'
    if compile_cfg is not None:
        cfg.compile = compile_cfg
    runner = Runner.from_cfg(cfg)
    hook = _Losses()
    runner.register_hook(hook)
    runner.train()
    return hook.losses, {k: v.detach().clone() for k, v in runner.model.state_dict().items()}


@pytest.mark.parametrize('config', [
    'cascade_rcnn_ws_eps_r18_toy.py', 'faster_rcnn_ws_eps_r18_toy.py',
    'mask_rcnn_ws_eps_r18_toy.py'
])
def test_compiled_train_step_equals_eager(config, tiny_coco, tmp_path):
    """Dynamo and AOT autograd (``backend='aot_eager'``: the tracing where plugins break;
    inductor's kernels are tested on the backbone in tests/models/test_compile.py)."""
    eager_losses, eager_state = _train(config, tiny_coco, tmp_path / 'eager', sgd=True)
    losses, state = _train(config, tiny_coco, tmp_path / 'compiled', dict(backend='aot_eager'),
                           sgd=True)
    assert len(losses) == len(eager_losses) == 2
    assert all(math.isfinite(v) for v in losses)
    for a, b in zip(losses, eager_losses):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)
    # compiled, the fused ops hand the convs channels-last weights (inductor's layout), so the
    # convs round differently; a BN bias near 0 after two steps shows it in absolute terms
    for key, value in eager_state.items():
        if value.is_floating_point():
            torch.testing.assert_close(state[key], value, rtol=1e-4, atol=5e-5,
                                       msg=lambda m: f'{key}: {m}')


def test_compile_true_trains_with_inductor(tiny_coco, tmp_path):
    """The user's switch as it is: ``compile=True`` (inductor), the toy recipe (AdamW)."""
    losses, state = _train('faster_rcnn_ws_eps_r18_toy.py', tiny_coco, tmp_path, True)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _ws_pair(group_by: str, fused: bool):
    torch.manual_seed(0)
    model = WSResNet(depth=18, base_channels=8, norm_eval=False, group_by=group_by,
                     fused=fused).double()
    wrapper = build_optim_wrapper(model, dict(type='SGD', lr=0.1, momentum=0.9,
                                              weight_decay=0.05),
                                  eps_shift=dict(eps=0.3), wrapper=dict(accumulative_counts=2))
    return model, wrapper


def _loss(model, x):
    return sum(o.square().mean() for o in model(x))


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('group_by', ['backbone', 'stage'])
def test_eps_step_after_compiled_forwards_equals_eager(fused, group_by):
    """Two accumulated compiled forward/backward passes per step, then an in-place write to
    a weight, then another step: weights equal eager training's."""
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    results = []
    for compiled in (False, True):
        model, wrapper = _ws_pair(group_by, fused)
        loss_fn = torch.compile(_loss, backend='aot_eager') if compiled else _loss
        for step in range(2):
            for _ in range(2):
                wrapper.update_params(loss_fn(model, x))
            with torch.no_grad():
                model.layer1[0].conv1.weight.mul_(1.5)  # an in-place write between steps
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_data_write_after_a_compiled_forward_uses_the_weight_at_the_step():
    """The step's term is the paper's gradient at the weight as the step finds it."""
    torch.manual_seed(0)
    model = WSResNet(depth=18, base_channels=8, norm_eval=False).double()
    lam, eps, lr = 0.05, 0.3, 0.1
    wrapper = build_optim_wrapper(model, dict(type='SGD', lr=lr, weight_decay=lam),
                                  eps_shift=dict(eps=eps))
    conv = model.layer2[0].conv2
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.compile(_loss, backend='aot_eager')(model, x).backward()
    conv.weight.data.mul_(2.)
    w, g = conv.weight.detach().clone(), conv.weight.grad.clone()
    wrapper.step()
    torch.testing.assert_close(conv.weight.detach(),
                               w - lr * (g + autograd_grad(w, 'ws', eps, lam)))


def _op_name(target) -> str:
    return getattr(target, '__name__', str(target))


def _compiled_step_stats(model, wrapper: OptimWrapper, x) -> dict:
    """Frames, graph breaks and the ops of each graph of a compiled train step (forward,
    backward, ``optimizer.step()``), as dynamo hands them to the backend over two iterations."""
    torch._dynamo.reset()
    counters.clear()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append({_op_name(n.target) for n in gm.graph.nodes
                       if n.op in ('call_function', 'call_method')})
        return gm.forward

    def train_step(model, x):
        wrapper.update_params(_loss(model, x))

    compiled = torch.compile(train_step, backend=backend)
    for _ in range(2):
        compiled(model, x)
    return dict(graphs=graphs, breaks=sum(counters['graph_break'].values()),
                skipped=sorted(counters['frames'].keys() - {'total', 'ok'}),
                not_ok=counters['frames']['total'] - counters['frames']['ok'])


@pytest.mark.parametrize('fused, term_op', [(None, 'eps_shift_'), (False, 'rsqrt')],
                         ids=['fused_ops', 'torch_ops'])
@pytest.mark.parametrize('optimizer, update_ops', [
    (dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.05), {'clone', 'mul_'}),
    (dict(type='AdamW', lr=1e-3, weight_decay=0.05), {'addcdiv_'})], ids=['SGD', 'AdamW'])
def test_eps_term_traces_into_the_compiled_optimizer_step(optimizer, update_ops, fused,
                                                           term_op):
    """WS + ε adds no graph, graph break or skipped frame to a compiled train step beyond what
    the plain ResNet with the same optimizer (plain weight decay) has: the term (the fused op
    ``eps_shift_``, the default on a CPU; with torch ops, the unit filters' ``rsqrt``) is in the
    graphs of the optimizer's own update (SGD's momentum buffer: ``clone`` on the first step,
    ``mul_`` after; AdamW's ``addcdiv_``). This backend captures graphs without AOT autograd,
    so the fused normalization's registered backward runs as Python during ``backward()`` and
    dynamo captures it as a graph of its own; inductor and ``aot_eager`` trace it ahead into
    the backward graph."""
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    plain = ResNet(depth=18, base_channels=8, norm_eval=False)
    plain_stats = _compiled_step_stats(plain, build_optim_wrapper(
        plain, dict(optimizer), eps_shift=dict(eps=0.3)), x)
    torch.manual_seed(0)
    ws = WSResNet(depth=18, base_channels=8, norm_eval=False, fused=fused)
    wrapper = build_optim_wrapper(ws, dict(optimizer), eps_shift=dict(eps=0.3, fused=fused))
    assert any('eps_shift_family' in g for g in wrapper.optimizer.param_groups)
    ws_stats = _compiled_step_stats(ws, wrapper, x)
    plain_graphs, ws_graphs = plain_stats.pop('graphs'), ws_stats.pop('graphs')
    ws_graphs = [ops for ops in ws_graphs if ops != {'getitem', 'normalize_filters_backward'}]
    assert ws_stats == plain_stats and len(ws_graphs) == len(plain_graphs)
    assert not any(term_op in ops for ops in plain_graphs)
    term = [ops for ops in ws_graphs if term_op in ops]
    assert term and all(ops & update_ops for ops in term)


@pytest.mark.parametrize('mode', ['coupled', 'decoupled'])
@pytest.mark.parametrize('fused', [True, False])
def test_compiled_optimizer_step_equals_eager(mode, fused):
    """The step alone under ``torch.compile`` (inductor): the torch ops, or the fused op as a
    registered custom op that mutates gradients (coupled) or the weights it reads (decoupled),
    give eager's weights."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = WSResNet(depth=18, base_channels=8, norm_eval=False).double()
        wrapper = build_optim_wrapper(model, dict(type='SGD', lr=0.1, weight_decay=0.05),
                                      eps_shift=dict(eps=0.3, mode=mode, fused=fused))
        step = torch.compile(wrapper.step) if compiled else wrapper.step
        for _ in range(2):
            _loss(model, x).backward()
            step()
            wrapper.zero_grad()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
