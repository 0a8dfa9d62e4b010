# WS-ResNet-50 backbone (ImageNet weights from ws_pretrained), plain weight decay.
_base_ = './cascade_rcnn_r50.py'
model = dict(
    backbone=dict(
        type='WSResNet',
        init_cfg=dict(type='Pretrained', checkpoint={{_base_.ws_pretrained.r50}})))
