"""tools/analysis_tools/plot_weight_stats.py: PNGs from a real Runner's log and from logs written
by mmengine's LocalVisBackend; a clear error, and no file, for a log without WeightNormStatsHook
statistics."""
import math

import pytest
from matplotlib.image import imread
from mmengine.visualization import LocalVisBackend

from tests.conftest import load_tool
from tests.engine.test_weight_norm_stats_hook import train_tiny

plot = load_tool('analysis_tools/plot_weight_stats')

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def write_launch(work_dir, timestamp, records):
    """One launch folder written the way LoggerHook writes it (LocalVisBackend.add_scalars)."""
    backend = LocalVisBackend(save_dir=str(work_dir / timestamp / 'vis_data'))
    for record in records:
        record = dict(record)
        backend.add_scalars(record, step=record.pop('step'))
    return work_dir


def iter_based_collapse(work_dir):
    """An iteration-based run (no 'epoch' key) whose 1/std overflows at the end."""
    records = [{'lr': 0.1, 'loss': 1.0, 'iter': s, 'step': s,
                'wn_stats/eff_lr': 0.1 * 10**(s / 10), 'wn_stats/max_inv_std': 10**(s / 5),
                'wn_stats/min_std': 10**(-s / 5), 'wn_stats/n_small': 0}
               for s in range(10, 110, 10)]
    records.append({'lr': 0.1, 'loss': float('nan'), 'iter': 110, 'step': 110,
                    'wn_stats/eff_lr': float('inf'), 'wn_stats/max_inv_std': float('inf'),
                    'wn_stats/min_std': 0.0, 'wn_stats/n_small': 8})
    return write_launch(work_dir, '20260101_000000', records)


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_plots_a_real_run_and_a_collapsing_one(tmp_path):
    train_tiny(tmp_path / 'real', hook=dict(interval=2, layers=['ws']))
    iter_based_collapse(tmp_path / 'collapse')
    out = tmp_path / 'plots'
    assert plot.main([str(tmp_path / 'real'), str(tmp_path / 'collapse'), '--names', 'ws+eps',
                      'plain', '--out', str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ['eff_lr.png', 'max_inv_std.png']
    for name in ('eff_lr.png', 'max_inv_std.png'):
        assert_png(out / name)

    real = plot.load_stats(tmp_path / 'real')
    assert real.name == 'real' and real.by_epoch and real.steps == [2, 4, 6, 8, 10, 12]
    assert [epoch for epoch, _ in real.per_epoch('wn_stats/eff_lr')] == [1, 2]
    assert real.layers() == ['ws']
    collapse = plot.load_stats(tmp_path / 'collapse')
    assert not collapse.by_epoch and math.isinf(collapse.series('wn_stats/max_inv_std')[-1][1])


def test_launches_merge_and_a_scalars_file_is_accepted(tmp_path):
    common = {'wn_stats/eff_lr': 1.0, 'wn_stats/min_std': 0.1, 'wn_stats/n_small': 0}
    write_launch(tmp_path / 'run', '20260101_000000', [
        dict(common, step=s, epoch=1, iter=s, **{'wn_stats/max_inv_std': 1.0}) for s in (1, 2)])
    write_launch(tmp_path / 'run', '20260102_000000', [  # resumed: step 2 logged again
        dict(common, step=s, epoch=2, iter=s, **{'train/wn_stats/max_inv_std': 2.0})
        for s in (2, 3)])
    stats = plot.load_stats(tmp_path / 'run')
    assert stats.series('wn_stats/max_inv_std') == [(1, 1.0), (2, 2.0), (3, 2.0)]
    single = plot.load_stats(tmp_path / 'run' / '20260101_000000' / 'vis_data' / 'scalars.json')
    assert single.name == 'run' and single.steps == [1, 2]
    assert plot.main([str(tmp_path / 'run')]) == 0  # default --out: the first RUN_DIR
    assert_png(tmp_path / 'run' / 'max_inv_std.png')


def test_a_run_without_stats_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    iter_based_collapse(tmp_path / 'good')
    write_launch(tmp_path / 'nostats', '20260101_000000',
                 [dict(lr=0.1, loss=1.0, epoch=1, iter=s, step=s) for s in (1, 2)])
    out = tmp_path / 'plots'
    assert plot.main([str(tmp_path / 'good'), str(tmp_path / 'nostats'), '--out',
                      str(out)]) == 1
    err = capsys.readouterr().err
    assert 'nostats' in err and 'no wn_stats/* statistics' in err
    assert 'WeightNormStatsHook' in err
    assert not out.exists()
    with pytest.raises(plot.PlotError, match='no <timestamp>/vis_data/scalars.json'):
        plot.load_stats(tmp_path)
    with pytest.raises(plot.PlotError, match='no such file'):
        plot.load_stats(tmp_path / 'absent')


def test_arguments(tmp_path):
    with pytest.raises(SystemExit):
        plot.parse_args(['a', 'b', '--names', 'x'])
    iter_based_collapse(tmp_path / 'a')
    with pytest.raises(plot.PlotError, match='duplicate run names'):
        plot.write_plots([plot.load_stats(tmp_path / 'a')] * 2, tmp_path / 'out')
