# A CPU recipe for the toy set: a small WS-ResNet-18 trained from scratch for 8 epochs with the
# ε-shifted L2 regularizer. The toy configs take the model pieces with {{_base_.toy_*}}.
_base_ = ['mmdet::_base_/default_runtime.py']

max_epochs = 8
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=2)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[6, 7],
         gamma=0.1)
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4),
    constructor='EpsShiftedOptimWrapperConstructor',
    paramwise_cfg=dict(eps_shift=dict(eps=1e-3)))
auto_scale_lr = dict(enable=False, base_batch_size=4)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=2, max_keep_ckpts=2))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
log_processor = dict(window_size=10)
randomness = dict(seed=0)

# From scratch: BN must train (a WS backbone with frozen fresh BN gives NaN at iteration 1).
toy_backbone = dict(
    type='WSResNet', depth=18, frozen_stages=-1, norm_eval=False, init_cfg=None)
toy_neck = dict(in_channels=[64, 128, 256, 512], out_channels=64)
toy_rpn_head = dict(in_channels=64, feat_channels=64)
toy_train_cfg = dict(rpn_proposal=dict(nms_pre=600, max_per_img=300))
toy_test_cfg = dict(rpn=dict(nms_pre=600, max_per_img=300))
toy_roi_extractor = dict(out_channels=64)
toy_bbox_head = dict(in_channels=64, fc_out_channels=256, num_classes=5)
