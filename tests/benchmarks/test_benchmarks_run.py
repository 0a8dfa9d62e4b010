"""Every benchmark runs end to end (``run_all.py --quick``) and records its ratios as JSON.

A smoke test of the scripts, not of speed: ``--quick`` uses tiny sizes and 2 rounds, so the
ratios are meaningless and no time is asserted.
"""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, needs_compile


@pytest.mark.slow
def test_run_all_quick_writes_every_result(tmp_path):
    proc = subprocess.run([sys.executable, 'benchmarks/run_all.py', '--quick', '--out-dir',
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / 'summary.json').read_text())
    names = [f'B{i}' for i in range(1, 8)]
    for name in names:
        result = json.loads((tmp_path / f'{name}.json').read_text())
        ratios = [row['ratio'] for row in result['rows']]
        assert ratios and all(r > 0 for r in ratios), name
        assert any(row['name'] == row['baseline'] and row['ratio'] == 1 for row in result['rows'])
    assert sorted(summary['status']) == names
    assert all(status['ok'] and not status.get('skipped') for status in summary['status'].values())
    assert (tmp_path / 'summary.md').read_text().startswith('###')


@pytest.mark.slow
@needs_compile
def test_b9_quick_compiles_and_counts_no_graph_break(tmp_path):
    """The compile benchmark end to end (aot_eager: the tracing without inductor's C++ builds)."""
    out = tmp_path / 'B9.json'
    proc = subprocess.run([sys.executable, 'benchmarks/b9_compile.py', '--quick', '--cases',
                           'thin', '--backend', 'aot_eager', '--out', str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())['rows']
    assert [r['name'] for r in rows] == ['plain', 'ws_eps', 'ws_eps_torch_ops']
    assert all(r['graph_breaks'] == 0 and r['compile_s'] > 0 and r['ratio'] > 0 for r in rows)
