# Shared by every mmdet-eps config: load the plugin, say where the ImageNet WS-ResNets are.
custom_imports = dict(imports=['mmdet_eps'], allow_failed_imports=False)

# Set once: the backbones written by tools/convert_imagenet_ckpt.py (see README).
ws_pretrained = dict(
    r50='checkpoints/ws_resnet50_imagenet.pth',
    r101='checkpoints/ws_resnet101_imagenet.pth')

# The ε the authors published with their ImageNet WS-ResNets (R-50: 1e-3, R-101: 1e-6).
eps_per_depth = dict(r50=1e-3, r101=1e-6)

# Report every column of the paper's tables (AP, AP50, AP75, APs/m/l, ARs/m/l).
coco_metric_items = [
    'mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l', 'AR_s@1000', 'AR_m@1000', 'AR_l@1000'
]
