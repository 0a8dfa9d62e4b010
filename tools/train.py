#!/usr/bin/env python
"""Train a detector: mmdet's tools/train.py (same flags: --work-dir, --amp, --auto-scale-lr,
--resume, --cfg-options, --launcher) with mmdet-eps loaded."""
from _mmdet_tools import run_mmdet_tool

if __name__ == '__main__':
    run_mmdet_tool('train.py')
