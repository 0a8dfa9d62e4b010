# mmdet's RTMDet-l 300e with a WS-CSPNeXt backbone (every conv standardized but the depthwise ones,
# trained from scratch as mmdet's), AdamW with plain decay, none on norms and biases, EMA kept.
_base_ = ['mmdet::rtmdet/rtmdet_l_8xb32-300e_coco.py', '../_base_/mmdet_eps.py']
model = dict(backbone=dict(type='WSCSPNeXt'))
val_evaluator = dict(metric_items={{_base_.coco_metric_items}})
test_evaluator = val_evaluator
