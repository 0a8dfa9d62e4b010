"""Real training on the toy set: each detector family through the real Runner, and the CLI
chain train -> resume -> test that users run (tools/train.py, tools/test.py)."""
import copy
import json
import math
from pathlib import Path

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

from mmdet_eps.engine.optimizers.eps_shifted_regularizer import FAMILY_KEY
from mmdet_eps.utils import safe_load
from tests.toy_run import cli_options, run_tool, toy_config, toy_overrides

pytestmark = pytest.mark.slow



def _scalars(work_dir: Path) -> list:
    files = sorted(work_dir.glob('*/vis_data/scalars.json'))
    assert files, f'no scalars.json under {work_dir}'
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


@pytest.mark.parametrize('config', [
    'cascade_rcnn_ws_eps_r18_toy.py', 'faster_rcnn_ws_eps_r18_toy.py',
    'mask_rcnn_ws_eps_r18_toy.py'
])
def test_each_family_trains_and_evaluates(config, tiny_coco, tmp_path):
    cfg = toy_config(config, tiny_coco, tmp_path)
    cfg.visualizer.name = f'vis_{config}'
    runner = Runner.from_cfg(cfg)
    assert type(runner.model.backbone).__name__ == 'WSResNet'
    runner.train()
    records = _scalars(tmp_path)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert losses and all(math.isfinite(v) for v in losses)
    assert any(FAMILY_KEY in g for g in runner.optim_wrapper.optimizer.param_groups)
    metrics = [r for r in records if 'coco/bbox_mAP' in r]
    assert metrics and 0. <= metrics[-1]['coco/bbox_mAP'] <= 1.
    if config.startswith('mask'):
        assert 'coco/segm_mAP' in metrics[-1]


class _CaptureResume(Hook):
    """Records the loop position and optimizer state right after resuming."""

    def before_train(self, runner) -> None:
        self.iter, self.epoch = runner.iter, runner.epoch
        self.optim_state = copy.deepcopy(runner.optim_wrapper.state_dict())


def test_cli_train_resume_and_test(tiny_coco, tmp_path):
    config = 'configs/toy/faster_rcnn_ws_eps_r18_toy.py'
    work_dir = tmp_path / 'run'
    overrides = toy_overrides(tiny_coco, work_dir, max_epochs=2)
    run_tool('tools/train.py', config, *cli_options(overrides))
    assert (work_dir / 'epoch_1.pth').is_file() and (work_dir / 'epoch_2.pth').is_file()

    ckpt = safe_load(str(work_dir / 'epoch_1.pth'))  # weights-only, under torch >= 2.6
    assert ckpt['meta']['iter'] == 2 and ckpt['meta']['epoch'] == 1
    cfg = toy_config('faster_rcnn_ws_eps_r18_toy.py', tiny_coco, tmp_path / 'resumed',
                     max_epochs=2)
    cfg.resume, cfg.load_from = True, str(work_dir / 'epoch_1.pth')
    cfg.visualizer.name = 'vis_resume'
    runner = Runner.from_cfg(cfg)
    capture = _CaptureResume()
    runner.register_hook(capture)
    runner.train()
    assert (capture.iter, capture.epoch) == (2, 1)
    saved, resumed = ckpt['optimizer'], capture.optim_state
    assert [{k: v for k, v in g.items() if k != 'params'} for g in saved['param_groups']] == \
        [{k: v for k, v in g.items() if k != 'params'} for g in resumed['param_groups']]
    assert saved['state'].keys() == resumed['state'].keys()
    for key, state in saved['state'].items():  # AdamW: step, exp_avg, exp_avg_sq
        assert state and state.keys() == resumed['state'][key].keys()
        for name, value in state.items():
            torch.testing.assert_close(value, resumed['state'][key][name])
    assert runner.iter == 4

    proc = run_tool('tools/train.py', config, '--resume', *cli_options(overrides))
    assert 'resumed epoch: 2' in (proc.stdout + proc.stderr).lower().replace(',', '')

    test_dir = tmp_path / 'test'
    run_tool('tools/test.py', config, str(work_dir / 'epoch_2.pth'), '--work-dir',
             str(test_dir), '--out', str(test_dir / 'results.pkl'),
             *cli_options({k: v for k, v in toy_overrides(tiny_coco, test_dir).items()
                           if k.startswith(('test_', 'work_dir', 'model.'))}))
    results = sorted(test_dir.glob('*/*.json'))
    assert results, 'tools/test.py wrote no metrics'
    assert 'coco/bbox_mAP' in json.loads(results[-1].read_text())
    assert (test_dir / 'results.pkl').is_file()

    report_dir = tmp_path / 'report'
    run_tool('tools/analysis_tools/report.py', str(work_dir), str(tmp_path / 'resumed'),
             '--names', 'trained', 'resumed', '--baseline', 'trained', '--out-dir', str(report_dir))
    table = (report_dir / 'report.md').read_text()
    assert '| trained |' in table and '| resumed |' in table
    assert (report_dir / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
