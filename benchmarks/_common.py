"""Shared benchmark machinery: environment, interleaved timing, ratios, tables and JSON.

Every figure a benchmark reports is a ratio against a baseline timed in the same process. The
candidates are run interleaved (A, B, C, A, B, C, ...; the order rotates every round so that no
candidate always follows the same one), warm-up rounds are discarded, and the ratio is the
median over rounds of ``t_candidate / t_baseline`` from the same round (a paired ratio, robust
to load that changes between rounds). The ratio of the median times is recorded too. Each round
calls the candidates at another depth of the interpreter's frame stack (:func:`at_depth`).

mmdet, mmengine and the package are imported by :func:`load_package`, not at import time.
"""
import argparse
import functools
import importlib.util
import json
import os
import os.path as osp
import platform
import statistics
import sys
import time
import types
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
RESULTS_DIR = osp.join(REPO, 'benchmarks', 'results')


def parse_args(description: str, extra: Optional[Callable] = None,
               argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Options shared by every benchmark; ``extra(parser)`` adds the benchmark's own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: tiny sizes, 2 timed rounds; ratios are not meaningful')
    parser.add_argument('--rounds', type=int, default=None,
                        help='timed rounds (default: per benchmark; 2 with --quick)')
    parser.add_argument('--warmup', type=int, default=None, help='untimed warm-up rounds')
    parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads (CPU)')
    parser.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    parser.add_argument('--out', default=None,
                        help='JSON file to write (default: benchmarks/results/<name>.json)')
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def setup_env(args: argparse.Namespace) -> Dict:
    """Flush denormals, fix the thread count, and describe the machine for the record."""
    torch.set_flush_denormal(True)
    torch.set_num_threads(args.threads)
    if args.device.startswith('cuda'):
        torch.backends.cudnn.benchmark = True
    return environment(args)


def load_package() -> None:
    """Import this checkout's ``mmdet_eps`` (ahead of any installed copy), register it with mmdet
    in the default scope, and quiet mmengine's logger and numpy's subnormal warning (which
    flush-denormal triggers)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    warnings.filterwarnings('ignore', message='The value of the smallest subnormal')
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger

    import mmdet_eps  # noqa: F401  registers the plugin
    register_all_modules(init_default_scope=True)
    MMLogger.get_instance('mmdet_eps_bench', log_level='WARNING')


def start(description: str, extra: Optional[Callable] = None,
          argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Dict]:
    """Every benchmark's first steps: options, the package, the environment.

    Returns ``(args, env)``.
    """
    args = parse_args(description, extra, argv)
    load_package()
    return args, setup_env(args)


def load_tool(name: str) -> types.ModuleType:
    """A script of ``tools/`` as a module, e.g. ``'model_converters/bake_ws'``."""
    spec = importlib.util.spec_from_file_location(osp.basename(name),
                                                  osp.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_backbone(kind: str, depth: int = 50, **kwargs) -> nn.Module:
    """mmdet's ``ResNet`` or ``WSResNet`` (``kind``) in train mode, BN training, every stage
    trainable unless ``kwargs`` say otherwise."""
    from mmdet.registry import MODELS
    cfg = dict(type=kind, depth=depth, norm_eval=False, frozen_stages=-1)
    cfg.update(kwargs)
    model = MODELS.build(cfg)
    model.train()  # mmdet's ResNet.train returns None
    return model


def build_optim_wrapper(model: nn.Module, optimizer: Dict, eps_shift: Optional[Dict] = None):
    """What a config's ``optim_wrapper`` builds: mmengine's default constructor, or with
    ``eps_shift`` (its ``paramwise_cfg`` entry) ``EpsShiftedOptimWrapperConstructor``."""
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
    cfg = dict(type='DefaultOptimWrapperConstructor',
               optim_wrapper_cfg=dict(type='OptimWrapper', optimizer=optimizer))
    if eps_shift is not None:
        cfg.update(type='EpsShiftedOptimWrapperConstructor',
                   paramwise_cfg=dict(eps_shift=eps_shift))
    return OPTIM_WRAPPER_CONSTRUCTORS.build(cfg)(model)


def backbone_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A scalar from every stage output, so that the whole backbone runs backward."""
    return sum(o.float().mean() for o in model(x))


def load_average() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment(args: Optional[argparse.Namespace] = None) -> Dict:
    env = dict(
        python=platform.python_version(),
        torch=torch.__version__,
        machine=platform.machine(),
        processor=_cpu_model(),
        cpu_count=os.cpu_count(),
        threads=torch.get_num_threads(),
        flush_denormal=True,
        load_average=load_average(),
        time=time.strftime('%Y-%m-%d %H:%M:%S'),
    )
    if args is not None:
        env.update(device=args.device, quick=bool(args.quick))
        if args.device.startswith('cuda') and torch.cuda.is_available():
            env['gpu'] = torch.cuda.get_device_name()
    for mod in ('mmcv', 'mmdet', 'mmengine'):
        module = sys.modules.get(mod)
        version = getattr(module, '__version__', None)
        if isinstance(version, str):
            env[mod] = version
    return env


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def synchronizer(device: str) -> Callable[[], None]:
    if str(device).startswith('cuda'):
        return torch.cuda.synchronize
    return lambda: None


