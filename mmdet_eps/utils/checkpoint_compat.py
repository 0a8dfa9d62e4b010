"""Compatibility: load mmengine 0.10.x checkpoints safely under torch >= 2.6.

torch >= 2.6 loads with ``weights_only=True`` by default, which refuses the numpy scalars and
``HistoryBuffer`` objects mmengine writes into every checkpoint, so ``--resume`` and
``tools/test.py`` fail. Rather than switch safety off, :func:`enable_safe_checkpoint_loading`
allows exactly the types mmengine writes and replaces mmengine's local-file loader by one that
always loads weights-only (also on older torch) and explains a refusal. A checkpoint carrying a
pickled callable is refused before anything in it runs.
"""
import os.path as osp
import pickle
from typing import Any, List, Optional

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds objects other than tensors and the plain types mmengine writes."""


def _mmengine_checkpoint_types() -> List[Any]:
    """The non-tensor types mmengine 0.10.x pickles into checkpoints (meta, message hub)."""
    return [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        np.dtypes.Float64DType,
        np.dtypes.Float32DType,
        np.dtypes.Int64DType,
        np.dtypes.Int32DType,
        np.core.multiarray._reconstruct,
        np.core.multiarray.scalar,
    ]


def safe_load(filename: str, map_location: Optional[Any] = None) -> Any:
    """``torch.load(weights_only=True)`` with a clear error when a file is refused."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f'Refused to load {filename}: it contains objects that are not tensors or the '
            f'plain types mmengine writes (nothing from it was executed). If you trust the '
            f'file, re-save its tensors with torch.save(state_dict). Details: {err}') from None


def enable_safe_checkpoint_loading() -> None:
    """Allow mmengine's checkpoint types and route local checkpoint loads through
    :func:`safe_load`. Idempotent; called when ``mmdet_eps`` is imported."""
    torch.serialization.add_safe_globals(_mmengine_checkpoint_types())
    CheckpointLoader.register_scheme(prefixes='', loader=safe_load, force=True)
