"""EpsShiftedOptimWrapperConstructor: which params get the term, default-constructor options,
group merging, validation, and the training mechanics around the step (clip, accumulation,
AMP scaling, frozen stages, resume)."""
import copy
import logging

import pytest
import torch
import torch._dynamo
from mmcv.cnn import ConvWS2d
from mmdet.registry import MODELS
from mmengine.config import ConfigDict
from mmengine.logging import MMLogger
from torch import nn

from mmdet_eps.engine.optimizers.eps_shifted_regularizer import FAMILY_KEY, LAMBDA_KEY, MODE_KEY
from tests.conftest import needs_dynamo, needs_torch

from .helpers import TinyNet, autograd_grad, build_optim_wrapper

SGD = dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4)


def _group_of(optimizer, param):
    return next(g for g in optimizer.param_groups if any(p is param for p in g['params']))


@pytest.mark.parametrize('fused', [None, False])
def test_only_normalized_weights_get_the_term(fused):
    model = TinyNet('ws')
    opt = build_optim_wrapper(model, SGD, eps_shift=dict(eps=1e-3, fused=fused)).optimizer
    conv = _group_of(opt, model.conv.weight)
    assert conv[FAMILY_KEY] == 'ws' and conv[LAMBDA_KEY] == pytest.approx(1e-4)
    # λW: SGD's own coupled decay, or the fused step's (on CPU by default)
    assert conv['weight_decay'] == pytest.approx(0. if fused is None else 1e-4)
    for plain in (model.head.weight, model.fc.weight, model.bn.weight):
        group = _group_of(opt, plain)
        assert FAMILY_KEY not in group and group.get('weight_decay', 1e-4) == pytest.approx(1e-4)
    for bias in (model.conv.bias, model.head.bias, model.fc.bias):
        assert _group_of(opt, bias)['weight_decay'] == 0.


@needs_dynamo
def test_param_groups_are_plain_dicts_that_dynamo_traces():
    """From a config (a ConfigDict, as the Runner passes it) the groups become ConfigDicts,
    which torch.compile cannot trace in the optimizer step (mmengine's compile=True does)."""
    model = TinyNet('ws')
    wrapper = build_optim_wrapper(model, ConfigDict(type='AdamW', lr=0.1, weight_decay=1e-2),
                                  eps_shift=dict(eps=1e-3))
    assert all(type(g) is dict for g in wrapper.optimizer.param_groups)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(wrapper.optimizer.step)()
    torch._dynamo.reset()
    assert explanation.graph_count >= 1  # traced: the term and the update


def test_mmcv_convws_is_recognized_and_default_options_keep_working():
    model = nn.Sequential(ConvWS2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 1))
    opt = build_optim_wrapper(
        model, SGD, eps_shift=dict(decay_mult=2.), norm_decay_mult=0., bias_decay_mult=0.5,
        custom_keys={'2.weight': dict(lr_mult=0.1)}).optimizer
    assert _group_of(opt, model[0].weight)[LAMBDA_KEY] == pytest.approx(2e-4)
    assert _group_of(opt, model[1].weight)['weight_decay'] == 0.
    assert _group_of(opt, model[0].bias)['weight_decay'] == pytest.approx(0.5e-4)
    assert _group_of(opt, model[2].weight)['lr'] == pytest.approx(0.01)


@pytest.mark.parametrize('optimizer,mode', [
    (SGD, 'coupled'),
    (dict(type='Adam', lr=1e-3, weight_decay=1e-4), 'coupled'),
    (dict(type='AdamW', lr=1e-3, weight_decay=0.05), 'decoupled'),
    (dict(type=torch.optim.AdamW, lr=1e-3, weight_decay=0.05), 'decoupled'),
])
def test_auto_mode_follows_how_the_optimizer_applies_its_own_decay(optimizer, mode):
    model = TinyNet('ws')
    opt = build_optim_wrapper(model, optimizer, eps_shift=dict()).optimizer
    assert _group_of(opt, model.conv.weight)[MODE_KEY] == mode
    explicit = build_optim_wrapper(TinyNet('ws'), optimizer, eps_shift=dict(mode='coupled'))
    assert all(g.get(MODE_KEY, 'coupled') == 'coupled' for g in explicit.optimizer.param_groups)


def test_custom_keys_decay_mult_sets_lambda():
    model = TinyNet('wn')
    opt = build_optim_wrapper(model, SGD, eps_shift=dict(),
                              custom_keys={'conv': dict(decay_mult=3.)}).optimizer
    assert _group_of(opt, model.conv.weight)[LAMBDA_KEY] == pytest.approx(3e-4)


def test_bypass_duplicate_and_frozen_params():
    model = TinyNet('ws')
    model.shared = model.head  # the same parameters reachable twice
    model.conv.weight.requires_grad_(False)
    opt = build_optim_wrapper(model, SGD, eps_shift=dict(), bypass_duplicate=True).optimizer
    params = [p for g in opt.param_groups for p in g['params']]
    assert len(params) == len({id(p) for p in params})
    assert all(p is not model.conv.weight for p in params)


def test_groups_are_merged_on_a_real_backbone():
    backbone = MODELS.build(dict(type='WSResNet', depth=50))
    opt = build_optim_wrapper(backbone, SGD, eps_shift=dict()).optimizer
    assert len(opt.param_groups) == 3  # ε-shifted weights, decayed BN weights, no-decay biases
    tagged = [g for g in opt.param_groups if FAMILY_KEY in g]
    assert len(tagged) == 1 and len(tagged[0]['params']) == 53
    n_params = sum(1 for p in backbone.parameters() if p.requires_grad)
    assert sum(len(g['params']) for g in opt.param_groups) == n_params


