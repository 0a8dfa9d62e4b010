# WS-ResNet-101 on ImageNet: ws_resnet50_8xb32_in1k.py with depth 101 (mmpretrain's
# resnet101_8xb32_in1k differs from its R-50 config by the depth alone).
_base_ = './ws_resnet50_8xb32_in1k.py'
model = dict(backbone=dict(depth=101))
