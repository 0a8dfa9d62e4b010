"""Utilities: the compatibility module (safe checkpoint loading, CPU distributed), and the file
helpers the tools share (atomic writes, reading mmengine work dirs)."""
from .atomic_write import atomic_output, write_atomic
from .compat import UnsafeCheckpointError, enable_compat, safe_load
from .work_dir import LogFormatError, launch_dirs, read_json_lines, scalars_files, strip_mode

__all__ = [
    'UnsafeCheckpointError', 'enable_compat', 'safe_load', 'atomic_output', 'write_atomic',
    'LogFormatError', 'launch_dirs', 'read_json_lines', 'scalars_files', 'strip_mode'
]
