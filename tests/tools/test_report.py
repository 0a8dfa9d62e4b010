"""tools/analysis_tools/report.py: numbers, deltas, sources and curves from work dirs in mmengine's
on-disk format.

Work dirs are written the way LoggerHook writes them: scalars through the real
``LocalVisBackend.add_scalars`` and test results through ``mmengine.fileio.dump`` of
``LoggerHook._process_tags``; one test runs a real mmengine Runner (train, val, test).
"""
import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread
from mmengine.evaluator import BaseMetric, Evaluator
from mmengine.fileio import dump
from mmengine.hooks import LoggerHook
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmengine.visualization import LocalVisBackend

from tests.conftest import REPO, load_tool

report = load_tool('analysis_tools/report')

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
ITEMS = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l', 'AR_s@1000', 'AR_m@1000',
         'AR_l@1000')


def coco(iou_type='bbox', ap=0.411, **overrides):
    """CocoMetric-style results: ``coco/<iou_type>_<item>``, 3-decimal fractions."""
    values = dict(zip(ITEMS, (ap, 0.612, 0.447, 0.231, 0.452, 0.538, 0.342, 0.587, 0.701)))
    values.update(overrides)
    return {f'coco/{iou_type}_{item}': value for item, value in values.items()}


def train_tag(iteration, epoch, loss):
    """A train record as LogProcessor.get_log_after_iter tags it."""
    return dict(lr=0.02, data_time=0.01, loss=loss, loss_cls=loss / 2, time=0.3, epoch=epoch,
                iter=iteration, memory=512)


def write_launch(work_dir, timestamp, train=(), val=(), test=None):
    """One Runner launch folder: train/val scalars via LocalVisBackend, test JSON via dump.

    ``train``: (iteration, epoch, loss); ``val``: (epoch, metrics); ``test``: metrics.
    """
    launch = Path(work_dir) / timestamp
    backend = LocalVisBackend(save_dir=str(launch / 'vis_data'))
    epochs = dict(val)
    for iteration, epoch, loss in train:
        backend.add_scalars(train_tag(iteration, epoch, loss), step=iteration,
                            file_path=f'{timestamp}.json')
        if epoch in epochs and iteration % 10 == 0:  # epoch end: validate
            tag = dict(epochs.pop(epoch), data_time=0.02, time=0.1)
            backend.add_scalars(tag, step=epoch, file_path=f'{timestamp}.json')
    for epoch, metrics in epochs.items():
        backend.add_scalars(dict(metrics, data_time=0.02, time=0.1), step=epoch,
                            file_path=f'{timestamp}.json')
    if test is not None:
        launch.mkdir(parents=True, exist_ok=True)
        tag = dict(test, data_time=0.02, time=0.1)
        dump(LoggerHook._process_tags(tag), str(launch / f'{timestamp}.json'))
    return launch


def training(epochs=2, iters_per_epoch=10, start_loss=2.0):
    """(iteration, epoch, loss) for every logged iteration of a short training."""
    return [(i, (i - 1) // iters_per_epoch + 1, start_loss / i ** 0.5)
            for i in range(1, epochs * iters_per_epoch + 1)]


@pytest.fixture
def two_runs(tmp_path):
    """Baseline and a better run, both validated after epochs 1 and 2 (bbox only)."""
    base, eps = tmp_path / 'ws_r50', tmp_path / 'ws_eps_r50'
    write_launch(base, '20240101_120000', training(),
                 [(1, coco(ap=0.301)), (2, coco(ap=0.411))])
    write_launch(eps, '20240102_120000', training(start_loss=1.8),
                 [(1, coco(ap=0.322)), (2, coco(ap=0.418, mAP_50=0.609, **{'AR_l@1000': 0.7}))])
    return base, eps


def read_table(path):
    """Markdown table rows as {run name: {column: cell}}."""
    lines = [line for line in path.read_text().splitlines() if line.startswith('|')]
    header = [cell.strip() for cell in lines[0].strip('|').split('|')]
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in lines[2:]]
    return {row[0]: dict(zip(header, row)) for row in rows}


