# RTMDet-l WS-CSPNeXt with the ε-shifted L2 term on the backbone's standardized convs, decoupled as
# AdamW's own decay (mode 'auto'); norm_decay_mult / bias_decay_mult 0, bypass_duplicate kept.
_base_ = './rtmdet_ws_l.py'
optim_wrapper = dict(
    constructor='EpsShiftedOptimWrapperConstructor',
    paramwise_cfg=dict(eps_shift=dict(eps={{_base_.cspnext_eps}})))
