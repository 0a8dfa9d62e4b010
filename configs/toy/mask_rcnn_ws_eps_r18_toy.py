# Mask R-CNN cousin of the demo (configs/mask_rcnn_ws_eps_r50.py at toy size), box and mask AP:
# the toy Faster R-CNN plus the mask branch of mmdet::_base_/models/mask-rcnn_r50_fpn.py.
_base_ = './faster_rcnn_ws_eps_r18_toy.py'

model = dict(
    type='MaskRCNN',
    data_preprocessor=dict(pad_mask=True),
    roi_head=dict(
        mask_roi_extractor=dict(
            type='RegistryRoIExtractor',
            roi_layer=dict(type='DenseRoIAlign', output_size=14, sampling_ratio=0),
            out_channels=64,
            featmap_strides=[4, 8, 16, 32]),
        mask_head=dict(
            type='FCNMaskHead',
            num_convs=4,
            in_channels=64,
            conv_out_channels=64,
            num_classes=5,
            loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))),
    train_cfg=dict(rcnn=dict(assigner=dict(match_low_quality=True), mask_size=28)),
    test_cfg=dict(rcnn=dict(mask_thr_binary=0.5)))

val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
