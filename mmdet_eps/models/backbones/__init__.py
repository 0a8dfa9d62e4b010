"""Backbones whose convs belong to the weight-normalization family."""
from .ws_cspnext import WSCSPNeXt
from .ws_resnet import WSResNet, WSResNeXt

__all__ = ['WSCSPNeXt', 'WSResNet', 'WSResNeXt']
