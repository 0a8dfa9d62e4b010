"""Utilities: the checkpoint-loading compatibility module."""
from .checkpoint_compat import (UnsafeCheckpointError, enable_safe_checkpoint_loading,
                                safe_load)

__all__ = ['UnsafeCheckpointError', 'enable_safe_checkpoint_loading', 'safe_load']
