"""Models: normalized conv layers and the backbones built from them."""
from .backbones import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
