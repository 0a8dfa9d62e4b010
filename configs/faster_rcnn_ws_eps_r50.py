# WS-ResNet-50 with the ε-shifted L2 regularizer on its standardized convs (paper Sec. 6).
_base_ = './faster_rcnn_ws_r50.py'
optim_wrapper = dict(
    constructor='EpsShiftedOptimWrapperConstructor',
    paramwise_cfg=dict(eps_shift=dict(eps={{_base_.eps_per_depth.r50}})))