def run_cli(*args):
    """Run tools/analysis_tools/report.py in a fresh interpreter."""
    return subprocess.run([sys.executable, str(REPO / 'tools' / 'analysis_tools' / 'report.py'),
                           *map(str, args)], capture_output=True, text=True, timeout=120)


def test_cli_writes_table_with_deltas_csv_and_curves(two_runs):
    base, eps = two_runs
    result = run_cli(base, eps)
    assert result.returncode == 0, result.stderr
    assert '41.8 (+0.7)' in result.stdout

    rows = read_table(base / 'report.md')
    assert list(rows) == ['ws_r50', 'ws_eps_r50']
    assert rows['ws_r50']['AP'] == '41.1' and rows['ws_r50']['source'] == 'val (epoch 2)'
    eps_row = rows['ws_eps_r50']
    assert eps_row['AP'] == '41.8 (+0.7)'
    assert eps_row['AP50'] == '60.9 (-0.3)'
    assert eps_row['APs'] == '23.1 (+0.0)'
    assert eps_row['ARl'] == '70.0 (-0.1)'
    assert 'mask AP' not in eps_row

    with open(base / 'report.csv', newline='') as f:
        csv_rows = {row['run']: row for row in csv.DictReader(f)}
    assert csv_rows['ws_eps_r50']['AP'] == '41.8'
    assert csv_rows['ws_eps_r50']['AP delta'] == '+0.7'
    assert csv_rows['ws_eps_r50']['AP50 delta'] == '-0.3'
    assert csv_rows['ws_r50']['AP delta'] == '+0.0'
    assert Path(csv_rows['ws_eps_r50']['work_dir']) == eps

    png = (base / 'curves.png').read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 20_000
    height, width, _ = imread(base / 'curves.png').shape
    assert width > height > 300
    assert not (eps / 'report.md').exists()
    assert not list(base.glob('.*.tmp'))


def test_baseline_names_and_out_dir(two_runs, tmp_path):
    base, eps = two_runs
    out = tmp_path / 'out'
    result = run_cli(base, eps, '--names', 'WS', 'WS+eps', '--baseline', 'WS+eps',
                     '--out-dir', out)
    assert result.returncode == 0, result.stderr
    rows = read_table(out / 'report.md')
    assert rows['WS']['AP'] == '41.1 (-0.7)'
    assert rows['WS+eps']['AP'] == '41.8'
    assert not (base / 'report.md').exists()

    by_dir = report.write_report([report.load_run(base), report.load_run(eps)], out,
                                 baseline=str(eps))
    assert read_table(by_dir['markdown'])['ws_r50']['AP'] == '41.1 (-0.7)'
    with pytest.raises(report.ReportError, match='nope'):
        report.write_report([report.load_run(base)], out, baseline='nope')


def test_single_run_through_functions(two_runs, tmp_path):
    run = report.load_run(two_runs[0])
    assert run.name == 'ws_r50' and run.val_unit == 'epoch'
    assert [step for step, _ in run.val] == [1, 2]
    assert [step for step, _ in run.loss] == list(range(1, 21))
    assert run.metrics['bbox_mAP'] == pytest.approx(0.411)

    paths = report.write_report([run], tmp_path / 'single')
    assert set(paths) == {'markdown', 'csv', 'curves'}
    assert read_table(paths['markdown'])['ws_r50']['AP'] == '41.1'
    assert paths['curves'].read_bytes().startswith(PNG_SIGNATURE)


def test_test_results_take_precedence_over_validation(two_runs):
    base, eps = two_runs
    write_launch(eps, '20240103_090000', test=coco(ap=0.425))
    rows = read_table(report.write_report([report.load_run(base), report.load_run(eps)],
                                          base)['markdown'])
    assert rows['ws_eps_r50']['source'] == 'test'
    assert rows['ws_eps_r50']['AP'] == '42.5 (+1.4)'
    assert rows['ws_r50']['source'] == 'val (epoch 2)'
    # the curves still show the validation history
    assert [step for step, _ in report.load_run(eps).val] == [1, 2]


