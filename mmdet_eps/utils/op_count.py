"""Count the aten ops a piece of code dispatches: on a GPU at small batch each is a kernel
launch (views aside), so the count predicts launch-bound time better than a CPU timer."""
from collections import Counter
from typing import Callable

from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Context manager that counts every aten op dispatched inside it, by name.

    ``total`` is the number of ops; ``by_name`` a ``Counter`` of ``aten.<op>.<overload>``.
    Ops that a composite op decomposes into are counted; those run inside one kernel are not.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_name: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.by_name[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.by_name.values())


def count_ops(fn: Callable[[], object]) -> OpCounter:
    """Run ``fn()`` once and return the counter of the ops it dispatched."""
    with OpCounter() as counter:
        fn()
    return counter
