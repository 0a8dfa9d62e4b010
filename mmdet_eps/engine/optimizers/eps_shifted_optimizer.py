"""Optimizers whose ``step`` applies the ε-shifted term, then their own update.

``eps_shifted_class(SGD)`` is ``EpsShiftedSGD``, a subclass of ``SGD`` whose ``step`` applies the
ε-shifted term (:func:`apply_eps_shift`) to the tagged param groups and then runs SGD's own update,
both in one no-grad region, as torch's weight decay is part of the update. Under ``torch.compile``
the term and the update are traced into one graph, so inductor fuses them (the term reads the
weights and gradients the update reads anyway), where a step pre-hook would run as a graph of its
own before torch's no-grad graph break. Step pre/post hooks, the profiler range and LR schedulers
work as for the base class; the optimizer's state dict is the base class's.
"""
import functools
import inspect
from typing import Any, Callable, Optional, Type

import torch
from torch.optim import Optimizer

from mmdet_eps.utils.compat import is_compiling

from .eps_shifted_regularizer import apply_eps_shift

#: The profiler range of the term inside the step (eager mode; compilers drop ranges).
EPS_SHIFT_RANGE = 'EpsShifted.eps_shift'


def _graph_break() -> None:
    """A dynamo graph break, as torch's optimizers place them around their no-grad update: the
    compiled update is then an inference graph, which inductor applies in place. Nothing in
    eager mode."""
    if is_compiling():
        import torch._dynamo
        torch._dynamo.graph_break()


class EpsShiftedOptimizer:
    """Mixin of the classes :func:`eps_shifted_class` builds; ``_update`` is the base class's
    ``step`` without its wrappers (hooks, grad mode), which this ``step`` provides."""

    _update: Callable[..., Any]
    _base: Type[Optimizer]

    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """The closure (if any, with gradients enabled), then :meth:`eps_shifted_update` without
        gradients; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        prev = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(False)
            _graph_break()
            self.eps_shifted_update()
        finally:
            _graph_break()
            torch.set_grad_enabled(prev)
        return loss

    def eps_shifted_update(self) -> None:
        """The ε-shifted term on the gradients or weights as they are now, then the base
        optimizer's update. A function of its own, so that dynamo compiles the two as one frame
        (it runs a frame whose ``try`` block breaks the graph, as ``step``'s, eagerly)."""
        with torch.autograd.profiler.record_function(EPS_SHIFT_RANGE):
            apply_eps_shift(self.param_groups)
        self._update()

    def __reduce_ex__(self, protocol: int) -> tuple:
        # the class is built at run time: pickle and deepcopy rebuild it from the base class
        return _new_instance, (self._base, ), self.__getstate__()


@functools.lru_cache(maxsize=None)
def eps_shifted_class(base: Type[Optimizer]) -> Type[Optimizer]:
    """The subclass of ``base`` whose ``step`` applies the ε-shifted term first (one class per
    base, so ``type(a) is type(b)`` for two optimizers of one kind).

    Args:
        base (type): A ``torch.optim.Optimizer`` subclass whose ``step`` updates from the
            gradients it finds (not a fused or closure-driven optimizer).

    Returns:
        type: ``EpsShifted<base name>``, a subclass of ``base``.
    """
    if not (isinstance(base, type) and issubclass(base, Optimizer)):
        raise TypeError(f'expected a torch.optim.Optimizer subclass, got {base!r}')
    if issubclass(base, EpsShiftedOptimizer):
        return base
    cls = type(f'EpsShifted{base.__name__}', (EpsShiftedOptimizer, base), {
        '__module__': __name__,
        '__doc__': f'{base.__name__} with the ε-shifted term applied in its step.',
        '_update': inspect.unwrap(base.step),
        '_base': base,
    })
    cls.step = Optimizer.profile_hook_step(EpsShiftedOptimizer.step)  # hooks, profiler range
    cls.step.hooked = True
    return cls


def _new_instance(base: Type[Optimizer]) -> Optimizer:
    cls = eps_shifted_class(base)
    return cls.__new__(cls)


def make_eps_shifted(optimizer: Optimizer) -> Optimizer:
    """Turn a built optimizer into its :func:`eps_shifted_class` (in place; returned).

    Its param groups, state and hooks are kept; call it before an LR scheduler wraps ``step``.
    """
    if 'step' in vars(optimizer):
        raise ValueError(f'{type(optimizer).__name__}.step is already wrapped on the instance '
                         '(an LR scheduler?): make the optimizer ε-shifted before that')
    optimizer.__class__ = eps_shifted_class(type(optimizer))
    return optimizer
