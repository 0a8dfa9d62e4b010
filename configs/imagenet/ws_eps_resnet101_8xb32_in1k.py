# WS-ResNet-101 + ε-shifted L2 on ImageNet, the authors' published net (ε = 1e-6): as
# ws_eps_resnet50_8xb32_in1k.py with depth 101.
_base_ = './ws_resnet101_8xb32_in1k.py'
optim_wrapper = dict(
    constructor='EpsShiftedOptimWrapperConstructor',
    paramwise_cfg=dict(eps_shift=dict(eps={{_base_.eps_per_depth.r101}})))
