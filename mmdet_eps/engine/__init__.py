"""Engine: the ε-shifted optimizer constructor and the stability hook."""
from .optimizers import *  # noqa: F401,F403
