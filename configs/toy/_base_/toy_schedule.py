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
auto_scale_lr = dict(enable=False, base_batch_size=2)
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
toy_rpn_proposal = dict(nms_pre=600, max_per_img=300)
# 128 sampled RoIs per image instead of 512: RoIAlign's backward dominates a CPU iteration.
toy_train_cfg = dict(rpn_proposal=toy_rpn_proposal, rcnn=dict(sampler=dict(num=128)))
toy_test_cfg = dict(rpn=dict(nms_pre=600, max_per_img=300))
toy_roi_extractor = dict(out_channels=64)
toy_bbox_head = dict(in_channels=64, fc_out_channels=256, num_classes=5)
# mmdet's three cascade stages (their IoU thresholds and box-coder stds), each at toy size.
toy_cascade_bbox_heads = [
    dict(type='Shared2FCBBoxHead', **toy_bbox_head, roi_feat_size=7, reg_class_agnostic=True,
         bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                         target_stds=stds),
         loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
         loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))
    for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
]
toy_cascade_train_cfg = dict(
    rpn_proposal=toy_rpn_proposal,
    rcnn=[
        dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=iou, neg_iou_thr=iou,
                           min_pos_iou=iou, match_low_quality=False, ignore_iof_thr=-1),
             sampler=dict(type='RandomSampler', num=128, pos_fraction=0.25, neg_pos_ub=-1,
                          add_gt_as_proposals=True),
             pos_weight=-1, debug=False) for iou in (0.5, 0.6, 0.7)
    ])
