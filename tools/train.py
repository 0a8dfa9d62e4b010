#!/usr/bin/env python
"""Train a detector: mmdet's tools/train.py (same flags: --work-dir, --amp, --auto-scale-lr,
--resume, --cfg-options, --launcher) with mmdet-eps loaded."""
from _openmmlab_tools import run_tool

if __name__ == '__main__':
    run_tool('mmdet', 'train.py')
