# WS-ResNet-101 backbone (ImageNet weights from ws_pretrained), plain weight decay.
_base_ = './cascade_rcnn_r101.py'
model = dict(
    backbone=dict(
        type='WSResNet',
        init_cfg=dict(type='Pretrained', checkpoint={{_base_.ws_pretrained.r101}})))
