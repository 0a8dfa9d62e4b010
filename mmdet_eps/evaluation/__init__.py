"""Evaluation: mmdet's COCO metric with an optional faster-coco-eval backend."""
from .fast_coco_metric import FastCocoMetric

__all__ = ['FastCocoMetric']
