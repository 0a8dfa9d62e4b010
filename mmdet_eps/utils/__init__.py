"""Utilities: the compatibility module (safe checkpoint loading, CPU distributed)."""
from .compat import UnsafeCheckpointError, enable_compat, safe_load

__all__ = ['UnsafeCheckpointError', 'enable_compat', 'safe_load']
