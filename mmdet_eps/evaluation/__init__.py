"""Evaluation: mmdet's COCO metric computed by faster-coco-eval."""
from .fast_coco_metric import FastCocoMetric

__all__ = ['FastCocoMetric']
