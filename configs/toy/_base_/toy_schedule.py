# A CPU recipe for the toy set: a narrow WS-ResNet-18 trained from scratch with the ε-shifted L2
# regularizer (AdamW, so the term is applied decoupled, as AdamW applies its own decay). The toy
# configs take the model pieces with {{_base_.toy_*}}. Every choice was measured (docs/demo.md):
# AdamW converges faster than SGD from scratch at batch 2, and the narrow backbone with
# DenseRoIAlign makes an iteration ~2.5x cheaper than ResNet-18 with mmcv's CPU RoIAlign, which
# buys the iterations.
_base_ = ['mmdet::_base_/default_runtime.py']

# 2560 iterations of batch 2: 5 epochs of the default toy set (1024 train images).
max_iters = 2560
max_epochs = 5
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

# From scratch: BN must train (a WS backbone with frozen fresh BN gives NaN at iteration 1).
# Half the usual width (base_channels=32): a quarter of the conv cost, enough for the toy shapes.
toy_backbone = dict(
    type='WSResNet', depth=18, base_channels=32, frozen_stages=-1, norm_eval=False,
    init_cfg=None)
toy_neck = dict(in_channels=[32, 64, 128, 256], out_channels=64)
# Anchors of 16-256 px (scale 4 on strides 4-64) for objects of 20-90 px in 160x128 images.
toy_rpn_head = dict(
    in_channels=64, feat_channels=64, anchor_generator=dict(scales=[4]))
toy_rpn_proposal = dict(nms_pre=600, max_per_img=300)
# 96 sampled RoIs per image instead of 512: fewer RoIs to pool and classify (same mAP as 128,
# 12 % cheaper iterations).
toy_rcnn_rois = 96
toy_train_cfg = dict(rpn_proposal=toy_rpn_proposal, rcnn=dict(sampler=dict(num=toy_rcnn_rois)))
toy_test_cfg = dict(rpn=dict(nms_pre=600, max_per_img=300))
# RoIAlign as matrix products on the small maps (equal to mmcv's op, several times faster on CPU).
toy_roi_extractor = dict(
    type='RegistryRoIExtractor', roi_layer=dict(type='DenseRoIAlign'), out_channels=64)
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
             sampler=dict(type='RandomSampler', num=toy_rcnn_rois, pos_fraction=0.25,
                          neg_pos_ub=-1, add_gt_as_proposals=True),
             pos_weight=-1, debug=False) for iou in (0.5, 0.6, 0.7)
    ])
