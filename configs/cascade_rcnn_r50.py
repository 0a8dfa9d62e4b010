# Baseline: mmdet's cascade rcnn R-50 FPN with plain ResNet (torchvision ImageNet weights).
_base_ = ['mmdet::cascade_rcnn/cascade-rcnn_r50_fpn_20e_coco.py', './_base_/mmdet_eps.py']
val_evaluator = dict(metric_items={{_base_.coco_metric_items}})
test_evaluator = val_evaluator
