# mmdet's RetinaNet R-50 FPN 1x on mmdet's GN+WS pattern (gn+ws has no RetinaNet): ConvWS + GN(32)
# in backbone, neck and the head's stacked convs, JHU GN+WS ImageNet weights, SGD, plain decay.
_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', '../_base_/mmdet_eps.py']
conv_cfg = dict(type='ConvWS')
norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(
        conv_cfg=conv_cfg,
        norm_cfg=norm_cfg,
        init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://jhu/resnet50_gn_ws')),
    neck=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg),
    bbox_head=dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg))
val_evaluator = dict(metric_items={{_base_.coco_metric_items}})
test_evaluator = val_evaluator
