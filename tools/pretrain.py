#!/usr/bin/env python
"""Pretrain a WS backbone on ImageNet: mmpretrain's tools/train.py (same flags: --work-dir,
--amp, --auto-scale-lr, --resume, --no-validate, --cfg-options, --launcher) with mmdet-eps
loaded. Needs the extra: pip install -e '.[pretrain]'. See docs/pretrain.md."""
from _openmmlab_tools import run_tool

if __name__ == '__main__':
    run_tool('mmpretrain', 'train.py')
