"""Typed wrappers of the fused CPU ops in ``csrc/filter_normalize.cpp``.

The ops take lists of weights of any filter shapes and work per filter in one call each:
``normalize_filters`` (forward: normalized weights, per-filter mean and rstd), its backward, and
``eps_shift_`` (``target += a W + b (W - m) rstd``, the ε-shifted step). They are built by
``setup.py`` as ``mmdet_eps._ext`` (a plain shared library registering ``torch.ops.mmdet_eps``);
when it is absent (no compiler at install, or a copy of the sources that was not installed)
:data:`FUSED_AVAILABLE` is False and callers use the torch-ops path, which gives the same
results. Only CPU kernels exist: on a GPU the torch-ops path runs.
"""
import glob
import os.path as osp
import warnings
from importlib.machinery import EXTENSION_SUFFIXES
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

_DTYPES = (torch.float32, torch.float64)


def _load() -> bool:
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    for suffix in EXTENSION_SUFFIXES:
        for path in glob.glob(osp.join(root, '_ext' + suffix)):
            try:
                torch.ops.load_library(path)
            except OSError as error:  # built for another torch: rebuild with `make setup`
                warnings.warn(f'{path} does not load ({error}); using torch ops instead of '
                              'the fused CPU ops (rebuild: pip install -e .)', stacklevel=2)
                return False
            return True
    return False


#: Whether the compiled ops are loaded.
FUSED_AVAILABLE: bool = _load()


def fused_unsupported(tensors: Sequence[Tensor]) -> Optional[str]:
    """Why the fused ops cannot take ``tensors`` (None when they can): they need the extension
    and contiguous CPU tensors of one floating dtype, float32 or float64."""
    if not FUSED_AVAILABLE:
        return 'the compiled extension mmdet_eps._ext is not built'
    dtype = tensors[0].dtype if tensors else None
    if dtype in _DTYPES and all(t.is_cpu and t.dtype == dtype and t.is_contiguous()
                                for t in tensors):
        return None
    for t in tensors:
        if not t.is_cpu:
            return f'tensors on {t.device} (CPU only)'
        if t.dtype != dtype or dtype not in _DTYPES:
            return f'dtype {t.dtype} (float32/float64, one for all)'
    return 'a non-contiguous tensor (e.g. channels_last)'


def fused_normalize_filters(weights: Sequence[Tensor], shift: Sequence[float],
                            eps: Sequence[float],
                            centered: Sequence[int]) -> Tuple[List[Tensor], Tensor, Tensor]:
    """Per weight ``(W - m) t`` (``m = 0`` unless centered), ``t = rstd / (shift + eps rstd)``.

    Returns:
        tuple[list[Tensor], Tensor, Tensor]: The normalized weights, and the per-filter means
        and rstds (``1 / sqrt(||u||² / n)``, plus float's smallest normal number inside the
        sqrt when ``eps > 0``) of all weights, concatenated in order.
    """
    return torch.ops.mmdet_eps.normalize_filters(weights, shift, eps, centered)


def fused_normalize_filters_backward(grads: Sequence[Tensor], weights: Sequence[Tensor],
                                     mean: Tensor, rstd: Tensor, offsets: Sequence[int],
                                     shift: Sequence[float], eps: Sequence[float],
                                     centered: Sequence[int]) -> List[Tensor]:
    """The gradients of weights given those of their :func:`fused_normalize_filters` outputs;
    weight ``i``'s statistics start at ``offsets[i]`` in ``mean`` and ``rstd``."""
    return torch.ops.mmdet_eps.normalize_filters_backward(grads, weights, mean, rstd, offsets,
                                                          shift, eps, centered)


def fused_filter_moments(weights: Sequence[Tensor],
                         centered: Sequence[int]) -> Tuple[Tensor, Tensor, List[int]]:
    """Per-filter means and rstds of weights as the forward computes them with ``eps > 0``
    (concatenated), and each weight's offset in them."""
    _, mean, rstd = fused_normalize_filters(weights, [1.] * len(weights), [1.] * len(weights),
                                            centered)
    return mean, rstd, offsets_of(weights)


def offsets_of(weights: Sequence[Tensor]) -> List[int]:
    """Where each weight's filters start when the filters of all are numbered in order."""
    offsets, start = [], 0
    for weight in weights:
        offsets.append(start)
        start += weight.shape[0]
    return offsets


def fused_eps_shift_(targets: Sequence[Tensor], weights: Sequence[Tensor],
                     means: Sequence[Tensor], rstds: Sequence[Tensor], offsets: Sequence[int],
                     a: Sequence[float], b: Sequence[float]) -> None:
    """``targets[i] += a[i] W + b[i] (W - m) rstd`` per filter, in place (a target may be its
    weight); weight ``i``'s statistics start at ``offsets[i]`` in ``means[i]`` and
    ``rstds[i]``."""
    torch.ops.mmdet_eps.eps_shift_(targets, weights, means, rstds, offsets, a, b)