#: CPython (3.11+) keeps frames in 16 KiB chunks of its frame stack (2048 pointer-sized words)
#: and unmaps a chunk as soon as the frame that opened it returns. A function called at a depth
#: where a frame it calls over and over straddles a chunk boundary maps and unmaps memory on each
#: of those calls: on the 2-vCPU VM, B9's thin step lost 20-40 % at some depths (ws_eps at one,
#: plain at another) and nothing at the rest, so one script's fixed depth decided its ratio.
STACK_CHUNK_WORDS = 2048
#: Offsets the rounds step through, in words: 37 * 8 words per round visits all 256 offsets of a
#: chunk in 256 rounds (37 is prime to 256).
DEPTH_STEP, DEPTH_STRIDE = 8, 37


@functools.lru_cache(maxsize=None)
def at_depth(words: int) -> Callable[[Callable[[], object]], object]:
    """``call(fn)``: ``fn()`` from a frame ``words`` locals larger than a bare call's, so that
    everything ``fn`` runs sits ``words`` words deeper on the interpreter's frame stack."""
    body = ' = '.join(f'_{i}' for i in range(words)) + ' = None\n    ' if words else ''
    namespace: Dict[str, object] = {}
    exec(f'def call(fn):\n    {body}return fn()\n', namespace)  # noqa: S102  locals only
    return namespace['call']


def round_depth(r: int) -> int:
    """The frame-stack offset (words) of round ``r``: every round another one, all rounds of a
    benchmark spread over a chunk."""
    return r * DEPTH_STRIDE * DEPTH_STEP % STACK_CHUNK_WORDS


def interleaved(fns: Dict[str, Callable[[], object]], baseline: str, rounds: int,
                warmup: int = 1, device: str = 'cpu', inner: int = 1,
                label: str = '',
                prepare: Optional[Dict[str, Callable[[], object]]] = None) -> Dict[str, Dict]:
    """Time each of ``fns`` once per round, interleaved, and compare with ``baseline``.

    ``inner`` calls make one timed sample (for very short functions); ``prepare[name]``, when
    given, runs untimed before each call of ``fns[name]``. All candidates of a round run at that
    round's depth of the frame stack (:func:`round_depth`), so that no candidate's figure rests
    on where one script happens to call it. Returns, per name,
    ``dict(times=[...], median_s, min_s, ratio, ratio_of_medians, ratio_q1, ratio_q3)``.
    """
    names = list(fns)
    if baseline not in fns:
        raise KeyError(baseline)
    sync = synchronizer(device)
    times: Dict[str, List[float]] = {n: [] for n in names}
    cpu: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        shift, call = r % len(names), at_depth(round_depth(r))
        for name in names[shift:] + names[:shift]:
            fn, before = fns[name], (prepare or {}).get(name)
            elapsed = cpu_elapsed = 0.
            for _ in range(inner):
                if before is not None:
                    before()
                sync()
                start, cpu_start = time.perf_counter(), time.process_time()
                call(fn)
                sync()
                elapsed += time.perf_counter() - start
                cpu_elapsed += time.process_time() - cpu_start
            if r >= warmup:
                times[name].append(elapsed / inner)
                cpu[name].append(cpu_elapsed / inner)
        if label:
            done = r + 1 - warmup
            what = 'warm-up' if done <= 0 else f'round {done}/{rounds}'
            print(f'  [{label}] {what}: ' +
                  ', '.join(f'{n} {times[n][-1] * 1e3:.1f} ms' if times[n] and r >= warmup
                            else n for n in names),
                  flush=True)
    base = times[baseline]
    out = {}
    for name in names:
        cpu_ratios = [t / b for t, b in zip(cpu[name], cpu[baseline]) if b > 0]
        paired = paired_ratio(times[name], base)
        out[name] = dict(
            times=[round(t, 6) for t in times[name]],
            cpu_times=[round(t, 6) for t in cpu[name]],
            cpu_ratio=statistics.median(cpu_ratios) if cpu_ratios else float('nan'),
            median_s=statistics.median(times[name]),
            min_s=min(times[name]),
            ratio=paired['ratio'],
            ratio_q1=paired['q1'],
            ratio_q3=paired['q3'],
            ratio_of_medians=statistics.median(times[name]) / statistics.median(base),
            ratio_of_mins=min(times[name]) / min(base),
        )
    return out


def paired_ratio(times: Sequence[float], base: Sequence[float]) -> Dict[str, float]:
    """Median and quartiles of the per-round ratios ``times[i] / base[i]``."""
    ratios = [t / b for t, b in zip(times, base)]
    if len(ratios) == 1:
        return dict(ratio=ratios[0], q1=ratios[0], q3=ratios[0])
    q1, median, q3 = statistics.quantiles(ratios, n=4, method='inclusive')
    return dict(ratio=median, q1=q1, q3=q3)


