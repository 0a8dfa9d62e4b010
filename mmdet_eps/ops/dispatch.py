"""Which implementation runs: the one decision between the fused CPU ops and torch ops, for the
layers' normalization and the ε-shifted step alike, as torch's optimizers choose between their
``_single_tensor_*`` / ``_multi_tensor_*`` / ``_fused_*`` functions by one flag."""
import enum
from typing import Optional, Sequence

import torch
from torch import Tensor

from mmdet_eps.utils.compat import is_compiling, is_exporting

from .fused_filter_normalize import fused_unsupported


class Impl(enum.Enum):
    """How a formula is computed."""
    #: The fused CPU ops (``mmdet_eps.ops``): eager, or registered custom ops in a graph.
    FUSED = 'fused'
    #: torch ops, with a hand-written backward where one pays (eager mode, any device).
    TORCH = 'torch'
    #: torch ops that the compiler or an exporter traces and differentiates itself.
    TRACEABLE = 'traceable'


def exporting() -> bool:
    """Whether an exporter traces the caller (``torch.export``, ONNX, TorchScript tracing): the
    graph must then hold standard ops only."""
    return torch.jit.is_tracing() or is_exporting()


def select_impl(tensors: Sequence[Tensor], fused: Optional[bool] = None) -> Impl:
    """The implementation for ``tensors`` given the user's ``fused`` flag.

    Args:
        tensors (Sequence[Tensor]): What the ops would read and write.
        fused (bool, optional): True: the fused CPU ops (an error where they cannot run);
            False: torch ops. Defaults to None: the fused ops wherever they take the tensors,
            in eager mode and (as custom ops, torch >= 2.4) in compiled graphs alike; torch
            ops elsewhere (GPUs: there inductor fuses them itself). Exporters always get torch
            ops.

    Returns:
        Impl: The implementation to run.
    """
    if exporting():
        return Impl.TRACEABLE
    torch_ops = Impl.TRACEABLE if is_compiling() else Impl.TORCH
    if fused is False:
        return torch_ops
    why = fused_unsupported(tensors)
    if why is None:
        return Impl.FUSED
    if fused:
        raise RuntimeError(f'fused ops unavailable: {why}')
    return torch_ops
