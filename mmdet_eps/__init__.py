"""mmdet-eps: the ε-shifted L2 regularizer for weight-normalized detectors in MMDetection.

Importing this package (``custom_imports=dict(imports=['mmdet_eps'])``) registers the WS/WN/CWN
conv layers, the ε-shifted optimizer-wrapper constructor and ``WeightNormStatsHook`` in
mmengine's root registries (found from any toolbox's scope) and mmdet's, the WS-ResNet backbones,
RoI extractors and ``FastCocoMetric`` in mmdet's, and applies the compatibility fixes of
``mmdet_eps.utils.compat``.
"""
from .engine import *  # noqa: F401,F403
from .evaluation import *  # noqa: F401,F403
from .models import *  # noqa: F401,F403
from .utils import enable_compat

__version__ = '0.1.0'

enable_compat()
