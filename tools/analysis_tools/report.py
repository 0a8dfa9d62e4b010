"""COCO report of one or more mmdet work dirs, in the layout of the paper's detection tables.

Usage::

    python tools/analysis_tools/report.py WORK_DIR [WORK_DIR ...] [--baseline WORK_DIR_OR_NAME]
        [--names A B ...] [--out-dir DIR]

Reads what mmengine's Runner wrote into each work dir, one ``<YYYYmmdd_HHMMSS>`` folder per
launch (a resumed training adds a folder; they are merged in time order, a later record
replacing an earlier one of the same step):

* ``<ts>/vis_data/scalars.json``: JSON lines from ``LocalVisBackend.add_scalars`` via
  ``LoggerHook``. Train lines carry ``loss``, ``lr``, ``epoch``, ``iter`` and ``step`` (the
  global iteration); val lines carry CocoMetric's ``coco/bbox_mAP``, ``coco/bbox_mAP_50``, ...,
  ``coco/bbox_AR_s@1000`` ... and ``step`` (the epoch, or the iteration when
  ``log_metric_by_epoch=False``).
* ``<ts>/<ts>.json``: one JSON object dumped by ``LoggerHook.after_test_epoch`` (``Runner.test``,
  i.e. ``tools/test.py``) with the same metric keys.

Keys may carry mmengine's ``train/``, ``val/`` or ``test/`` prefix (``log_with_hierarchy``).
A test result is preferred over the last validation; the ``source`` column says which was used.
Writes ``report.md``, ``report.csv`` (COCO metrics in percent, with the delta of each run against
the baseline run) and ``curves.png`` (training loss and mAP curves of all runs), each atomically.
"""
import argparse
import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mmdet_eps.utils import (
    LogFormatError,
    launch_dirs,
    parse_runs,
    read_json_lines,
    runs_parser,
    strip_mode,
    write_atomic,
)

METRIC_PREFIX = 'coco/'
# (table column, CocoMetric key without its 'coco/' prefix)
BBOX_COLUMNS = (('AP', 'bbox_mAP'), ('AP50', 'bbox_mAP_50'), ('AP75', 'bbox_mAP_75'),
                ('APs', 'bbox_mAP_s'), ('APm', 'bbox_mAP_m'), ('APl', 'bbox_mAP_l'),
                ('ARs', 'bbox_AR_s@1000'), ('ARm', 'bbox_AR_m@1000'), ('ARl', 'bbox_AR_l@1000'))
MASK_COLUMNS = (('mask AP', 'segm_mAP'), ('mask AP50', 'segm_mAP_50'),
                ('mask AP75', 'segm_mAP_75'))
OUTPUT_NAMES = {'markdown': 'report.md', 'csv': 'report.csv', 'curves': 'curves.png'}


class ReportError(RuntimeError):
    """A work dir or an argument from which no report can be made."""


@dataclass
class Run:
    """The evaluation results and training curves of one work dir."""

    name: str
    work_dir: str
    metrics: Dict[str, float]  # final results, e.g. {'bbox_mAP': 0.418}, fractions
    source: str  # 'test' or e.g. 'val (epoch 12)'
    loss: List[Tuple[int, float]] = field(default_factory=list)  # (iteration, loss)
    val: List[Tuple[int, Dict[str, float]]] = field(default_factory=list)  # (step, metrics)
    val_unit: str = 'epoch'  # what a val step counts: 'epoch' or 'iter'


def _coco_metrics(record: dict) -> Dict[str, float]:
    """The numeric CocoMetric entries of a log record, keyed without prefixes."""
    metrics = {}
    for key, value in record.items():
        key = strip_mode(key)
        if (key.startswith(METRIC_PREFIX) and isinstance(value, (int, float))
                and not isinstance(value, bool)):
            metrics[key[len(METRIC_PREFIX):]] = float(value)
    return metrics


def _read_scalars(path: Path) -> List[dict]:
    """The records of a scalars.json; a malformed one is a :class:`ReportError`."""
    try:
        return read_json_lines(path)
    except LogFormatError as err:
        raise ReportError(str(err)) from err


