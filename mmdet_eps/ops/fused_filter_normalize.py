"""Typed wrappers of the fused CPU ops in ``csrc/filter_normalize.cpp``.

The ops take lists of weights of any filter shapes and work per filter in one call each:
``normalize_filters`` (forward: normalized weights and per-filter rstds), its backward (from
the normalized weights, which the convolutions keep anyway, not from the weights), and
``eps_shift_`` (``target += a W + b (W - m) rstd``, the ε-shifted step, with each filter's mean
and rstd reduced from the weight as it is at the step). They are built by
``setup.py`` as ``mmdet_eps._ext_torch<major>_<minor>`` (a plain shared library registering
``torch.ops.mmdet_eps``; one per torch line, so venvs of several torch lines can share an
editable checkout); when it is absent (no compiler at install, or a copy of the sources that
was not installed) :data:`FUSED_AVAILABLE` is False and callers use the torch-ops path, which
gives the same results. Only CPU kernels exist: on a GPU the torch-ops path runs.

As torch documents for custom ops, each op has a fake kernel (output shapes from input shapes,
``torch.library.register_fake``) and ``normalize_filters`` its autograd formula
(``torch.library.register_autograd``: the backward op), so ``torch.compile`` and AOT autograd
trace them like aten ops (``torch.library.opcheck`` passes, tests/ops). torch < 2.4 has no such
registration: there the ops run in eager mode only and compiled graphs use torch ops. In a
compiled graph the forward writes channels-last outputs, the layout that inductor's CPU
convolutions take, and the backward takes its inputs in the layout they come in
(``flexible_layout``) and writes contiguous gradients, the weights' layout: inductor copies no
weight or gradient into another layout for them.
"""
import glob
import os.path as osp
import warnings
from importlib.machinery import EXTENSION_SUFFIXES
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from mmdet_eps.utils.compat import CUSTOM_OP_API, below_autograd, is_compiling

_DTYPES = (torch.float32, torch.float64)


def extension_name() -> str:
    """The extension's module name for the torch line in use (C++ ABI differs across lines)."""
    major, minor = torch.__version__.split('.')[:2]
    return f'_ext_torch{major}_{minor}'


def _load() -> bool:
    """Load the extension; without it, say so once (a warning, on stderr) and return False."""
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    for suffix in EXTENSION_SUFFIXES:
        for path in glob.glob(osp.join(root, extension_name() + suffix)):
            try:
                torch.ops.load_library(path)
            except OSError as error:  # built for another torch: rebuild with `make setup`
                warnings.warn(f'{path} does not load ({error}); using torch ops instead of '
                              'the fused CPU ops (rebuild: pip install -e .)', stacklevel=2)
                return False
            return True
    warnings.warn(f'mmdet_eps.{extension_name()} is not built: weights are normalized with torch '
                  'ops (same results; `pip install -e .` builds the fused CPU ops)', stacklevel=2)
    return False


def _fake_normalize_filters(weights: List[Tensor], shift: List[float], eps: List[float],
                            centered: List[int],
                            channels_last: bool = False) -> Tuple[List[Tensor], Tensor]:
    torch._check(len(weights) > 0, lambda: 'normalize_filters: no weights')
    outs = [torch.empty_like(w, memory_format=torch.channels_last)
            if channels_last and w.dim() == 4 else torch.empty_like(w) for w in weights]
    return outs, weights[0].new_empty(sum(w.shape[0] for w in weights))


def _fake_normalize_filters_backward(grads: List[Tensor], outs: List[Tensor], rstd: Tensor,
                                     offsets: List[int], shift: List[float], eps: List[float],
                                     centered: List[int]) -> List[Tensor]:
    torch._check(len(grads) == len(outs), lambda: 'argument lists of different lengths')
    return [torch.empty_like(o, memory_format=torch.contiguous_format) for o in outs]


def _fake_eps_shift_(targets: List[Tensor], weights: List[Tensor], a: List[float],
                     b: List[float], centered: List[int]) -> None:
    torch._check(len(targets) == len(weights), lambda: 'argument lists of different lengths')


def _save(ctx, weights: Sequence[Tensor], outs: Sequence[Tensor], rstd: Tensor,
          shift: Sequence[float], eps: Sequence[float], centered: Sequence[int]) -> None:
    """What the backward of ``normalize_filters`` needs, in an autograd ``ctx``: the outputs
    (which the convolutions save too) and the rstds."""
    ctx.save_for_backward(*outs, rstd)
    ctx.args = (offsets_of(weights), list(shift), list(eps), list(centered))
    # a frozen weight's output needs no gradient: its conv skips the weight's backward
    ctx.mark_non_differentiable(rstd,
                                *[o for o, w in zip(outs, weights) if not w.requires_grad])
    ctx.set_materialize_grads(False)  # an unused output's weight gets no gradient, not zeros


