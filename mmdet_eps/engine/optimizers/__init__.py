"""The ε-shifted L2 regularizer, the optimizers that apply it and the constructor."""
from .eps_shifted_constructor import EpsShiftedOptimWrapperConstructor
from .eps_shifted_optimizer import EpsShiftedOptimizer, eps_shifted_class, make_eps_shifted
from .eps_shifted_regularizer import apply_eps_shift, eps_shift, eps_shifted_grad

__all__ = [
    'EpsShiftedOptimWrapperConstructor', 'EpsShiftedOptimizer', 'apply_eps_shift', 'eps_shift',
    'eps_shifted_class', 'eps_shifted_grad', 'make_eps_shifted'
]
