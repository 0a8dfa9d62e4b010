"""The paper's stability tables (Tables II/III) in miniature: plain weight decay vs the ε-shifted
L2 term on a small weight-normalized network, on CPU in minutes.

Usage::

    python tools/analysis_tools/stability_sweep.py [--steps N] [--out DIR] [--quick]
        [--families ws wn] [--optimizers sgd adam] [--lambdas 0.1 0.01 ...] [--eps 1e-2 1e-3]

Every cell trains the same small network (WS or WN convs + BN + ReLU, global pooling, a linear
classifier; the convs in the paper's pure form, layer eps = 0 and population std) from the same
seeded initialisation on the same fixed synthetic task (random inputs with random labels, trained
full-batch), with SGD (momentum 0.9) or Adam, weight decay λ, and either plain decay or the
ε-shifted term. Optimizers are built by ``EpsShiftedOptimWrapperConstructor`` through mmengine's
OPTIM_WRAPPER_CONSTRUCTORS registry, as a config builds them: "plain" is the constructor with
eps = 0, which is exactly plain L2 decay. A cell *fails* at the first step with a non-finite loss
or gradient, or with a filter std (``||W||`` for WN) below ``FLOOR`` (1e-30); it then stops.

Writes, atomically, to ``--out`` (default ``work_dirs/stability_sweep``):

* ``stability.md``: a Table II-style summary (rows: family/optimizer/regularizer, columns: λ)
  and the detailed results per cell (failure step and reason, final loss, min std, max 1/std);
* ``stability.png``: the max 1/std of every cell per step, log scale, as in the paper's
  Figs. 6/7; a cross marks where a run failed;
* ``stability.json``: all numbers, with the settings.

Deterministic: fixed seeds, one thread by default (``--threads``), no data shuffling.
"""
import argparse
import collections
import io
import itertools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from PIL import Image
from torch import nn

import mmdet_eps  # noqa: F401  (registers the constructor and the layers)
from mmdet_eps.engine.hooks import layer_stats
from mmdet_eps.models.layers import NORM_FAMILIES, CWNConv, WNConv, WSConv, get_norm_family
from mmdet_eps.utils import write_atomic

#: The families of the default sweep (the paper's Tables II/III); ``--families`` takes any.
FAMILIES = ('ws', 'wn')
#: Each family's conv in the paper's form: layer eps 0, population std.
_PAPER_CONVS = {'ws': partial(WSConv, eps=0., unbiased=False), 'wn': partial(WNConv, eps=0.),
                'cwn': partial(CWNConv, eps=0.)}
OPTIMIZERS = {
    'sgd': dict(type='SGD', lr=0.1, momentum=0.9),
    'adam': dict(type='Adam', lr=1e-3),
}
LAMBDAS = (1e-1, 1e-2, 1e-3, 1e-4)
EPSILONS = (1e-2, 1e-3)
STEPS = 2000
#: ``--quick``: the cells that show the failure and its cure, used by the tests.
QUICK = dict(families=('ws', ), optimizers=('sgd', ), lambdas=(1e-1, 1e-3), epsilons=(1e-3, ),
             steps=1500)
FLOOR = 1e-30
RECORD_EVERY = 10
#: ``final_loss`` averages the last this many steps: at an effective lr of lr/ε the loss of a
#: single step is noisy.
LOSS_WINDOW = 100
NUM_SAMPLES, NUM_CLASSES, SIZE = 32, 4, 8
DATA_SEED, INIT_SEED = 0, 1


class SweepError(RuntimeError):
    """An argument from which no sweep can be run."""


@dataclass
class Cell:
    """One training run of the sweep and what it found."""

    family: str
    optimizer: str
    lam: float
    eps: float  # 0: plain decay
    steps_run: int = 0
    failed_at: Optional[int] = None
    reason: str = ''
    final_loss: float = float('nan')  # mean over the last LOSS_WINDOW steps (nan on failure)
    last_loss: float = float('nan')
    min_std: float = float('inf')  # over the run and all filters
    max_inv_std: float = 0.  # over the run and all filters
    final_min_std: float = float('nan')
    curve: List[Tuple[int, float]] = field(default_factory=list)  # (step, max 1/std)
    seconds: float = 0.

    @property
    def regularizer(self) -> str:
        return 'plain' if self.eps == 0 else f'ε-shifted, ε={self.eps:g}'

    @property
    def failed(self) -> bool:
        return self.failed_at is not None