class _Records(logging.Handler):

    def __init__(self) -> None:
        super().__init__()
        self.messages = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_logs_a_summary_once():
    logger, records = MMLogger.get_current_instance(), _Records()
    logger.addHandler(records)
    try:
        build_optim_wrapper(TinyNet('cwn'), SGD, eps_shift=dict(eps=1e-4))
    finally:
        logger.removeHandler(records)
    lines = [m for m in records.messages if 'ε-shifted L2' in m]
    assert len(lines) == 1
    assert 'cwn: 1 tensors / 8 filters' in lines[0] and 'eps=0.0001' in lines[0]


@pytest.mark.parametrize('eps_shift,match', [
    (dict(eps=-1.), 'eps_shift.eps must be a float >= 0'),
    (dict(eps='1e-3'), 'eps_shift.eps'),
    (dict(eps=True), 'eps_shift.eps'),
    (dict(decay_mult=-2), 'eps_shift.decay_mult'),
    (dict(mode='sgd'), 'eps_shift.mode must be one of'),
    (dict(std='sample'), 'eps_shift.std must be one of'),
    (dict(epsilon=1e-3), "unknown key\\(s\\) \\['epsilon'\\]"),
    (dict(fused='yes'), 'eps_shift.fused must be None, True or False'),
])
def test_invalid_eps_shift_fails_at_build_naming_the_key(eps_shift, match):
    with pytest.raises(ValueError, match=match):
        build_optim_wrapper(TinyNet(), SGD, eps_shift=eps_shift)


def test_fused_step_that_cannot_run_fails_at_build_naming_the_key():
    model = TinyNet().to(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match='eps_shift.fused=True cannot run here .*non-contig'):
        build_optim_wrapper(model, SGD, eps_shift=dict(fused=True))


def test_missing_weight_decay_and_fused_are_refused():
    with pytest.raises(ValueError, match='optimizer.weight_decay must be set'):
        build_optim_wrapper(TinyNet(), dict(type='SGD', lr=0.1), eps_shift=dict())
    with pytest.raises(ValueError, match='fused=True is not supported'):
        build_optim_wrapper(TinyNet(), dict(type='Adam', lr=0.1, weight_decay=1e-4, fused=True),
                            eps_shift=dict())


def _weight_step(model, wrapper, loss_fn):
    w0 = model.conv.weight.detach().clone()
    wrapper.update_params(loss_fn())
    return w0


def test_term_is_added_after_gradient_clipping():
    """Like SGD's own weight decay, the term is not clipped: clip happens before the step."""
    torch.manual_seed(0)
    model = TinyNet('ws').double()
    wrapper = build_optim_wrapper(model, dict(type='SGD', lr=0.1, weight_decay=0.5),
                                  eps_shift=dict(eps=0.1),
                                  wrapper=dict(clip_grad=dict(max_norm=1e-6)))
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    w0 = _weight_step(model, wrapper, lambda: model(x).square().sum() * 1e3)
    expected = w0 - 0.1 * autograd_grad(w0, 'ws', 0.1, 0.5)
    torch.testing.assert_close(model.conv.weight.detach(), expected, atol=2e-7, rtol=0)


def test_gradient_accumulation_applies_the_term_once_per_real_step():
    torch.manual_seed(0)
    model = TinyNet('wn').double()
    wrapper = build_optim_wrapper(model, dict(type='SGD', lr=0.1, weight_decay=0.5),
                                  eps_shift=dict(eps=0.1), wrapper=dict(accumulative_counts=2))
    zero = lambda: (model(torch.zeros(1, 3, 4, 4, dtype=torch.float64)) * 0).sum()  # noqa: E731
    w0 = _weight_step(model, wrapper, zero)
    torch.testing.assert_close(model.conv.weight.detach(), w0)  # first micro-batch: no step
    wrapper.update_params(zero())
    torch.testing.assert_close(model.conv.weight.detach(),
                               w0 - 0.1 * autograd_grad(w0, 'wn', 0.1, 0.5))


@needs_torch('2.3', 'A CPU GradScaler')
def test_amp_grad_scaler_sees_unscaled_gradients_and_skips_overflow_steps():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6)
    models = [TinyNet('ws') for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [build_optim_wrapper(m, dict(type='SGD', lr=0.1, weight_decay=0.5),
                                eps_shift=dict(eps=0.1)).optimizer for m in models]
    models[0](x).square().mean().backward()
    opts[0].step()
    scaler = torch.amp.GradScaler('cpu', init_scale=2.**12)
    scaler.scale(models[1](x).square().mean()).backward()
    scaler.step(opts[1])
    scaler.update()
    torch.testing.assert_close(models[1].conv.weight, models[0].conv.weight)
    before = models[1].conv.weight.detach().clone()
    opts[1].zero_grad()
    scaler.scale(models[1](x).square().mean() * float('inf')).backward()
    scaler.step(opts[1])  # overflow: step and the ε-shifted term are skipped
    torch.testing.assert_close(models[1].conv.weight.detach(), before)


def test_resume_restores_groups_and_continues_identically():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6)
    model = TinyNet('ws')
    wrapper = build_optim_wrapper(model, SGD, eps_shift=dict(eps=0.05))
    for _ in range(3):
        wrapper.update_params(model(x).square().mean())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = copy.deepcopy(wrapper.state_dict())
    wrapper.update_params(model(x).square().mean())
    expected = model.conv.weight.detach().clone()
    resumed = TinyNet('ws')
    resumed.load_state_dict(state)
    resumed_wrapper = build_optim_wrapper(resumed, SGD, eps_shift=dict(eps=0.05))
    resumed_wrapper.load_state_dict(opt_state)
    resumed_wrapper.update_params(resumed(x).square().mean())
    torch.testing.assert_close(resumed.conv.weight.detach(), expected)
