# Our extension (no paper number): mmdet's GN+WS model and ImageNet weights, unchanged, with the
# ε-shifted L2 term on every ConvWS weight (backbone, neck, heads) instead of plain decay.
_base_ = './faster_rcnn_gn_ws_r50.py'
optim_wrapper = dict(
    constructor='EpsShiftedOptimWrapperConstructor',
    paramwise_cfg=dict(eps_shift=dict(eps={{_base_.gn_ws_eps}})))
