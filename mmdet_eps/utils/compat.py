"""Compatibility fixes for mmengine 0.10.x and the torch lines we support (2.0 and newer). Each
fix is small, applied when ``mmdet_eps`` is imported, and shown by a test
(tests/utils/test_compat.py).

1. Safe checkpoint loading under torch >= 2.6. torch loads with ``weights_only=True`` by default
   and refuses the numpy values and ``HistoryBuffer`` objects mmengine writes into every
   checkpoint, so ``--resume`` and ``tools/test.py`` fail. Rather than switch safety off, we allow
   exactly those types and route local checkpoint loads through :func:`safe_load`, which always
   loads weights-only and explains a refusal: a checkpoint carrying a pickled callable is refused
   before anything in it runs. torch < 2.4 has no allow-list API
   (``torch.serialization.add_safe_globals``): there :func:`safe_load` unpickles with
   :class:`AllowListUnpickler` (torch's weights-only globals plus mmengine's types), the
   restriction the ``pickle`` docs describe.
2. Distributed training on CPU hosts (gloo). mmengine's pytorch launcher calls
   ``torch.cuda.set_device`` and wraps the model in DDP with ``device_ids=[local_rank]``; both
   fail without a GPU. Without CUDA we skip the former, use gloo instead of nccl, and give DDP
   ``device_ids=None``, so ``tools/dist_train.sh`` runs on CPU (our tests do).
3. What older torch lines lack, asked here instead of torch: :func:`is_compiling`
   (``torch.compiler.is_compiling``, torch >= 2.3), :func:`is_exporting` (torch >= 2.5; before,
   export runs through dynamo and counts as compiling), :data:`CUSTOM_OP_API`
   (``torch.library.register_fake`` and ``register_autograd``, torch >= 2.4: without them the
   fused ops run in eager mode only) and :data:`below_autograd`
   (``torch._C._AutoDispatchBelowAutograd`` as a context manager, torch >= 2.1).
4. Inductor's CPU outer-loop fusion (torch >= 2.5, unfixed in 2.14: pytorch/pytorch#196570, fix
   proposed in #196639) raises ``KeyError: 'bufN'`` when it considers keeping a buffer in a
   local array while one of the buffer's users does not load it by that name (the output of an
   in-place write). A compiled ε-shifted step meets it: the term adds to the gradients in place
   and the optimizer's update, in the same graph, reads them and writes the weights the term
   read. As the proposed fix does, such a buffer is not made local
   (:func:`_fix_outer_loop_local_buffer`): ``LoopBody.get_read_expr``, asked only by that check,
   answers None for a buffer the loop does not load, which the check reads as "not contiguous".
"""
import codecs
import collections
import contextlib
import functools
import os.path as osp
import pickle
import types
from typing import Any, Callable, ContextManager, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as torch_dist
from mmengine.dist import utils as dist_utils
from mmengine.logging import HistoryBuffer
from mmengine.model import MMDistributedDataParallel
from mmengine.runner.checkpoint import CheckpointLoader
from torch.torch_version import TorchVersion

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


#: Whether torch keeps an allow-list of globals for weights-only loading (torch >= 2.4).
ALLOW_LIST_API: bool = hasattr(torch.serialization, 'add_safe_globals')


@functools.lru_cache(maxsize=None)
def _allowed_globals() -> Dict[str, Any]:
    """``module.name`` -> object for what :class:`AllowListUnpickler` may look up: what the
    weights-only loader of this torch allows, the plain types newer torch added to it (mmengine
    writes ``Counter`` s, numpy 1.x raw bytes through ``_codecs.encode``) and mmengine's types."""
    from torch._weights_only_unpickler import _get_allowed_globals
    allowed = dict(_get_allowed_globals())
    allowed.update({'_codecs.encode': codecs.encode, 'builtins.bytearray': bytearray,
                    'builtins.complex': complex, 'builtins.set': set,
                    'collections.Counter': collections.Counter})
    for entry in _mmengine_checkpoint_types():
        obj, name = entry if isinstance(entry, tuple) else (entry, None)
        allowed[name or f'{obj.__module__}.{obj.__qualname__}'] = obj
    return allowed


class DisallowedGlobalError(pickle.UnpicklingError):
    """:class:`AllowListUnpickler` met a global outside its allow-list (a corrupt file raises
    other errors)."""


