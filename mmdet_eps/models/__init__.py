"""Models: normalized conv layers, the backbones built from them, RoI extractors, and the
``Pretrained`` init that keeps weights trained without WS out of WS convs."""
from .backbones import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .roi_extractors import *  # noqa: F401,F403
from .weight_init import *  # noqa: F401,F403
