# RetinaNet cousin of the demo (configs/gn_ws/retinanet_gn_ws_eps_r50.py at toy size): WS convs +
# GN(32) in backbone, neck and head on a narrow WS-ResNet-18 from scratch, SGD as mmdet's
# RetinaNet, so the ε-shifted term runs coupled (the R-CNN toys run it decoupled, with AdamW).
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py', './_base_/toy_coco.py',
    './_base_/toy_schedule.py'
]
conv_cfg = dict(type='WSConv')
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(
        type='WSResNet',
        depth=18,
        base_channels=32,
        frozen_stages=-1,
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=None),
    neck=dict(
        in_channels=[32, 64, 128, 256], out_channels=64, conv_cfg=conv_cfg, norm_cfg=norm_cfg),
    # Anchors of 16-400 px (octave base scale 2 on strides 8-128) for objects of 20-90 px.
    bbox_head=dict(
        num_classes=5,
        in_channels=64,
        feat_channels=64,
        stacked_convs=2,
        conv_cfg=conv_cfg,
        norm_cfg=norm_cfg,
        anchor_generator=dict(octave_base_scale=2)))
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4))
