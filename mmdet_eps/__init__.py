"""mmdet-eps: the ε-shifted L2 regularizer for weight-normalized detectors in MMDetection.

Importing this package (``custom_imports=dict(imports=['mmdet_eps'])``) registers the WS/WN/CWN
conv layers and WS-ResNet backbones in mmdet's MODELS, the ε-shifted optimizer-wrapper
constructor, and enables safe checkpoint loading under torch >= 2.6.
"""
from .engine import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .utils import enable_safe_checkpoint_loading

__version__ = '0.1.0'

enable_safe_checkpoint_loading()
