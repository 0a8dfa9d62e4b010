# Baseline: mmdet's cascade rcnn X-101 32x4d FPN with plain ResNeXt (open-mmlab ImageNet
# weights). No X-101 number in the paper: the WS / WS + ε rows use the authors' ImageNet nets.
_base_ = ['mmdet::cascade_rcnn/cascade-rcnn_x101-32x4d_fpn_20e_coco.py', './_base_/mmdet_eps.py']
val_evaluator = dict(metric_items={{_base_.coco_metric_items}})
test_evaluator = val_evaluator
