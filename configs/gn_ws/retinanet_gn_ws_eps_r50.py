# Our extension (no paper number): the GN+WS RetinaNet with the ε-shifted L2 term on every ConvWS
# weight (backbone, neck, head) instead of plain decay; coupled, as SGD's own decay.
_base_ = './retinanet_gn_ws_r50.py'
optim_wrapper = dict(
    constructor='EpsShiftedOptimWrapperConstructor',
    paramwise_cfg=dict(eps_shift=dict(eps={{_base_.gn_ws_eps}})))
