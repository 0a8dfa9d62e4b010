# Baseline: mmdet's mask rcnn R-101 FPN with plain ResNet (torchvision ImageNet weights).
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r101_fpn_1x_coco.py', './_base_/mmdet_eps.py']
val_evaluator = dict(metric_items={{_base_.coco_metric_items}})
test_evaluator = val_evaluator
