"""Reading what mmengine's Runner writes into a work dir, for the report and plotting tools.

Each launch of a run (a resumed training adds one) writes a ``<YYYYmmdd_HHMMSS>`` folder with
``vis_data/scalars.json``: JSON lines from ``LocalVisBackend.add_scalars``, one per logged train
iteration or evaluation, keyed as logged (with mmengine's ``train/``/``val/``/``test/`` prefix
under ``log_with_hierarchy``) plus ``step``.
"""
import argparse
import json
import os
import re
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Union

TIMESTAMP_RE = re.compile(r'\d{8}_\d{6}')
MODE_PREFIXES = ('train/', 'val/', 'test/')
SCALARS = Path('vis_data') / 'scalars.json'


class LogFormatError(ValueError):
    """A log file that is not in mmengine's format."""


def launch_dirs(work_dir: Union[str, os.PathLike]) -> List[Path]:
    """The launch folders of ``work_dir`` (``<YYYYmmdd_HHMMSS>``), oldest first."""
    return sorted(p for p in Path(work_dir).iterdir()
                  if p.is_dir() and TIMESTAMP_RE.fullmatch(p.name))


def scalars_files(path: Union[str, os.PathLike]) -> List[Path]:
    """The ``scalars.json`` files of a run, oldest first: ``path`` itself when it is a file, the
    one of a launch folder, or those of every launch of a work dir (empty when it has none).

    Raises ``FileNotFoundError`` when ``path`` does not exist.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f'{path}: no such file or directory')
    if (path / SCALARS).is_file():
        return [path / SCALARS]
    return [launch / SCALARS for launch in launch_dirs(path) if (launch / SCALARS).is_file()]


def read_json_lines(path: Union[str, os.PathLike]) -> List[dict]:
    """Parse a ``scalars.json``; a truncated last line (a run killed mid-write) is skipped with
    a warning, any other bad line raises :class:`LogFormatError` naming it."""
    path = Path(path)
    lines = [line for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise LogFormatError(f'{path}:{number}: not a JSON line ({err})') from err
            warnings.warn(f'{path}:{number}: skipping truncated last line')
    return records


def strip_mode(key: str) -> str:
    """``key`` without the ``train/``, ``val/`` or ``test/`` prefix of ``log_with_hierarchy``."""
    for prefix in MODE_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def runs_parser(description: str, metavar: str) -> argparse.ArgumentParser:
    """A command line taking one or more run folders (``args.runs``) and ``--names``, one per
    run: what the tools that compare runs share; see :func:`parse_runs`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('runs', nargs='+', metavar=metavar)
    parser.add_argument('--names', nargs='+',
                        help=f'a name per {metavar} (default: the folder names)')
    return parser


def parse_runs(parser: argparse.ArgumentParser,
               argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse ``argv``; ``args.names`` is one name (or None) per run."""
    args = parser.parse_args(argv)
    if args.names and len(args.names) != len(args.runs):
        parser.error(f'--names got {len(args.names)} names for {len(args.runs)} runs')
    args.names = args.names or [None] * len(args.runs)
    return args