def make_data() -> Tuple[torch.Tensor, torch.Tensor]:
    """The fixed task: ``NUM_SAMPLES`` random 3x8x8 inputs with random labels."""
    gen = torch.Generator().manual_seed(DATA_SEED)
    inputs = torch.randn(NUM_SAMPLES, 3, SIZE, SIZE, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (NUM_SAMPLES, ), generator=gen)
    return inputs, labels


def make_net(family: str) -> nn.Module:
    """Two normalized 3x3 convs (paper form: layer eps 0, population std) with BN, then fc."""
    if family not in NORM_FAMILIES:
        raise SweepError(f'family must be one of {NORM_FAMILIES}, got {family!r}')
    conv = _PAPER_CONVS[family]
    torch.manual_seed(INIT_SEED)
    return nn.Sequential(
        conv(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        conv(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, NUM_CLASSES))


def build_optim_wrapper(model: nn.Module, optimizer: str, lam: float, eps: float):
    """The product's constructor, built through mmengine's registry in mmdet's scope."""
    from mmengine.logging import MMLogger
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, DefaultScope
    optimizer_cfg = dict(OPTIMIZERS[optimizer], weight_decay=lam)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel('WARNING')  # the constructors' per-parameter INFO lines, 48 times over
    try:
        with DefaultScope.overwrite_default_scope('mmdet'):
            constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
                type='EpsShiftedOptimWrapperConstructor',
                optim_wrapper_cfg=dict(type='OptimWrapper', optimizer=optimizer_cfg),
                paramwise_cfg=dict(eps_shift=dict(eps=eps, mode='coupled'))))
            return constructor(model)
    finally:
        logger.setLevel(level)


def run_cell(cell: Cell, steps: int, data: Tuple[torch.Tensor, torch.Tensor],
             floor: float = FLOOR) -> Cell:
    """Train ``cell`` for up to ``steps`` full-batch steps, recording 1/std every
    ``RECORD_EVERY`` steps; stop at the first failure."""
    start = time.perf_counter()
    inputs, labels = data
    model = make_net(cell.family)
    convs = [(m.weight, get_norm_family(m)) for m in model.modules() if get_norm_family(m)]
    optim_wrapper = build_optim_wrapper(model, cell.optimizer, cell.lam, cell.eps)
    loss_fn = nn.CrossEntropyLoss()

    def record(step: int) -> Tuple[float, float]:
        rows = torch.stack([layer_stats(w, fam, floor) for w, fam in convs])
        min_s, max_inv = rows[:, 0].min().item(), rows[:, 1].max().item()
        cell.curve.append((step, max_inv))
        cell.min_std = min(cell.min_std, min_s)
        cell.max_inv_std = max(cell.max_inv_std, max_inv)
        cell.final_min_std = min_s
        return min_s, max_inv

    record(0)
    losses = collections.deque(maxlen=LOSS_WINDOW)
    for step in range(1, steps + 1):
        cell.steps_run = step
        loss = loss_fn(model(inputs), labels)
        cell.last_loss = loss.item()
        losses.append(cell.last_loss)
        cell.final_loss = math.fsum(losses) / len(losses)
        if not math.isfinite(cell.last_loss):
            cell.failed_at, cell.reason = step, 'non-finite loss'
            break
        optim_wrapper.backward(loss)
        if not all(torch.isfinite(w.grad).all() for w, _ in convs):
            cell.failed_at, cell.reason = step, 'non-finite gradient'
            break
        optim_wrapper.step()
        optim_wrapper.zero_grad()
        if step % RECORD_EVERY == 0 or step == steps:
            min_s, _ = record(step)
            if not min_s >= floor:
                cell.failed_at, cell.reason = step, f'std < {floor:g}'
                break
    if cell.failed and cell.curve[-1][0] != cell.steps_run:
        record(cell.steps_run)
    cell.seconds = time.perf_counter() - start
    return cell


def sweep_cells(families: Sequence[str], optimizers: Sequence[str], lambdas: Sequence[float],
                epsilons: Sequence[float]) -> List[Cell]:
    """The grid, plain decay (eps = 0) first in each group."""
    return [Cell(f, o, lam, eps) for f, o, lam, eps in itertools.product(
        families, optimizers, lambdas, (0., ) + tuple(epsilons))]


