# The toy detector: mmdet's Faster R-CNN with FPN at toy size, on a narrow WS-ResNet-18 trained
# from scratch. The Mask and Cascade R-CNN toy configs inherit it and add their heads. Every
# choice was measured (docs/demo.md): the narrow backbone with DenseRoIAlign makes an iteration
# ~2.5x cheaper than ResNet-18 with mmcv's CPU RoIAlign, which buys the iterations.
_base_ = 'mmdet::_base_/models/faster-rcnn_r50_fpn.py'

model = dict(
    # From scratch: BN must train (a WS backbone with frozen fresh BN gives NaN at iteration 1).
    # Half the usual width (base_channels=32): a quarter of the conv cost, enough for the toy
    # shapes.
    backbone=dict(
        type='WSResNet',
        depth=18,
        base_channels=32,
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    # Anchors of 16-256 px (scale 4 on strides 4-64) for objects of 20-90 px in 160x128 images.
    rpn_head=dict(in_channels=64, feat_channels=64, anchor_generator=dict(scales=[4])),
    roi_head=dict(
        # RoIAlign as matrix products on the small maps (equal to mmcv's op, faster on CPU).
        bbox_roi_extractor=dict(
            type='RegistryRoIExtractor', roi_layer=dict(type='DenseRoIAlign'), out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=5)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=600, max_per_img=300),
        # 96 sampled RoIs per image instead of 512: fewer RoIs to pool and classify (same mAP as
        # 128, 12 % cheaper iterations).
        rcnn=dict(sampler=dict(num=96))),
    test_cfg=dict(rpn=dict(nms_pre=600, max_per_img=300)))
