# WS-ResNet-50 on ImageNet with the authors' recipe (PytorchInsight README: 100 epochs, SGD lr 0.1
# for 8 x 32 images, momentum 0.9, steps at 30/60/90, weight decay 1e-4), which is mmpretrain's
# resnet50_8xb32_in1k; plain decay on the conv weights, none on biases (their set_optimizer).
# WSConv's default numerics are the authors' WS conv (= mmcv ConvWS2d); their net has no
# zero-initialised last BN. tools/pretrain.py trains it; docs/pretrain.md.
_base_ = ['mmpretrain::resnet/resnet50_8xb32_in1k.py', '../_base_/mmdet_eps.py']
model = dict(backbone=dict(conv_cfg=dict(type='WSConv'), zero_init_residual=False))
optim_wrapper = dict(paramwise_cfg=dict(bias_decay_mult=0.))
