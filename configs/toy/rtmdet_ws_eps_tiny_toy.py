# RTMDet cousin of the demo: configs/rtmdet/rtmdet_ws_eps_l.py (its detector, AdamW with the
# decoupled ε-term and no decay on norms and biases, EMA) with a quarter-width, one-block-per-stage
# WS-CSPNeXt from scratch, on the embedded toy COCO set at its size and a toy schedule.
_base_ = '../rtmdet/rtmdet_ws_eps_l.py'

model = dict(
    backbone=dict(deepen_factor=0.167, widen_factor=0.25),
    neck=dict(in_channels=[64, 128, 256], out_channels=64, num_csp_blocks=1),
    bbox_head=dict(num_classes=5, in_channels=64, feat_channels=64, exp_on_reg=False),
    test_cfg=dict(nms_pre=1000, max_per_img=100))

# The toy set of configs/toy/_base_/toy_coco.py (mmdet's COCO layout under another root); one
# pipeline, so mmdet's second-stage pipeline switch is left out.
data_root = 'data/toy_coco/'
metainfo = dict(classes=('rectangle', 'ellipse', 'triangle', 'cross', 'star'))
img_scale = (160, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=2,
    num_workers=1,
    pin_memory=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=1,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# mmdet's schedule at toy length: warm-up, then cosine over the second half; EMA as mmdet's.
max_epochs = 5
train_cfg = dict(max_epochs=max_epochs, val_interval=1, dynamic_intervals=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(
        type='CosineAnnealingLR',
        eta_min=0.004 * 0.05,  # mmdet's base_lr * 0.05
        begin=max_epochs // 2,
        end=max_epochs,
        T_max=max_epochs - max_epochs // 2,
        by_epoch=True,
        convert_to_iter_based=True)
]
custom_hooks = [
    dict(
        type='EMAHook',
        ema_type='ExpMomentumEMA',
        momentum=0.0002,
        update_buffers=True,
        priority=49)
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
log_processor = dict(window_size=50)
randomness = dict(seed=0)
