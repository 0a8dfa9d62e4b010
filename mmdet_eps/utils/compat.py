"""Compatibility fixes for mmengine 0.10.x on the torch and hosts we support. Each fix is small,
applied when ``mmdet_eps`` is imported, and shown by a test (tests/utils/test_compat.py).

1. Safe checkpoint loading under torch >= 2.6. torch loads with ``weights_only=True`` by default
   and refuses the numpy values and ``HistoryBuffer`` objects mmengine writes into every
   checkpoint, so ``--resume`` and ``tools/test.py`` fail. Rather than switch safety off, we allow
   exactly those types and route local checkpoint loads through :func:`safe_load`, which always
   loads weights-only (on older torch too) and explains a refusal: a checkpoint carrying a pickled
   callable is refused before anything in it runs.
2. Distributed training on CPU hosts (gloo). mmengine's pytorch launcher calls
   ``torch.cuda.set_device`` and wraps the model in DDP with ``device_ids=[local_rank]``; both
   fail without a GPU. Without CUDA we skip the former, use gloo instead of nccl, and give DDP
   ``device_ids=None``, so ``tools/dist_train.sh`` runs on CPU (our tests do).
"""
import os.path as osp
import pickle
from typing import Any, List, Optional

import numpy as np
import torch
import torch.distributed as torch_dist
from mmengine.dist import utils as dist_utils
from mmengine.logging import HistoryBuffer
from mmengine.model import MMDistributedDataParallel
from mmengine.runner.checkpoint import CheckpointLoader

try:
    from numpy._core import multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds objects other than tensors and the plain types mmengine writes."""


def _history_buffer_method(obj: Any, name: str) -> Any:
    """The one ``getattr`` mmengine checkpoints hold: a ``HistoryBuffer`` statistics method
    (its ``_statistics_methods`` dict pickles ``getattr(HistoryBuffer, 'mean')``). A general
    ``getattr`` would reopen the door weights-only loading closes, so nothing else is allowed."""
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS | set(
            HistoryBuffer._statistics_methods):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'getattr({obj!r}, {name!r}) is not allowed in a checkpoint')


_HISTORY_BUFFER_METHODS = {'min', 'max', 'current', 'mean'}


def _mmengine_checkpoint_types() -> List[Any]:
    """The non-tensor types mmengine 0.10.x pickles into checkpoints (meta, message hub)."""
    return [
        HistoryBuffer,
        (_history_buffer_method, '__builtin__.getattr'),
        (_history_buffer_method, 'builtins.getattr'),
        np.ndarray,
        np.dtype,
        np.dtypes.Float64DType,
        np.dtypes.Float32DType,
        np.dtypes.Int64DType,
        np.dtypes.Int32DType,
    ] + [(getattr(multiarray, name), f'{module}.{name}')  # numpy 2 and numpy 1.x names
         for name in ('_reconstruct', 'scalar')
         for module in ('numpy._core.multiarray', 'numpy.core.multiarray')]


def safe_load(filename: str, map_location: Optional[Any] = None) -> Any:
    """``torch.load(weights_only=True)`` with a clear error when a file is refused."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = str(err).splitlines()
        detail = next((line.strip() for line in lines
                       if any(word in line for word in ('GLOBAL', 'Unpickler', 'Can only build'))),
                      lines[0] if lines else '')
        raise UnsafeCheckpointError(
            f'Refused to load {filename}: it contains objects that are not tensors or the '
            f'plain types mmengine writes (nothing from it was executed). If you trust the '
            f'file, re-save its tensors with torch.save(state_dict). Details: {detail}') from None


def _init_dist_pytorch_cpu(backend: str, init_backend: str = 'torch', **kwargs) -> None:
    """mmengine's pytorch launcher without ``torch.cuda.set_device``; nccl becomes gloo."""
    torch_dist.init_process_group(backend='gloo' if backend == 'nccl' else backend, **kwargs)


_ddp_init = MMDistributedDataParallel.__init__


def _ddp_init_cpu(self, module: torch.nn.Module, *args, **kwargs) -> None:
    """``MMDistributedDataParallel.__init__`` with ``device_ids=None`` for a CPU module."""
    if all(p.device.type == 'cpu' for p in module.parameters()):
        kwargs['device_ids'] = None
    _ddp_init(self, module, *args, **kwargs)


def enable_compat() -> None:
    """Apply both fixes. Idempotent; called when ``mmdet_eps`` is imported."""
    torch.serialization.add_safe_globals(_mmengine_checkpoint_types())
    CheckpointLoader.register_scheme(prefixes='', loader=safe_load, force=True)
    if not torch.cuda.is_available():
        dist_utils._init_dist_pytorch = _init_dist_pytorch_cpu
        MMDistributedDataParallel.__init__ = _ddp_init_cpu
