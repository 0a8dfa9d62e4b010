# mmdet's GN+WS Mask R-CNN R-50 FPN 2x, unchanged (ConvWS + GN in backbone, neck, box and mask
# heads; JHU GN+WS ImageNet weights); see faster_rcnn_gn_ws_r50.py for the path.
_base_ = [
    'mmdet::faster_rcnn/../gn+ws/mask-rcnn_r50_fpn_gn-ws-all_2x_coco.py',
    '../_base_/mmdet_eps.py'
]
val_evaluator = dict(metric_items={{_base_.coco_metric_items}})
test_evaluator = val_evaluator