class AllowListUnpickler(pickle.Unpickler):
    """An unpickler that looks up only torch's weights-only globals and mmengine's checkpoint
    types (torch < 2.4, whose weights-only loader cannot be told about the latter)."""

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed_globals().get(f'{module}.{name}')
        if found is None:
            raise DisallowedGlobalError(f'Unsupported global: GLOBAL {module}.{name} is not an '
                                        'allowed global')
        return found


#: ``pickle_module`` for ``torch.load``: :class:`AllowListUnpickler` for every pickle in a file.
ALLOW_LIST_PICKLE = types.SimpleNamespace(
    __name__=__name__, Unpickler=AllowListUnpickler,
    load=lambda file, **kwargs: AllowListUnpickler(file, **kwargs).load())


def safe_load(filename: str, map_location: Optional[Any] = None) -> Any:
    """``torch.load(weights_only=True)`` (:class:`AllowListUnpickler` on torch < 2.4) with a clear
    error when a file is refused."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    safety = (dict(weights_only=True) if ALLOW_LIST_API else dict(
        weights_only=False, pickle_module=ALLOW_LIST_PICKLE))
    try:
        return torch.load(filename, map_location=map_location, **safety)
    except pickle.UnpicklingError as err:
        if not (ALLOW_LIST_API or isinstance(err, DisallowedGlobalError)):
            raise  # not a refusal: a corrupt or truncated file
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


def _torch_compiler(name: str, default: Callable) -> Callable:
    """``torch.compiler.<name>``, else ``torch._dynamo.<name>`` (older torch), else
    ``default``."""
    found = getattr(getattr(torch, 'compiler', None), name, None)
    if found is None:
        from torch import _dynamo
        found = getattr(_dynamo, name, default)
    return found


#: Whether dynamo traces the caller (``torch.compile``, ``torch.export``).
is_compiling: Callable[[], bool] = _torch_compiler('is_compiling', lambda: False)
#: Whether ``torch.export`` traces the caller (False where torch cannot tell, torch < 2.5).
is_exporting: Callable[[], bool] = _torch_compiler('is_exporting', lambda: False)
#: Whether torch has the custom-op registration API (fake kernels, autograd formulas).
CUSTOM_OP_API: bool = hasattr(torch.library, 'register_fake') and hasattr(
    torch.library, 'register_autograd')


#: A context in which ops dispatch below their autograd kernels (an autograd Function's forward
#: calling a registered op). On torch 2.0 the guard is no context manager, and our ops have no
#: autograd kernel to skip there (:data:`CUSTOM_OP_API`).
below_autograd: Callable[[], ContextManager] = (
    torch._C._AutoDispatchBelowAutograd
    if hasattr(torch._C._AutoDispatchBelowAutograd, '__enter__') else contextlib.nullcontext)


def _fix_outer_loop_local_buffer() -> None:
    """Fix 4, where torch has the outer-loop local buffers. Idempotent."""
    if TorchVersion(torch.__version__) < '2.5':
        return
    try:
        from torch._inductor.loop_body import LoopBody
    except ImportError:  # inductor's layout moved: nothing of this code to fix
        return
    get_read_expr = getattr(LoopBody, 'get_read_expr', None)
    if get_read_expr is None or getattr(get_read_expr, 'none_if_not_loaded', False):
        return

    @functools.wraps(get_read_expr)
    def get_read_expr_or_none(self, buffer_name: str) -> Any:
        try:
            return get_read_expr(self, buffer_name)
        except KeyError:
            return None

    get_read_expr_or_none.none_if_not_loaded = True
    LoopBody.get_read_expr = get_read_expr_or_none


def enable_compat() -> None:
    """Apply fixes 1, 2 and 4. Idempotent; called when ``mmdet_eps`` is imported."""
    if ALLOW_LIST_API:
        torch.serialization.add_safe_globals(_mmengine_checkpoint_types())
    CheckpointLoader.register_scheme(prefixes='', loader=safe_load, force=True)
    if not torch.cuda.is_available():
        dist_utils._init_dist_pytorch = _init_dist_pytorch_cpu
        MMDistributedDataParallel.__init__ = _ddp_init_cpu
    _fix_outer_loop_local_buffer()
