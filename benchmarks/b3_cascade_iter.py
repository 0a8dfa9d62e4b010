"""B3: one training iteration of the toy Cascade R-CNN, WS + ε-shift vs the plain baseline.

The model of ``configs/toy/cascade_rcnn_ws_eps_r18_toy.py`` (WS-ResNet-18 + FPN, three cascade
stages, BN training) is built with mmengine ``Config`` + ``MODELS.build``; the optimizer wrapper
is built from the config's ``optim_wrapper`` as the runner does. One iteration is
``model.train_step(batch, optim_wrapper)``: data preprocessing, forward, losses, backward, step -
what the runner times as ``time`` minus data loading. The batch is fixed and synthetic (the toy
recipe's batch size, images of 128x160 as in the toy set, 2-5 boxes each,
``mmdet.testing.demo_mm_inputs``).

- ``plain`` (baseline): the same config with ``backbone.type='ResNet'`` and the default
  optimizer-wrapper constructor (the config's optimizer with plain weight decay; same clipping).
- ``ws_eps``: the config as it is (``WSResNet``, ``EpsShiftedOptimWrapperConstructor``).
- ``ws_plain_wd``: ``WSResNet`` with the default constructor (separates the cost of WS from
  that of the term).

All three start from the same weights; lr is capped at 0.002 so that 100+ iterations on one batch
stay finite.

    python benchmarks/b3_cascade_iter.py [--quick]
"""
import copy
import math
import os.path as osp

import torch

from _common import REPO, Report, start

CONFIG = osp.join(REPO, 'configs', 'toy', 'cascade_rcnn_ws_eps_r18_toy.py')
LR = 0.002


def build(cfg_model: dict, optim_cfg: dict):
    from mmdet.registry import MODELS
    from mmengine.optim import build_optim_wrapper
    model = MODELS.build(copy.deepcopy(cfg_model))
    model.init_weights()
    model.train()
    return model, build_optim_wrapper(model, copy.deepcopy(optim_cfg))


def make_batch(batch_size: int, num_classes: int, size=(128, 160)):
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(0)
    return demo_mm_inputs(batch_size=batch_size, image_shapes=[(3, *size)] * batch_size,
                          num_items=[2 + i % 4 for i in range(batch_size)],
                          num_classes=num_classes)


def main(argv=None):
    args, env = start(__doc__.splitlines()[0], argv=argv)
    from mmengine.config import Config
    cfg = Config.fromfile(CONFIG)
    report = Report('B3', 'toy Cascade R-CNN training iteration (train_step), WS + ε vs plain',
                    args, env, goal='ws_eps <= 1.03x plain')
    optim = copy.deepcopy(cfg.optim_wrapper.to_dict())
    optim['optimizer']['lr'] = min(optim['optimizer']['lr'], LR)
    plain_optim = {k: v for k, v in optim.items() if k not in ('constructor', 'paramwise_cfg')}
    ws_model = cfg.model
    plain_model = copy.deepcopy(ws_model)
    plain_model.backbone.type = 'ResNet'
    torch.manual_seed(0)
    candidates = {
        'plain': build(plain_model, plain_optim),
        'ws_eps': build(ws_model, optim),
        'ws_plain_wd': build(ws_model, plain_optim),
    }
    state = candidates['plain'][0].state_dict()
    for model, _ in candidates.values():
        model.load_state_dict(state)
    batch_size = cfg.train_dataloader.batch_size  # the toy recipe's batch
    batch = make_batch(batch_size, len(cfg.classes))
    losses = {}

    def step(name):
        model, wrapper = candidates[name]

        def run():
            torch.manual_seed(1)  # same proposal / RoI sampling draws for every candidate
            log_vars = model.train_step(batch, wrapper)
            losses[name] = float(log_vars['loss'])
        return run

    timings = report.time({k: step(k) for k in candidates}, 'plain', 20, warmup=3, label='B3')
    report.add(f'toy Cascade R-CNN R-18, batch {batch_size}, 128x160', timings, 'plain',
               labels={'plain': 'ResNet-18 + default constructor',
                       'ws_eps': 'WSResNet-18 + ε-shift constructor (the toy config)',
                       'ws_plain_wd': 'WSResNet-18 + default constructor'},
               goal_for='ws_eps', goal_max=1.03)
    for name, loss in losses.items():
        if not math.isfinite(loss):
            report.note(f'{name}: the loss became {loss}; timings may not be representative')
    report.note('last losses: ' + ', '.join(f'{k} {v:.3f}' for k, v in losses.items()))
    report.finish()
    return report


if __name__ == '__main__':
    main()
