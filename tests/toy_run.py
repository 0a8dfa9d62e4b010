"""Helpers for tests that train real detectors on a tiny toy COCO set."""
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from mmengine.config import Config

from tests.conftest import REPO


def toy_overrides(data_root: Path, work_dir: Path, max_epochs: int = 1,
                  score_thr_key: str = 'model.test_cfg.rcnn.score_thr') -> Dict[str, object]:
    """cfg-options that point a toy config at ``data_root`` and keep the run short
    (``score_thr_key``: the detector's test score threshold, ``model.test_cfg.score_thr`` for a
    one-stage detector)."""
    root = f'{data_root}/'
    ann = f'{root}annotations/instances_val2017.json'
    out: Dict[str, object] = {
        'work_dir': str(work_dir),
        'train_cfg.max_epochs': max_epochs,
        'train_cfg.val_interval': 1,
        'default_hooks.checkpoint.interval': 1,
        'default_hooks.checkpoint.max_keep_ckpts': 3,
        'default_hooks.logger.interval': 1,
        'val_evaluator.ann_file': ann,
        'test_evaluator.ann_file': ann,
        'param_scheduler.0.end': 2,
        score_thr_key: 0.,  # an untrained model still yields detections
    }
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        out[f'{loader}.dataset.data_root'] = root
        out[f'{loader}.num_workers'] = 0
        out[f'{loader}.persistent_workers'] = False
        out[f'{loader}.batch_size'] = 2
    return out


def toy_config(name: str, data_root: Path, work_dir: Path, **kwargs) -> Config:
    cfg = Config.fromfile(str(REPO / 'configs' / 'toy' / name))
    cfg.merge_from_dict(toy_overrides(data_root, work_dir, **kwargs), allow_list_keys=True)
    return cfg


def cli_options(overrides: Dict[str, object]) -> List[str]:
    return ['--cfg-options'] + [f'{k}={v}' for k, v in overrides.items()]


def run_tool(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``tools/<args[0]>`` with this interpreter from the repo root; fail with its output."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f'{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc
