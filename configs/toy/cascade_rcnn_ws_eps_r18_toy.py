# The CPU demo: a small cousin of configs/cascade_rcnn_ws_eps_r50.py (same mmdet model, WSResNet,
# ε-shifted L2) at ResNet-18 size on the embedded toy COCO set.
_base_ = [
    'mmdet::_base_/models/cascade-rcnn_r50_fpn.py', './_base_/toy_coco.py',
    './_base_/toy_schedule.py'
]
model = dict(
    backbone={{_base_.toy_backbone}},
    neck={{_base_.toy_neck}},
    rpn_head={{_base_.toy_rpn_head}},
    roi_head=dict(
        bbox_roi_extractor={{_base_.toy_roi_extractor}},
        bbox_head={{_base_.toy_cascade_bbox_heads}}),
    train_cfg={{_base_.toy_cascade_train_cfg}},
    test_cfg={{_base_.toy_test_cfg}})