def run_sweep(cells: List[Cell], steps: int, floor: float = FLOOR, verbose: bool = True,
              threads: int = 1) -> List[Cell]:
    """Run every cell on the same fixed data, deterministically, with ``threads`` torch
    threads (torch's settings are restored afterwards)."""
    data = make_data()
    deterministic = torch.are_deterministic_algorithms_enabled()
    mkldnn, num_threads = torch.backends.mkldnn.enabled, torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    # ops this small gain nothing from a second thread, which only spin-waits on a busy CPU
    torch.set_num_threads(threads)
    # oneDNN's per-call overhead dominates convs this small: the native kernels are ~1.5x faster
    torch.backends.mkldnn.enabled = False
    try:
        for i, cell in enumerate(cells, 1):
            run_cell(cell, steps, data, floor)
            if verbose:
                status = f'FAILED at {cell.failed_at} ({cell.reason})' if cell.failed else 'ok'
                print(f'[{i}/{len(cells)}] {cell.family} {cell.optimizer} λ={cell.lam:g} '
                      f'{cell.regularizer}: {status}, loss {cell.final_loss:.4g}, '
                      f'min std {cell.min_std:.3g}, {cell.seconds:.1f}s', flush=True)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.mkldnn.enabled = mkldnn
        torch.set_num_threads(num_threads)
    return cells


# ---------------------------------------------------------------------- rendering
def _num(value: float) -> str:
    return f'{value:.3g}' if math.isfinite(value) else str(value)


def render_markdown(cells: Sequence[Cell], steps: int, command: str) -> str:
    """Table II-style summary plus the per-cell details."""
    lambdas = sorted({c.lam for c in cells}, reverse=True)
    groups: Dict[Tuple[str, str, float], Dict[float, Cell]] = {}
    for c in cells:
        groups.setdefault((c.family, c.optimizer, c.eps), {})[c.lam] = c
    lines = [f'Command: `{command}`', '',
             f'{steps} full-batch steps per cell. ✗: failed at that step (reason); ✓: trained '
             f'to the end, with the final loss (mean of the last {LOSS_WINDOW} steps) and the '
             'smallest filter std seen (‖W‖ for WN).',
             '',
             '| family | optimizer | regularizer | ' + ' | '.join(f'λ={lam:g}' for lam in lambdas)
             + ' |', '|---|---|---|' + '---|' * len(lambdas)]
    for (family, optimizer, eps), by_lam in groups.items():
        row = [family.upper(), optimizer, next(iter(by_lam.values())).regularizer]
        for lam in lambdas:
            c = by_lam.get(lam)
            if c is None:
                row.append('')
            elif c.failed:
                row.append(f'✗ {c.failed_at} ({c.reason})')
            else:
                row.append(f'✓ {c.final_loss:.3g}, std ≥ {c.min_std:.2g}')
        lines.append('| ' + ' | '.join(row) + ' |')
    lines += ['', '| family | optimizer | λ | regularizer | result | final loss | min std | '
              'final min std | max 1/std | seconds |',
              '|---|---|---|---|---|---:|---:|---:|---:|---:|']
    for c in cells:
        result = f'failed at {c.failed_at}: {c.reason}' if c.failed else 'ok'
        lines.append(f'| {c.family.upper()} | {c.optimizer} | {c.lam:g} | {c.regularizer} | '
                     f'{result} | {_num(c.final_loss)} | {_num(c.min_std)} | '
                     f'{_num(c.final_min_std)} | {_num(c.max_inv_std)} | {c.seconds:.1f} |')
    return '\n'.join(lines) + '\n'