def load_run(work_dir: Union[str, os.PathLike], name: Optional[str] = None) -> Run:
    """Read the training log and evaluation results mmengine wrote into ``work_dir``.

    Raises :class:`ReportError` naming the path when it holds no CocoMetric results.
    """
    root = Path(work_dir)
    if not root.is_dir():
        raise ReportError(f'{root}: not a directory')
    loss: Dict[int, float] = {}
    val: Dict[int, Dict[str, float]] = {}
    last_val: Optional[Tuple[int, Dict[str, float]]] = None
    test: Optional[Dict[str, float]] = None
    by_epoch = True
    for launch in launch_dirs(root):
        scalars = launch / 'vis_data' / 'scalars.json'
        if scalars.is_file():
            for record in _read_scalars(scalars):
                metrics = _coco_metrics(record)
                if metrics:
                    last_val = (int(record['step']), metrics)
                    val[last_val[0]] = metrics
                    continue
                train = {strip_mode(k): v for k, v in record.items()}
                if isinstance(train.get('loss'), (int, float)):
                    loss[int(train['step'])] = float(train['loss'])
                    by_epoch = 'epoch' in train
        test_file = launch / f'{launch.name}.json'
        if test_file.is_file():
            try:
                metrics = _coco_metrics(json.loads(test_file.read_text(encoding='utf-8')))
            except json.JSONDecodeError as err:
                raise ReportError(f'{test_file}: not JSON ({err})') from err
            test = metrics or test
    unit = 'epoch' if by_epoch else 'iter'
    if test:
        final, source = test, 'test'
    elif last_val:
        final, source = last_val[1], f'val ({unit} {last_val[0]})'
    else:
        raise ReportError(
            f'{root}: no evaluation results (no {METRIC_PREFIX}* metrics in '
            f'{root}/<timestamp>/vis_data/scalars.json or {root}/<timestamp>/<timestamp>.json)')
    return Run(name=name or root.resolve().name, work_dir=str(root), metrics=final,
               source=source, loss=sorted(loss.items()), val=sorted(val.items()), val_unit=unit)


def _percent(value: Optional[float]) -> Optional[float]:
    """A fraction as the paper's one-decimal percent; None when absent or undefined.

    COCOeval reports -1 for a size range without ground truth, so negatives count as absent.
    """
    if value is None or value < 0:
        return None
    return round(value * 100, 1)


def _delta(value: Optional[float], base: Optional[float]) -> Optional[float]:
    """Difference of two displayed percents (so the printed delta matches the printed values)."""
    if value is None or base is None:
        return None
    return round(value - base, 1) + 0.0  # + 0.0 turns -0.0 into 0.0


def _has_segm(runs: Sequence[Run]) -> bool:
    """Whether any run has mask results (Mask R-CNN), which adds mask columns and a panel."""
    return any(key.startswith('segm_') for run in runs for key in run.metrics)


def _columns(runs: Sequence[Run]) -> Tuple[Tuple[str, str], ...]:
    """Bbox columns, plus mask columns when any run has segm metrics."""
    return BBOX_COLUMNS + MASK_COLUMNS if _has_segm(runs) else BBOX_COLUMNS


