# DINO-4scale WS-R-50 with the ε-shifted L2 term on the backbone's standardized convs, decoupled as
# AdamW's own decay (mode 'auto'); custom_keys (backbone lr x0.1) and clip_grad kept.
_base_ = './dino_4scale_ws_r50.py'
optim_wrapper = dict(
    constructor='EpsShiftedOptimWrapperConstructor',
    paramwise_cfg=dict(eps_shift=dict(eps={{_base_.eps_per_depth.r50}})))
