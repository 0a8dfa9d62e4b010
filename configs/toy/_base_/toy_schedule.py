# The toy recipe's schedule and runtime: the ε-shifted L2 regularizer with AdamW (so the term is
# applied decoupled, as AdamW applies its own decay), which converges faster than SGD from
# scratch at batch 2 (docs/demo.md).
_base_ = 'mmdet::_base_/default_runtime.py'

# The schedule's length, set once: 5 epochs of the toy set (1024 train images at batch 2, see
# toy_coco.py), on which the LR steps are placed by iteration.
max_epochs = 5
iters_per_epoch = 512
max_iters = max_epochs * iters_per_epoch
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False,
         milestones=[int(max_iters * 0.8), int(max_iters * 0.95)], gamma=0.1)
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
    constructor='EpsShiftedOptimWrapperConstructor',
    paramwise_cfg=dict(eps_shift=dict(eps=1e-3)),  # mode 'auto': decoupled for AdamW
    clip_grad=dict(max_norm=10.0))
auto_scale_lr = dict(enable=False, base_batch_size=2)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
log_processor = dict(window_size=50)
randomness = dict(seed=0)
