"""Plots of WeightNormStatsHook's statistics from one or more runs, in the style of the paper's
Fig. 2 (effective learning rate per epoch) and Figs. 6/7 (max 1/std per iteration, log scale).

Usage::

    python tools/analysis_tools/plot_weight_stats.py RUN_DIR [RUN_DIR ...] [--names A B ...]
        [--out DIR]

A RUN_DIR is a work dir (its ``<YYYYmmdd_HHMMSS>/vis_data/scalars.json`` files, one per launch,
are merged in time order, a later record replacing an earlier one of the same step), one launch
folder, or a ``scalars.json`` itself. Train records carry ``step`` (the global iteration), ``iter``,
``epoch`` (epoch-based loops only) and the hook's ``wn_stats/eff_lr``, ``wn_stats/max_inv_std``,
``wn_stats/min_std``, ``wn_stats/n_small`` and ``wn_stats/eff_lr/<layer>`` keys.

Writes, atomically, into ``--out`` (default: the first RUN_DIR):

* ``eff_lr.png``: the mean effective learning rate (lr / std) per epoch (per logged iteration
  for iteration-based runs), log scale; a second panel per selected layer when logged;
* ``max_inv_std.png``: the max 1/std over all filters per iteration, log scale; a cross marks
  a run whose last values are no longer finite.

Exits with status 1 and writes nothing when a run has no statistics.
"""
import argparse
import io
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg canvas, no pyplot/display
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mmdet_eps.utils import (
    LogFormatError,
    parse_runs,
    read_json_lines,
    runs_parser,
    scalars_files,
    strip_mode,
    write_atomic,
)

PREFIX = 'wn_stats/'
EFF_LR, MAX_INV_STD = f'{PREFIX}eff_lr', f'{PREFIX}max_inv_std'
LAYER_PREFIX = f'{EFF_LR}/'
OUTPUT_NAMES = ('eff_lr.png', 'max_inv_std.png')


class PlotError(RuntimeError):
    """A run or an argument from which no plot can be made."""


@dataclass
class RunStats:
    """The hook's statistics of one run, by training step."""

    name: str
    path: str
    records: Dict[int, dict] = field(default_factory=dict)  # step -> wn_stats record

    @property
    def steps(self) -> List[int]:
        return sorted(self.records)

    @property
    def by_epoch(self) -> bool:
        return all('epoch' in r for r in self.records.values())

    def series(self, key: str) -> List[Tuple[int, float]]:
        """``(step, value)`` of ``key`` over the run (values may be inf/nan)."""
        return [(s, float(self.records[s][key])) for s in self.steps if key in self.records[s]]

    def per_epoch(self, key: str) -> List[Tuple[int, float]]:
        """``(epoch, mean of the finite values logged in that epoch)``."""
        sums: Dict[int, List[float]] = {}
        for step in self.steps:
            record = self.records[step]
            if key in record and math.isfinite(record[key]):
                sums.setdefault(int(record['epoch']), []).append(float(record[key]))
        return [(epoch, math.fsum(v) / len(v)) for epoch, v in sorted(sums.items())]

    def layers(self) -> List[str]:
        return sorted({k[len(LAYER_PREFIX):] for r in self.records.values() for k in r
                       if k.startswith(LAYER_PREFIX)})


def load_stats(run: Union[str, os.PathLike], name: Optional[str] = None) -> RunStats:
    """Read the hook's statistics of one run; :class:`PlotError` when there are none."""
    path = Path(run)
    try:
        files = scalars_files(path)
    except FileNotFoundError as err:
        raise PlotError(str(err)) from err
    if not files:
        raise PlotError(f'{path}: no <timestamp>/vis_data/scalars.json (not an mmengine work '
                        'dir?)')
    if name is None:
        name = (path.parents[2] if path.is_file() else path).resolve().name
    stats = RunStats(name=name, path=str(path))
    for file in files:
        try:
            records = read_json_lines(file)
        except LogFormatError as err:
            raise PlotError(str(err)) from err
        for record in records:
            record = {strip_mode(k): v for k, v in record.items()}
            values = {k: v for k, v in record.items()
                      if k.startswith(PREFIX) and isinstance(v, (int, float))}
            if values and 'step' in record:
                if 'epoch' in record:
                    values['epoch'] = record['epoch']
                stats.records[int(record['step'])] = values
    if not any(MAX_INV_STD in r or EFF_LR in r for r in stats.records.values()):
        raise PlotError(
            f'{path}: no {PREFIX}* statistics in {", ".join(map(str, files))}; train with '
            "custom_hooks=[dict(type='WeightNormStatsHook', interval=50)]")
    return stats


