"""Models: normalized conv layers, the backbones built from them, and RoI extractors."""
from .backbones import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .roi_extractors import *  # noqa: F401,F403
