# WS-CSPNeXt-l on ImageNet with mmdet's CSPNeXt recipe (configs/rtmdet/classification: RSB A1,
# 600 epochs, LAMB lr 0.005 for 8 x 256 images, weight decay 0.01, none on norms and biases), for
# RTMDet backbones that start from WS weights (no WS CSPNeXt weights exist). mmdet's own config
# inherits `mmcls::` bases, which mmpretrain renamed; its settings are restated on mmpretrain's.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs256_rsb_a12.py',
    'mmpretrain::_base_/schedules/imagenet_bs2048_rsb.py',
    'mmpretrain::_base_/default_runtime.py', '../_base_/mmdet_eps.py'
]
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmdet.WSCSPNeXt',
        arch='P5',
        out_indices=(4, ),
        expand_ratio=0.5,
        deepen_factor=1,
        widen_factor=1,
        channel_attention=True,
        norm_cfg=dict(type='BN'),
        act_cfg=dict(type='mmdet.SiLU')),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=1024,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original', loss_weight=1.0),
        topk=(1, 5)),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.2), dict(type='CutMix', alpha=1.0)]))
train_dataloader = dict(sampler=dict(type='RepeatAugSampler', shuffle=True))
optim_wrapper = dict(
    optimizer=dict(weight_decay=0.01),
    paramwise_cfg=dict(bias_decay_mult=0., norm_decay_mult=0.))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.0001, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=595, eta_min=1.0e-6, by_epoch=True, begin=5, end=600)
]
train_cfg = dict(by_epoch=True, max_epochs=600)
