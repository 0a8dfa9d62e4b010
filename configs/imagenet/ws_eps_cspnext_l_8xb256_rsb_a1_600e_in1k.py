# WS-CSPNeXt-l + ε-shifted L2 on ImageNet: the conv weights get only the ε-shifted term (λ = 0.01),
# decoupled as LAMB's own decay (added to the update, not the gradient; mode 'auto' would take
# the coupled form for an optimizer it does not know). Depthwise convs stay plain, with plain decay.
_base_ = './ws_cspnext_l_8xb256_rsb_a1_600e_in1k.py'
optim_wrapper = dict(
    constructor='EpsShiftedOptimWrapperConstructor',
    paramwise_cfg=dict(eps_shift=dict(eps={{_base_.cspnext_eps}}, mode='decoupled')))