def render_png(cells: Sequence[Cell]) -> bytes:
    """Max 1/std per step, one panel per (family, optimizer, λ), one line per regularizer."""
    panels: Dict[Tuple[str, str, float], List[Cell]] = {}
    for c in cells:
        panels.setdefault((c.family, c.optimizer, c.lam), []).append(c)
    order = list(NORM_FAMILIES) + list(OPTIMIZERS)
    rows = sorted({(c.family, c.optimizer) for c in cells},
                  key=lambda k: (order.index(k[0]), order.index(k[1])))
    lambdas = sorted({c.lam for c in cells}, reverse=True)
    figure = Figure(figsize=(3.0 * len(lambdas) + 0.5, 2.4 * len(rows) + 0.6),
                    layout='constrained')
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), len(lambdas), squeeze=False, sharex=True)
    regs = sorted({c.eps for c in cells}, key=lambda e: (e != 0, -e))
    colors = {eps: f'C{i}' for i, eps in enumerate(regs)}
    for (r, (family, optimizer)), (j, lam) in itertools.product(enumerate(rows),
                                                                 enumerate(lambdas)):
        ax = axes[r][j]
        for c in panels.get((family, optimizer, lam), []):
            points = [(s, v) for s, v in c.curve if math.isfinite(v) and v > 0]
            if points:
                ax.plot(*zip(*points), color=colors[c.eps], label=c.regularizer, linewidth=1.2)
                if c.failed:
                    ax.plot(*points[-1], marker='x', color=colors[c.eps], markersize=8)
        ax.set_yscale('log')
        low, high = ax.get_ylim()
        if high > 10 * low:  # label decades only; narrower panels keep their minor labels
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
        ax.set_title(f'{family.upper()} {optimizer}, λ={lam:g}', fontsize=9)
        if r == len(rows) - 1:
            ax.set_xlabel('step', fontsize=8)
        if j == 0:
            ax.set_ylabel('max 1/std', fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc='outside lower center', ncol=len(handles),
                      fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=80)
    # a 64-colour palette keeps the figure small enough to live in docs/ (~4x smaller)
    buffer.seek(0)
    image = Image.open(buffer).convert('RGB').quantize(colors=64)
    out = io.BytesIO()
    image.save(out, format='PNG', optimize=True)
    return out.getvalue()


def write_results(cells: Sequence[Cell], steps: int, out_dir, command: str) -> Dict[str, Path]:
    """Render everything, then write ``stability.{md,png,json}`` atomically into ``out_dir``."""
    contents = {
        'stability.md': render_markdown(cells, steps, command).encode('utf-8'),
        'stability.png': render_png(cells),
        'stability.json': json.dumps(
            dict(command=command, steps=steps, floor=FLOOR,
                 optimizers=OPTIMIZERS, cells=[asdict(c) for c in cells]),
            indent=1).encode('utf-8'),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in contents.items():
        paths[name] = out / name
        write_atomic(paths[name], data)
    return paths


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line arguments; ``--quick`` replaces the grid and the default step count."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, help=f'steps per cell (default {STEPS}, '
                        f'{QUICK["steps"]} with --quick)')
    parser.add_argument('--out', default='work_dirs/stability_sweep', help='output folder')
    parser.add_argument('--quick', action='store_true',
                        help='a small subset (WS, SGD, λ 0.1 and 1e-3, ε 1e-3), ~30 s')
    parser.add_argument('--families', nargs='+', choices=NORM_FAMILIES)
    parser.add_argument('--optimizers', nargs='+', choices=sorted(OPTIMIZERS))
    parser.add_argument('--lambdas', nargs='+', type=float)
    parser.add_argument('--eps', nargs='+', type=float, help='ε values of the shifted term')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')
    args = parser.parse_args(argv)
    base = QUICK if args.quick else dict(families=FAMILIES, optimizers=tuple(OPTIMIZERS),
                                         lambdas=LAMBDAS, epsilons=EPSILONS, steps=STEPS)
    for name, key in (('families', 'families'), ('optimizers', 'optimizers'),
                      ('lambdas', 'lambdas'), ('eps', 'epsilons'), ('steps', 'steps')):
        if getattr(args, name) is None:
            setattr(args, name, base[key])
    if args.steps < 1:
        parser.error(f'--steps must be >= 1, got {args.steps}')
    if any(not lam > 0 for lam in args.lambdas):
        parser.error(f'--lambdas must be > 0, got {args.lambdas}')
    if any(not eps > 0 for eps in args.eps):
        parser.error(f'--eps must be > 0 (plain decay is always included), got {args.eps}')
    if args.threads < 1:
        parser.error(f'--threads must be >= 1, got {args.threads}')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the sweep, print the table and write the outputs."""
    args = parse_args(argv)
    command = ' '.join(['tools/analysis_tools/stability_sweep.py'] + list(
        sys.argv[1:] if argv is None else argv))
    start = time.perf_counter()
    cells = run_sweep(sweep_cells(args.families, args.optimizers, args.lambdas, args.eps),
                      args.steps, threads=args.threads)
    elapsed = time.perf_counter() - start
    paths = write_results(cells, args.steps, args.out, command)
    print(paths['stability.md'].read_text(encoding='utf-8'))
    print(f'{len(cells)} cells in {elapsed:.0f}s; wrote ' + ', '.join(map(str, paths.values())))
    return 0


if __name__ == '__main__':
    sys.exit(main())
