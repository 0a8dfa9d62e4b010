# Shared by every mmdet-eps config: load the plugin, say where the ImageNet WS-ResNets are.
custom_imports = dict(imports=['mmdet_eps'], allow_failed_imports=False)

# Set once: the backbones written by tools/model_converters/convert_imagenet_ckpt.py (see README),
# marked as trained with WS (the Pretrained init refuses weights trained without WS for WS convs).
ws_pretrained = dict(
    r50='checkpoints/ws_resnet50_imagenet.pth',
    r101='checkpoints/ws_resnet101_imagenet.pth',
    x101='checkpoints/ws_resnext101_32x4d_imagenet.pth')

# The ε the authors published with their ImageNet WS nets (R-50: 1e-3, R-101: 1e-6, X-101: 1e-3).
eps_per_depth = dict(r50=1e-3, r101=1e-6, x101=1e-3)

# Our extension to mmdet's GN+WS configs (JHU ImageNet weights, trained without the term, so no
# published ε): the authors' R-50 / X-101 value, among the best two on ImageNet (Table IV).
gn_ws_eps = 1e-3

# Report every column of the paper's tables (AP, AP50, AP75, APs/m/l, ARs/m/l).
coco_metric_items = [
    'mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l', 'AR_s@1000', 'AR_m@1000', 'AR_l@1000'
]
