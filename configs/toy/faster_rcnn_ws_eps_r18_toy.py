# Faster R-CNN cousin of the demo (configs/faster_rcnn_ws_eps_r50.py at toy size).
_base_ = [
    'mmdet::_base_/models/faster-rcnn_r50_fpn.py', './_base_/toy_coco.py',
    './_base_/toy_schedule.py'
]
model = dict(
    backbone={{_base_.toy_backbone}},
    neck={{_base_.toy_neck}},
    rpn_head={{_base_.toy_rpn_head}},
    roi_head=dict(
        bbox_roi_extractor={{_base_.toy_roi_extractor}}, bbox_head={{_base_.toy_bbox_head}}),
    train_cfg={{_base_.toy_train_cfg}},
    test_cfg={{_base_.toy_test_cfg}})