def rel_err(value: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's largest magnitude (float64)."""
    ref = ref.detach().double().cpu()
    diff = (value.detach().double().cpu() - ref).abs().max()
    return (diff / ref.abs().max().clamp_min(1e-300)).item()


class Report:
    """Rows of one benchmark: ``case`` (a setting), ``name`` (a candidate), its timing."""

    def __init__(self, bench: str, title: str, args: argparse.Namespace, env: Dict,
                 goal: Optional[str] = None) -> None:
        self.bench, self.title, self.args, self.env, self.goal = bench, title, args, env, goal
        self.rows: List[Dict] = []
        self.notes: List[str] = []

    def add(self, case: str, timings: Dict[str, Dict], baseline: str,
            labels: Optional[Dict[str, str]] = None, goal_for: Optional[str] = None,
            goal_max: Optional[float] = None, goal_min_speedup: Optional[float] = None,
            **extra) -> None:
        """One row per candidate of ``timings``; the goal applies to candidate ``goal_for``."""
        labels = labels or {}
        for name, t in timings.items():
            row = dict(bench=self.bench, case=case, name=name, label=labels.get(name, name),
                       baseline=baseline, **extra, **t)
            if name == goal_for:
                if goal_max is not None:
                    row['goal'] = f'<= {goal_max:.2f}x'
                    row['goal_met'] = bool(t['ratio'] <= goal_max)
                if goal_min_speedup is not None:
                    row['goal'] = f'>= {goal_min_speedup:.1f}x faster'
                    row['goal_met'] = bool(1. / t['ratio'] >= goal_min_speedup)
            self.rows.append(row)

    def time(self, fns: Dict[str, Callable[[], object]], baseline: str, rounds: int,
             warmup: int = 2, quick_warmup: int = 1, **kwargs) -> Dict[str, Dict]:
        """:func:`interleaved` on the run's device with ``rounds`` and ``warmup`` unless
        ``--rounds`` / ``--warmup`` say otherwise (``--quick``: 2 rounds, ``quick_warmup``)."""
        args = self.args
        return interleaved(fns, baseline, rounds_for(args, rounds),
                           warmup=warmup_for(args, warmup, quick_warmup), device=args.device,
                           **kwargs)

    def note(self, text: str) -> None:
        print(f'  note: {text}', flush=True)
        self.notes.append(text)

    def table(self) -> str:
        return format_table(self.rows, title=f'{self.bench}: {self.title}')

    def write(self, path: Optional[str] = None) -> str:
        path = path or self.args.out or osp.join(RESULTS_DIR, f'{self.bench}.json')
        self.env['load_average_end'] = load_average()
        payload = dict(bench=self.bench, title=self.title, goal=self.goal, env=self.env,
                       argv=sys.argv, rows=self.rows, notes=self.notes)
        write_json(path, payload)
        return path

    def finish(self) -> str:
        print(self.table(), flush=True)
        path = self.write()
        print(f'wrote {path}', flush=True)
        return path


def write_json(path: str, payload) -> None:
    """Write atomically (temp file + rename) so a killed run never leaves half a file."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(payload, f, indent=1, default=str)
    os.replace(tmp, path)


def format_table(rows: List[Dict], title: str = '') -> str:
    """A markdown table: case, candidate, median time, paired ratio (IQR), goal."""
    lines = [f'### {title}', ''] if title else []
    lines += ['| case | candidate | median ms | ratio vs baseline (IQR) | CPU-time ratio | goal |',
              '|---|---|---:|---|---:|---|']
    for row in rows:
        if row['name'] == row['baseline']:
            ratio, cpu = '1 (baseline)', '1'
        else:
            ratio = f'{row["ratio"]:.3f}x ({row["ratio_q1"]:.3f}-{row["ratio_q3"]:.3f})'
            cpu = f'{row.get("cpu_ratio", float("nan")):.3f}x'
        goal = ''
        if 'goal' in row:
            goal = f'{row["goal"]}: {"met" if row["goal_met"] else "NOT met"}'
        lines.append(f'| {row["case"]} | {row["label"]} | {row["median_s"] * 1e3:.1f} | '
                     f'{ratio} | {cpu} | {goal} |')
    return '\n'.join(lines) + '\n'


def parse_size(text: str) -> tuple:
    """``'320'`` -> (320, 320); ``'1344x800'`` -> (800, 1344) as (H, W) (width x height)."""
    if 'x' in text:
        width, height = (int(v) for v in text.split('x'))
        return height, width
    return int(text), int(text)


def rounds_for(args: argparse.Namespace, default: int, quick: int = 2) -> int:
    if args.rounds is not None:
        return args.rounds
    return quick if args.quick else default


def warmup_for(args: argparse.Namespace, default: int = 2, quick: int = 1) -> int:
    if args.warmup is not None:
        return args.warmup
    return quick if args.quick else default
