"""Run every benchmark (B1-B7), each in its own process, and print one table.

    python benchmarks/run_all.py [--quick] [--only B1 B2 ...] [--device cuda] [--out-dir DIR]

Each benchmark writes ``<out-dir>/<B>.json`` (default ``benchmarks/results/``, git-ignored); this
script then writes ``summary.json`` and ``summary.md`` there. ``make benchmarks`` runs it. Every
figure is a ratio against a baseline timed in the same process, interleaved, median over rounds
(see benchmarks/_common.py).
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

from _common import RESULTS_DIR, environment, format_table, load_average, write_json

HERE = osp.dirname(osp.abspath(__file__))

BENCHMARKS = {
    'B1': 'b1_backbone.py',
    'B2': 'b2_optimizer_step.py',
    'B3': 'b3_cascade_iter.py',
    'B4': 'b4_inference.py',
    'B5': 'b5_coco_eval.py',
    'B6': 'b6_stats_hook.py',
    'B7': 'b7_roi_align.py',
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='smoke test of every benchmark')
    parser.add_argument('--only', nargs='+', choices=list(BENCHMARKS), default=None)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--out-dir', default=RESULTS_DIR)
    parser.add_argument('--timeout', type=int, default=3600, help='seconds per benchmark')
    parser.add_argument('extra', nargs=argparse.REMAINDER,
                        help='arguments after -- go to every benchmark')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = args.only or list(BENCHMARKS)
    os.makedirs(args.out_dir, exist_ok=True)
    extra = [a for a in args.extra if a != '--']
    print(f'load average before: {load_average()}', flush=True)
    status, rows, notes = {}, [], {}
    for name in names:
        out = osp.join(args.out_dir, f'{name}.json')
        cmd = [sys.executable, osp.join(HERE, BENCHMARKS[name]), '--out', out, '--device',
               args.device, '--threads', str(args.threads)] + (['--quick'] if args.quick
                                                                else []) + extra
        print(f'\n=== {name}: {" ".join(cmd)}', flush=True)
        start = time.time()
        if osp.exists(out):
            os.remove(out)
        try:
            proc = subprocess.run(cmd, timeout=args.timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = 'timeout'
        took = time.time() - start
        if code == 0 and osp.exists(out):
            with open(out) as f:
                payload = json.load(f)
            rows += payload['rows']
            notes[name] = payload.get('notes', [])
            status[name] = dict(ok=True, seconds=round(took, 1))
        else:
            status[name] = dict(ok=False, code=code, seconds=round(took, 1))
            print(f'=== {name} did not complete (exit {code})', flush=True)
    table = format_table(rows, title='mmdet-eps benchmarks (ratios vs baseline, same process)')
    goals = [r for r in rows if 'goal' in r]
    summary = ['', '| benchmark | case | candidate | ratio | goal |', '|---|---|---|---|---|']
    for r in goals:
        summary.append(f'| {r["bench"]} | {r["case"]} | {r["label"]} | {r["ratio"]:.3f}x | '
                       f'{r["goal"]}: {"met" if r["goal_met"] else "NOT met"} |')
    text = table + '\n'.join(summary) + '\n'
    print('\n' + text)
    for name, ok in status.items():
        if not ok['ok']:
            print(f'{name}: did not complete ({ok})')
    env = environment()
    env.update(quick=args.quick, device=args.device, load_average_end=load_average())
    write_json(osp.join(args.out_dir, 'summary.json'),
               dict(env=env, status=status, rows=rows, notes=notes))
    with open(osp.join(args.out_dir, 'summary.md'), 'w') as f:
        f.write(text)
        for name, lines in notes.items():
            for line in lines:
                f.write(f'- {name}: {line}\n')
    print(f'wrote {osp.join(args.out_dir, "summary.md")}')
    return 0 if all(s['ok'] for s in status.values()) else 1


if __name__ == '__main__':
    sys.exit(main())