def test_resumed_run_merges_launches_in_time_order(tmp_path):
    work = tmp_path / 'resumed'
    # first launch died in epoch 3 after validating epochs 1 and 2 ...
    write_launch(work, '20240101_080000', training(epochs=3)[:25],
                 [(1, coco(ap=0.20)), (2, coco(ap=0.25))])
    # ... the resumed launch restarts epoch 3 from the epoch-2 checkpoint
    write_launch(work, '20240101_100000', [(i, e, 9.0) for i, e, _ in training(epochs=4)[20:]],
                 [(3, coco(ap=0.31)), (4, coco(ap=0.35))])
    run = report.load_run(work)
    assert [step for step, _ in run.val] == [1, 2, 3, 4]
    steps, losses = zip(*run.loss)
    assert list(steps) == list(range(1, 41))
    assert losses[20:] == (9.0,) * 20  # the resumed launch replaces iterations 21-25
    assert run.metrics['bbox_mAP'] == pytest.approx(0.35)
    assert run.source == 'val (epoch 4)'


def test_missing_results_fail_clearly_and_write_nothing(two_runs, tmp_path):
    base, _ = two_runs
    untrained = tmp_path / 'no_eval'
    write_launch(untrained, '20240105_000000', training())  # train lines, no validation
    empty = tmp_path / 'empty'
    empty.mkdir()
    for bad in (untrained, empty, tmp_path / 'does_not_exist'):
        result = run_cli(base, bad)
        assert result.returncode == 1
        assert str(bad) in result.stderr and 'error' in result.stderr
        assert 'Traceback' not in result.stderr
        assert sorted(p.name for p in base.iterdir()) == ['20240101_120000']
    assert 'no evaluation results' in run_cli(untrained).stderr


def test_failed_render_leaves_no_partial_output(two_runs, monkeypatch):
    base, eps = two_runs
    runs = [report.load_run(base), report.load_run(eps)]

    def broken(runs):
        raise RuntimeError('plotting failed')

    monkeypatch.setattr(report, 'render_curves', broken)
    with pytest.raises(RuntimeError, match='plotting failed'):
        report.write_report(runs, base)
    assert sorted(p.name for p in base.iterdir()) == ['20240101_120000']


def test_mask_columns_only_with_segm_metrics(two_runs, tmp_path):
    base, eps = two_runs
    mask = tmp_path / 'mask_rcnn'
    write_launch(mask, '20240104_000000', training(),
                 [(2, {**coco(ap=0.415), **coco('segm', ap=0.372, mAP_50=0.589)})])
    rows = read_table(report.write_report(
        [report.load_run(base), report.load_run(mask)], tmp_path / 'mixed')['markdown'])
    assert rows['mask_rcnn']['mask AP'] == '37.2'  # no baseline mask AP, so no delta
    assert rows['mask_rcnn']['mask AP50'] == '58.9'
    assert rows['mask_rcnn']['AP'] == '41.5 (+0.4)'
    assert rows['ws_r50']['mask AP'] == '-'

    segm_base = tmp_path / 'mask_base'
    write_launch(segm_base, '20240104_000000', val=[(1, {**coco(), **coco('segm', ap=0.360)})])
    rows = read_table(report.write_report(
        [report.load_run(segm_base), report.load_run(mask)], tmp_path / 'both')['markdown'])
    assert rows['mask_rcnn']['mask AP'] == '37.2 (+1.2)'

    bbox_only = read_table(report.write_report([report.load_run(base), report.load_run(eps)],
                                               tmp_path / 'bbox')['markdown'])
    assert not any(column.startswith('mask') for column in bbox_only['ws_r50'])
    with open(tmp_path / 'bbox' / 'report.csv', newline='') as f:
        assert not any(column.startswith('mask') for column in next(csv.reader(f)))


def test_absent_and_undefined_metrics_show_a_dash(tmp_path):
    default_items = tmp_path / 'default_items'
    metrics = {k: v for k, v in coco(**{'mAP_l': -1.0}).items() if '_AR_' not in k}
    write_launch(default_items, '20240101_000000', val=[(1, metrics)])
    row = read_table(report.write_report([report.load_run(default_items)],
                                         tmp_path)['markdown'])['default_items']
    assert row['AP'] == '41.1'
    assert row['APl'] == '-'  # COCOeval's -1: no large ground truth
    assert (row['ARs'], row['ARm'], row['ARl']) == ('-', '-', '-')


