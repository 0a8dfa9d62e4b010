# mmdet's DINO-4scale R-50 12e with a WS-ResNet-50 backbone (ImageNet WS weights from
# ws_pretrained, BN frozen as mmdet's), AdamW with plain decay, backbone lr x0.1, clip_grad kept.
_base_ = ['mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py', '../_base_/mmdet_eps.py']
model = dict(
    backbone=dict(
        type='WSResNet',
        init_cfg=dict(type='Pretrained', checkpoint={{_base_.ws_pretrained.r50}})))
val_evaluator = dict(metric_items={{_base_.coco_metric_items}})
test_evaluator = val_evaluator
