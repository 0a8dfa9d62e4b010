"""Utilities: the compatibility module (safe checkpoint loading, CPU distributed), and the file
helpers the tools share (atomic writes, checksums, reading and naming mmengine work dirs), and an
op counter for the launch-bound regime."""
from .atomic_write import atomic_output, sha256sum, write_atomic
from .compat import UnsafeCheckpointError, enable_compat, safe_load
from .op_count import OpCounter, count_ops
from .work_dir import (
                       LogFormatError,
                       launch_dirs,
                       parse_runs,
                       read_json_lines,
                       runs_parser,
                       scalars_files,
                       strip_mode,
)

__all__ = [
    'UnsafeCheckpointError', 'enable_compat', 'safe_load', 'atomic_output', 'sha256sum',
    'write_atomic', 'OpCounter', 'count_ops', 'LogFormatError', 'launch_dirs', 'parse_runs',
    'read_json_lines', 'runs_parser', 'scalars_files', 'strip_mode'
]