def _weight_grads(ctx, grads: Sequence[Optional[Tensor]],
                  needs: Sequence[bool]) -> List[Optional[Tensor]]:
    """The weights' gradients (None for a frozen weight or an unused output)."""
    *outs, rstd = ctx.saved_tensors
    need = [i for i, needed in enumerate(needs) if needed and grads[i] is not None]
    offsets, shift, eps, centered = ([seq[i] for i in need] for seq in ctx.args)
    grads_in = fused_normalize_filters_backward([grads[i] for i in need],
                                                [outs[i] for i in need], rstd, offsets, shift,
                                                eps, centered)
    result: List[Optional[Tensor]] = [None] * len(outs)
    for i, grad in zip(need, grads_in):
        result[i] = grad
    return result


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    weights, shift, eps, centered = inputs[:4]
    _save(ctx, weights, *output, shift, eps, centered)


def _backward(ctx, grads: List[Optional[Tensor]], grad_rstd: Optional[Tensor]) -> tuple:
    # one entry per argument given (channels_last is optional)
    return (_weight_grads(ctx, grads, ctx.needs_input_grad[0]),
            *[None] * (len(ctx.needs_input_grad) - 1))


class _FusedNormalizeFilters(torch.autograd.Function):
    """The op with the same autograd formula as its registration, as a plain Function: eager
    mode's path, with less Python per call than the registered formula's generic wrapper (in
    the launch-bound regime that is a few per cent of an iteration, B8). Compiled graphs call
    the registered op. Inputs: per-weight ``shift``, ``eps``, ``centered``, then the weights."""

    @staticmethod
    def forward(ctx, shift: List[float], eps: List[float], centered: List[int],
                *weights: Tensor) -> Tuple[Tensor, ...]:
        with below_autograd():
            outs, rstd = torch.ops.mmdet_eps.normalize_filters(weights, shift, eps, centered)
        _save(ctx, weights, outs, rstd, shift, eps, centered)
        return (*outs, rstd)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
        return (None, None, None, *_weight_grads(ctx, grads[:-1], ctx.needs_input_grad[3:]))


def _register() -> None:
    """Fake kernels and the autograd formula of the ops (see the module's docstring)."""
    torch.library.register_fake('mmdet_eps::normalize_filters')(_fake_normalize_filters)
    torch.library.register_fake('mmdet_eps::normalize_filters_backward')(
        _fake_normalize_filters_backward)
    torch.library.register_fake('mmdet_eps::eps_shift_')(_fake_eps_shift_)
    torch.library.register_autograd('mmdet_eps::normalize_filters', _backward,
                                    setup_context=_setup_context)


#: Whether the compiled ops are loaded.
FUSED_AVAILABLE: bool = _load()
if FUSED_AVAILABLE and CUSTOM_OP_API:  # before torch 2.4 the ops run in eager mode only
    _register()


def fused_unsupported(tensors: Sequence[Tensor]) -> Optional[str]:
    """Why the fused ops cannot take ``tensors`` (None when they can): they need the extension
    and contiguous CPU tensors of one floating dtype, float32 or float64 (and, in a compiled
    graph, torch >= 2.4)."""
    if not FUSED_AVAILABLE:
        return f'the compiled extension mmdet_eps.{extension_name()} is not built'
    if not CUSTOM_OP_API and is_compiling():
        return f'torch {torch.__version__} cannot trace custom ops (torch >= 2.4 can)'
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
                            centered: Sequence[int]) -> Tuple[List[Tensor], Tensor]:
    """Per weight ``(W - m) t`` (``m = 0`` unless centered), ``t = rstd / (shift + eps rstd)``;
    channels-last outputs of 4-d weights under ``torch.compile`` (see the module's docstring).

    Returns:
        tuple[list[Tensor], Tensor]: The normalized weights, and the per-filter rstds
        (``1 / sqrt(||u||² / n)``, plus float's smallest normal number inside the sqrt when
        ``eps > 0``) of all weights, concatenated in order.
    """
    if is_compiling():
        return torch.ops.mmdet_eps.normalize_filters(weights, shift, eps, centered, True)
    *outs, rstd = _FusedNormalizeFilters.apply(shift, eps, centered, *weights)
    return list(outs), rstd


def fused_normalize_filters_backward(grads: Sequence[Tensor], outs: Sequence[Tensor],
                                     rstd: Tensor, offsets: Sequence[int],
                                     shift: Sequence[float], eps: Sequence[float],
                                     centered: Sequence[int]) -> List[Tensor]:
    """The gradients of weights given those of their :func:`fused_normalize_filters` outputs
    ``outs``; weight ``i``'s rstds start at ``offsets[i]`` in ``rstd``."""
    return torch.ops.mmdet_eps.normalize_filters_backward(grads, outs, rstd, offsets, shift, eps,
                                                          centered)


def offsets_of(weights: Sequence[Tensor]) -> List[int]:
    """Where each weight's filters start when the filters of all are numbered in order."""
    offsets, start = [], 0
    for weight in weights:
        offsets.append(start)
        start += weight.shape[0]
    return offsets


def fused_eps_shift_(targets: Sequence[Tensor], weights: Sequence[Tensor], a: Sequence[float],
                     b: Sequence[float], centered: Sequence[int]) -> None:
    """``targets[i] += a[i] W + b[i] (W - m) rstd`` per filter of ``W = weights[i]``, in place
    (a target may be its weight), with the filter's mean ``m`` (0 unless ``centered[i]``) and
    ``rstd = 1 / sqrt(||W - m||² / n + tiny)`` computed from ``W`` in the same pass."""
    torch.ops.mmdet_eps.eps_shift_(targets, weights, a, b, centered)
