#!/usr/bin/env python
"""Evaluate a checkpoint: mmdet's tools/test.py (same flags: --work-dir, --out, --show-dir,
--cfg-options, --launcher, --tta) with mmdet-eps loaded."""
from _openmmlab_tools import run_tool

if __name__ == '__main__':
    run_tool('mmdet', 'test.py')
