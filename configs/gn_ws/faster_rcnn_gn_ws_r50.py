# mmdet's GN+WS Faster R-CNN R-50 FPN 1x, unchanged (ConvWS + GN in backbone, neck and a
# Shared4Conv1FCBBoxHead; JHU GN+WS ImageNet weights), plain weight decay.
# `mmdet::gn+ws/...` fails mmengine's `\w*::\w*/\w*` check on the '+': the path goes through
# faster_rcnn/.. to reach the same file in mmdet's wheel (tests/test_configs.py shows both).
_base_ = [
    'mmdet::faster_rcnn/../gn+ws/faster-rcnn_r50_fpn_gn-ws-all_1x_coco.py',
    '../_base_/mmdet_eps.py'
]
val_evaluator = dict(metric_items={{_base_.coco_metric_items}})
test_evaluator = val_evaluator
