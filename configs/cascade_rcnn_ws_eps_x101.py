# WS-ResNeXt-101 32x4d with the ε-shifted L2 regularizer on its standardized convs (paper Sec. 6).
_base_ = './cascade_rcnn_ws_x101.py'
optim_wrapper = dict(
    constructor='EpsShiftedOptimWrapperConstructor',
    paramwise_cfg=dict(eps_shift=dict(eps={{_base_.eps_per_depth.x101}})))
