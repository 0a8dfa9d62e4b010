"""B6: cost of the stability hook (``WeightNormStatsHook``) on an iteration where it logs.

The hook fires every ``interval`` iterations (default 50, with the logger); on those it computes,
per normalized weight, float64 per-filter statistics, and syncs once. Interleaved:

- ``iter`` (baseline): one training iteration.
- ``iter+hook``: the same iteration followed by ``WeightNormStatsHook.after_train_iter`` on an
  iteration where it fires (a minimal stand-in runner: model, optimizer wrapper, message hub).

Two settings: the toy Cascade R-CNN of B3 (``train_step``, WS-ResNet-18 + ε-shift), and a
WS-ResNet-50 backbone at 320x320, batch 2 (forward + backward + ε-shifted SGD step). The cost per
iteration averaged over an interval is ``(ratio - 1) / interval``.

    python benchmarks/b6_stats_hook.py [--quick]
"""
import types

import torch

from _common import Report, backbone_loss, build_backbone, build_optim_wrapper, start

INTERVAL = 50


def stand_in_runner(model, optim_wrapper):
    from mmengine.logging import MessageHub, MMLogger
    return types.SimpleNamespace(
        model=model, optim_wrapper=optim_wrapper, hooks=[], iter=INTERVAL - 1,
        message_hub=MessageHub.get_instance('mmdet_eps_bench_b6'),
        logger=MMLogger.get_current_instance(), train_dataloader=range(10 * INTERVAL))


def main(argv=None):
    args, env = start(__doc__.splitlines()[0], argv=argv)
    import b3_cascade_iter as b3
    from mmengine.config import Config

    from mmdet_eps.engine.hooks import WeightNormStatsHook

    report = Report('B6', f'WeightNormStatsHook on a logged iteration (every {INTERVAL})', args,
                    env, goal='report only')

    def compare(case, step, model, wrapper):
        hook = WeightNormStatsHook(interval=INTERVAL)
        runner = stand_in_runner(model, wrapper)
        hook.before_train(runner)

        def with_hook():
            step()
            hook.after_train_iter(runner, batch_idx=INTERVAL - 1)
        timings = report.time({'iter': step, 'iter+hook': with_hook}, 'iter', 15,
                              label=f'B6 {case}')
        ratio = timings['iter+hook']['ratio']
        n_layers = len(hook._normalized_modules(runner))
        report.add(case, timings, 'iter',
                   labels={'iter': 'training iteration',
                           'iter+hook': 'iteration + hook firing'},
                   layers=n_layers, per_iteration_overhead=(ratio - 1) / INTERVAL)
        report.note(f'{case}: {n_layers} normalized layers; overhead on a logged iteration '
                    f'{(ratio - 1) * 100:.2f}%, averaged over {INTERVAL} iterations '
                    f'{(ratio - 1) / INTERVAL * 100:.3f}%; last values: {hook.last_stats}')

    # 1. toy Cascade R-CNN, as in B3
    cfg = Config.fromfile(b3.CONFIG)
    optim = cfg.optim_wrapper.to_dict()
    optim['optimizer']['lr'] = b3.LR
    model, wrapper = b3.build(cfg.model, optim)
    batch = b3.make_batch(cfg.train_dataloader.batch_size, len(cfg.classes))

    def cascade_step():
        torch.manual_seed(1)
        model.train_step(batch, wrapper)
    compare('toy Cascade R-CNN R-18 (B3 setting)', cascade_step, model, wrapper)

    # 2. WS-ResNet-50 backbone, forward + backward + step
    backbone = build_backbone('WSResNet')
    sgd = dict(type='SGD', lr=1e-3, momentum=0.9, weight_decay=1e-4)
    bb_wrapper = build_optim_wrapper(backbone, sgd, dict(eps=1e-3))
    size = 64 if args.quick else 320
    x = torch.randn(2, 3, size, size)

    def backbone_step():
        bb_wrapper.update_params(backbone_loss(backbone, x))
    compare(f'WS-ResNet-50 backbone, batch 2, {size}x{size}', backbone_step, backbone, bb_wrapper)
    report.finish()
    return report


if __name__ == '__main__':
    main()
