"""tools/analysis_tools/stability_sweep.py: the quick configuration reproduces the paper's failure
of plain decay and its cure by the ε-shifted term, writes its table and figure, and is
deterministic."""
import json

import pytest
import torch
from matplotlib.image import imread

from tests.conftest import load_tool

sweep = load_tool('analysis_tools/stability_sweep')


@pytest.mark.slow
def test_quick_sweep_plain_decay_fails_eps_shifted_does_not(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert sweep.main(['--quick', '--out', str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads  # restored
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'stability.json', 'stability.md', 'stability.png']
    result = json.loads((tmp_path / 'stability.json').read_text())
    cells = result['cells']
    assert len(cells) == 4 and {c['eps'] for c in cells} == {0., 1e-3}
    plain = [c for c in cells if c['eps'] == 0]
    shifted = [c for c in cells if c['eps'] > 0]
    assert any(c['failed_at'] is not None for c in plain)
    assert all(c['failed_at'] is None for c in shifted)
    for c in shifted:  # the term holds the std near ε: far from overflow
        assert c['min_std'] > c['eps'] / 2 and c['steps_run'] == result['steps']
    failed = next(c for c in plain if c['failed_at'] is not None)
    assert failed['lam'] == 0.1 and failed['max_inv_std'] > 1e20

    table = (tmp_path / 'stability.md').read_text()
    assert 'Command: `tools/analysis_tools/stability_sweep.py --quick --out' in table
    assert '| WS | sgd | plain | ✗' in table
    assert '| WS | sgd | ε-shifted, ε=0.001 | ✓' in table
    assert table in capsys.readouterr().out
    png = tmp_path / 'stability.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and imread(str(png)).ndim == 3
    assert not list(tmp_path.glob('.*.tmp'))


def test_cells_are_deterministic_and_built_by_the_constructor():
    runs = [sweep.run_sweep([sweep.Cell('ws', 'adam', 1e-2, 1e-3)], 30, verbose=False)[0]
            for _ in range(2)]
    assert runs[0].curve == runs[1].curve and runs[0].final_loss == runs[1].final_loss
    model = sweep.make_net('wn')
    optimizer = sweep.build_optim_wrapper(model, 'sgd', 0.1, 0.).optimizer
    tagged = [g for g in optimizer.param_groups if g.get('eps_shift_family')]
    assert {g['eps_shift_family'] for g in tagged} == {'wn'}
    assert all(g['eps_shift_eps'] == 0. and g['eps_shift_lambda'] == 0.1 for g in tagged)
    assert sum(len(g['params']) for g in tagged) == 2


def test_grid_and_arguments():
    cells = sweep.sweep_cells(('ws', 'wn'), ('sgd', 'adam'), sweep.LAMBDAS, sweep.EPSILONS)
    assert len(cells) == 48 and sum(c.eps == 0 for c in cells) == 16
    args = sweep.parse_args(['--quick'])
    assert args.families == ('ws', ) and args.steps == sweep.QUICK['steps']
    assert sweep.parse_args([]).steps == sweep.STEPS
    for bad in (['--steps', '0'], ['--eps', '0'], ['--lambdas', '-1'], ['--families', 'bn']):
        with pytest.raises(SystemExit):
            sweep.parse_args(bad)
