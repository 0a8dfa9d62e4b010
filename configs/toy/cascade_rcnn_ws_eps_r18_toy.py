# The CPU demo: a small cousin of configs/cascade_rcnn_ws_eps_r50.py (same mmdet model, WSResNet,
# ε-shifted L2) at ResNet-18 size on the embedded toy COCO set.
_base_ = [
    'mmdet::_base_/models/cascade-rcnn_r50_fpn.py', './_base_/toy_coco.py',
    './_base_/toy_schedule.py'
]
_head = {{_base_.toy_bbox_head}}
model = dict(
    backbone={{_base_.toy_backbone}},
    neck={{_base_.toy_neck}},
    rpn_head={{_base_.toy_rpn_head}},
    roi_head=dict(
        bbox_roi_extractor={{_base_.toy_roi_extractor}},
        bbox_head=[
            dict(_head, type='Shared2FCBBoxHead', roi_feat_size=7, reg_class_agnostic=True,
                 bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
                                 target_stds=stds),
                 loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
                 loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))
            for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1],
                         [0.033, 0.033, 0.067, 0.067])
        ]),
    train_cfg={{_base_.toy_train_cfg}},
    test_cfg={{_base_.toy_test_cfg}})
