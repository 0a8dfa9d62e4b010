# WS-ResNet-50 + ε-shifted L2 on ImageNet, the authors' published net (ε = 1e-3; paper Table IV):
# the conv weights get only the ε-shifted term (λ = 1e-4, coupled as in their SGD), BN and fc
# weights plain decay, biases none. Convert the result for detection with
# tools/model_converters/convert_imagenet_ckpt.py (docs/pretrain.md).
_base_ = './ws_resnet50_8xb32_in1k.py'
optim_wrapper = dict(
    constructor='EpsShiftedOptimWrapperConstructor',
    paramwise_cfg=dict(eps_shift=dict(eps={{_base_.eps_per_depth.r50}})))