def test_hierarchical_keys_and_truncated_last_line(tmp_path):
    """log_with_hierarchy=True prefixes keys with train/ and val/; a crash may cut a line."""
    work = tmp_path / 'hier'
    launch = write_launch(work, '20240101_000000',
                          val=[(1, {f'val/{k}': v for k, v in coco(ap=0.2).items()})])
    backend = LocalVisBackend(save_dir=str(launch / 'vis_data'))
    backend.add_scalars({'train/lr': 0.01, 'train/loss': 1.5, 'epoch': 1, 'iter': 10}, step=10)
    with open(launch / 'vis_data' / 'scalars.json', 'a') as f:
        f.write('{"loss": 1.2, "st')  # killed mid-write
    with pytest.warns(UserWarning, match='truncated'):
        run = report.load_run(work)
    assert run.metrics['bbox_mAP'] == pytest.approx(0.2)
    assert run.loss == [(10, 1.5)]


def test_duplicate_names_are_refused(two_runs):
    run = report.load_run(two_runs[0])
    with pytest.raises(report.ReportError, match='duplicate'):
        report.write_report([run, run], two_runs[0])


class _ToyModel(BaseModel):
    """One linear layer: a loss in 'loss' mode, a prediction otherwise."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.linear(inputs)
        return dict(loss=out.square().mean()) if mode == 'loss' else [out]


class _ScheduledCocoMetric(BaseMetric):
    """Emits the given CocoMetric-style results, one dict per evaluation, under 'coco/'."""

    default_prefix = 'coco'

    def __init__(self, schedule):
        super().__init__()
        self.schedule = list(schedule)

    def process(self, data_batch, data_samples):
        self.results.append(len(data_samples))

    def compute_metrics(self, results):
        return {key.split('/', 1)[1]: value for key, value in self.schedule.pop(0).items()}


def test_reads_what_a_real_runner_writes(tmp_path):
    """Train with validation, then test, through mmengine's Runner and LoggerHook."""
    data = [dict(inputs=torch.randn(2)) for _ in range(8)]
    loader = dict(batch_size=2, dataset=data, sampler=dict(type='DefaultSampler', shuffle=False),
                  collate_fn=dict(type='default_collate'))
    common = dict(model=_ToyModel(), work_dir=str(tmp_path / 'runner'), default_scope='mmengine',
                  default_hooks=dict(logger=dict(type='LoggerHook', interval=1), checkpoint=None))
    val_metric = _ScheduledCocoMetric([coco(ap=0.301), coco(ap=0.355)])
    test_metric = _ScheduledCocoMetric([coco(ap=0.362)])
    # the Runners switch the default registry scope; restore it for the other tests
    with DefaultScope.overwrite_default_scope('mmengine'):
        Runner(train_dataloader=loader, train_cfg=dict(by_epoch=True, max_epochs=2),
               optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
               val_dataloader=loader, val_cfg=dict(), val_evaluator=Evaluator(val_metric),
               experiment_name='report_train', **common).train()
        trained = report.load_run(tmp_path / 'runner')
        Runner(test_dataloader=loader, test_cfg=dict(), test_evaluator=Evaluator(test_metric),
               experiment_name='report_test', **common).test()
    assert trained.source == 'val (epoch 2)'
    assert trained.metrics['bbox_AR_s@1000'] == pytest.approx(0.342)
    assert [(step, m['bbox_mAP']) for step, m in trained.val] == [(1, 0.301), (2, 0.355)]
    assert [step for step, _ in trained.loss] == list(range(1, 9))

    tested = report.load_run(tmp_path / 'runner')
    assert tested.source == 'test' and tested.metrics['bbox_mAP'] == pytest.approx(0.362)
    assert tested.val == trained.val and tested.loss == trained.loss
    rows = read_table(report.write_report([tested], tmp_path / 'runner')['markdown'])
    assert rows['runner']['AP'] == '36.2'
