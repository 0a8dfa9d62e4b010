"""The ε-shifted L2 regularizer and the constructor that applies it."""
from .eps_shifted_constructor import EpsShiftedOptimWrapperConstructor
from .eps_shifted_regularizer import EpsShiftStep, eps_shift, eps_shifted_grad

__all__ = ['EpsShiftedOptimWrapperConstructor', 'EpsShiftStep', 'eps_shift', 'eps_shifted_grad']
