# mmdet's GN+WS Faster R-CNN R-101 FPN 1x, unchanged; see faster_rcnn_gn_ws_r50.py for the path.
_base_ = [
    'mmdet::faster_rcnn/../gn+ws/faster-rcnn_r101_fpn_gn-ws-all_1x_coco.py',
    '../_base_/mmdet_eps.py'
]
val_evaluator = dict(metric_items={{_base_.coco_metric_items}})
test_evaluator = val_evaluator
