# WS-ResNeXt-101 32x4d backbone (ImageNet weights from ws_pretrained), plain weight decay.
_base_ = './cascade_rcnn_x101.py'
model = dict(
    backbone=dict(
        type='WSResNeXt',
        init_cfg=dict(type='Pretrained', checkpoint={{_base_.ws_pretrained.x101}})))