def render_markdown(runs: Sequence[Run], baseline: Run) -> str:
    """The results table in markdown, cells as ``41.8 (+0.7)`` against the baseline."""
    columns = _columns(runs)
    header = ['run', 'source'] + [title for title, _ in columns]
    lines = [f'COCO results (%), deltas against `{baseline.name}`.', '',
             '| ' + ' | '.join(header) + ' |',
             '|' + '---|' * 2 + '---:|' * len(columns)]
    for run in runs:
        cells = [run.name, run.source]
        for _, key in columns:
            value = _percent(run.metrics.get(key))
            delta = _delta(value, _percent(baseline.metrics.get(key)))
            if value is None:
                cells.append('-')
            elif run is baseline or delta is None:
                cells.append(f'{value:.1f}')
            else:
                cells.append(f'{value:.1f} ({delta:+.1f})')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def render_csv(runs: Sequence[Run], baseline: Run) -> str:
    """The results table as CSV: a percent and a ``<column> delta`` per metric, '' if absent."""
    columns = _columns(runs)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(['run', 'source', 'work_dir']
                    + [name for title, _ in columns for name in (title, f'{title} delta')])
    for run in runs:
        row = [run.name, run.source, run.work_dir]
        for _, key in columns:
            value = _percent(run.metrics.get(key))
            delta = _delta(value, _percent(baseline.metrics.get(key)))
            row += ['' if value is None else f'{value:.1f}',
                    '' if delta is None else f'{delta:+.1f}']
        writer.writerow(row)
    return buffer.getvalue()


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average, the same length as ``values``."""
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    ends = np.arange(1, len(values) + 1)
    return (cumsum[ends] - cumsum[ends - counts]) / counts


def render_curves(runs: Sequence[Run]) -> bytes:
    """PNG of the training loss per iteration and the bbox (and segm) mAP per evaluation."""
    panels = ['bbox_mAP'] + (['segm_mAP'] if _has_segm(runs) else [])
    units = {run.val_unit for run in runs if run.val}
    figure = Figure(figsize=(5.5 * (1 + len(panels)), 4.2), layout='constrained')
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 1 + len(panels), squeeze=False)[0]
    colors = [f'C{i % 10}' for i in range(len(runs))]
    for run, color in zip(runs, colors):
        if run.loss:
            steps, losses = map(np.asarray, zip(*run.loss))
            axes[0].plot(steps, losses, color=color, alpha=0.3, linewidth=0.8)
            axes[0].plot(steps, _smooth(losses, max(1, len(losses) // 20)), color=color,
                         label=run.name)
        for ax, key in zip(axes[1:], panels):
            points = [(step, m[key] * 100) for step, m in run.val if key in m]
            if points:
                ax.plot(*zip(*points), color=color, marker='o', markersize=3, label=run.name)
    axes[0].set(title='training loss (faint: as logged)', xlabel='iteration', ylabel='loss')
    for ax, key in zip(axes[1:], panels):
        ax.set(title=f'{key.split("_")[0]} mAP (val)', ylabel='mAP (%)',
               xlabel=' / '.join(sorted(units)) or 'epoch')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize='small')
        else:
            ax.text(0.5, 0.5, 'no data', ha='center', va='center', transform=ax.transAxes)
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=100)
    return buffer.getvalue()


def _find_baseline(runs: Sequence[Run], baseline: Union[None, str, Run]) -> Run:
    """The run given by name or work dir (default: the first run)."""
    if baseline is None:
        return runs[0]
    if isinstance(baseline, Run):
        return baseline
    for run in runs:
        if baseline == run.name or os.path.realpath(baseline) == os.path.realpath(run.work_dir):
            return run
    raise ReportError(f'baseline {baseline!r} is neither a run name nor a work dir of '
                      f'{[run.name for run in runs]}')


def write_report(runs: Sequence[Run], out_dir: Union[str, os.PathLike],
                 baseline: Union[None, str, Run] = None) -> Dict[str, Path]:
    """Render the markdown/CSV table and the curves, then write them atomically to ``out_dir``.

    Everything is rendered before the first write, so an error leaves no new output behind.
    Returns ``{'markdown': path, 'csv': path, 'curves': path}``.
    """
    if not runs:
        raise ReportError('no runs to report')
    names = [run.name for run in runs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ReportError(f'duplicate run names {duplicates}; pass distinct --names')
    base = _find_baseline(runs, baseline)
    contents = {'markdown': render_markdown(runs, base).encode('utf-8'),
                'csv': render_csv(runs, base).encode('utf-8'),
                'curves': render_curves(runs)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, data in contents.items():
        paths[kind] = out / OUTPUT_NAMES[kind]
        write_atomic(paths[kind], data)
    return paths


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = runs_parser(__doc__.split('\n')[0], 'WORK_DIR')
    parser.add_argument('--baseline', metavar='WORK_DIR_OR_NAME',
                        help='run the deltas are taken against (default: the first)')
    parser.add_argument('--out-dir', help='where to write the report (default: first WORK_DIR)')
    return parse_runs(parser, argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Load the runs, print the markdown table and write the report; 1 on a ReportError."""
    args = parse_args(argv)
    try:
        runs = [load_run(work_dir, name) for work_dir, name in zip(args.runs, args.names)]
        paths = write_report(runs, args.out_dir or args.runs[0], args.baseline)
    except ReportError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(paths['markdown'].read_text(encoding='utf-8'))
    print('\n'.join(f'wrote {path}' for path in paths.values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