def _finite_positive(points: Sequence[Tuple[float, float]]) -> List[Tuple[float, float]]:
    return [(x, y) for x, y in points if math.isfinite(y) and y > 0]


def _finish(figure: Figure, axes) -> bytes:
    for ax in axes:
        ax.set_yscale('log')
        ax.grid(alpha=0.3, which='both')
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize='small')
        else:
            ax.text(0.5, 0.5, 'no data', ha='center', va='center', transform=ax.transAxes)
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=100)
    return buffer.getvalue()


def render_eff_lr(runs: Sequence[RunStats]) -> bytes:
    """Fig. 2 style: mean effective learning rate per epoch; per selected layer beside it."""
    layers = sorted({layer for run in runs for layer in run.layers()})
    figure = Figure(figsize=(6 * (1 + bool(layers)), 4.2), layout='constrained')
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 1 + bool(layers), squeeze=False)[0]
    units = set()
    for i, run in enumerate(runs):
        color = f'C{i % 10}'
        unit = 'epoch' if run.by_epoch else 'iteration'
        units.add(unit)
        get = run.per_epoch if run.by_epoch else run.series
        points = _finite_positive(get(EFF_LR))
        if points:
            axes[0].plot(*zip(*points), color=color, marker='o' if run.by_epoch else None,
                         markersize=3, label=run.name)
        for j, layer in enumerate(layers):
            points = _finite_positive(get(LAYER_PREFIX + layer))
            if points:
                axes[1].plot(*zip(*points), color=color, linestyle=('-', '--', ':', '-.')[j % 4],
                             label=f'{run.name}: {layer}')
    xlabel = ' / '.join(sorted(units))
    axes[0].set(title='effective learning rate lr / std (mean over layers)', xlabel=xlabel,
                ylabel='effective lr')
    if layers:
        axes[1].set(title='effective learning rate per layer', xlabel=xlabel,
                    ylabel='effective lr')
    if units == {'epoch'}:
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(figure, axes)


def render_max_inv_std(runs: Sequence[RunStats]) -> bytes:
    """Figs. 6/7 style: max 1/std over all filters per iteration."""
    figure = Figure(figsize=(6.5, 4.2), layout='constrained')
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for i, run in enumerate(runs):
        series = run.series(MAX_INV_STD)
        points = _finite_positive(series)
        if points:
            ax.plot(*zip(*points), color=f'C{i % 10}', label=run.name)
            if series and not math.isfinite(series[-1][1]):
                ax.plot(*points[-1], marker='x', markersize=9, color=f'C{i % 10}')
    ax.set(title='max 1/std over all filters (x: no longer finite)', xlabel='iteration',
           ylabel='max 1/std')
    return _finish(figure, [ax])


def write_plots(runs: Sequence[RunStats], out_dir: Union[str, os.PathLike]) -> List[Path]:
    """Render both PNGs, then write them atomically; nothing is written on an error."""
    if not runs:
        raise PlotError('no runs to plot')
    names = [run.name for run in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PlotError(f'duplicate run names {duplicates}; pass distinct --names')
    contents = dict(zip(OUTPUT_NAMES, (render_eff_lr(runs), render_max_inv_std(runs))))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for file_name, data in contents.items():
        paths.append(out / file_name)
        write_atomic(paths[-1], data)
    return paths


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = runs_parser(__doc__.split('\n')[0], 'RUN_DIR')
    parser.add_argument('--out', help='output folder (default: the first RUN_DIR)')
    return parse_runs(parser, argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Load every run first, then plot; 1 with a message on a :class:`PlotError`."""
    args = parse_args(argv)
    try:
        runs = [load_stats(run, name) for run, name in zip(args.runs, args.names)]
        out = args.out
        if out is None:
            first = Path(args.runs[0])
            out = first.parent if first.is_file() else first
        paths = write_plots(runs, out)
    except PlotError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print('\n'.join(f'wrote {path}' for path in paths))
    return 0


if __name__ == '__main__':
    sys.exit(main())
