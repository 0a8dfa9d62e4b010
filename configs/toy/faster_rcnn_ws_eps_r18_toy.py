# Faster R-CNN cousin of the demo (configs/faster_rcnn_ws_eps_r50.py at toy size), and the base
# of the Mask and Cascade R-CNN toy configs.
_base_ = [
    './_base_/toy_faster_rcnn.py', './_base_/toy_coco.py', './_base_/toy_schedule.py'
]
