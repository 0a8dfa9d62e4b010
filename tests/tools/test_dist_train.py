"""tools/dist_train.sh with torchrun on CPU (gloo): 2 processes train, checkpoint and evaluate,
and match a 1-process run with the same total batch."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, load_tool
from tests.toy_run import toy_overrides

pytestmark = pytest.mark.slow

#: Per-iteration mean loss, 2 ranks x 1 image vs 1 rank x 2 images. Data order, weights, GN
#: statistics and the (exhaustive) samplers are identical; not bit-equal because the R-CNN loss
#: is normalized by each rank's own RoI count (avg_factor) and DDP averages the ranks.
LOSS_RTOL = 0.05


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _write_config(path: Path, data_root: Path, work_dir: Path, probe_dir: Path,
                  batch_size: int) -> Path:
    """A child of the toy Faster R-CNN config: GN instead of BN (batch-independent), samplers
    that take every anchor / RoI (no randomness), and the loss probe."""
    overrides = toy_overrides(data_root, work_dir, max_epochs=1)
    lines = [f"_base_ = {str(REPO / 'configs/toy/faster_rcnn_ws_eps_r18_toy.py')!r}",
             "custom_imports = dict(imports=['mmdet_eps', 'tests.dist_loss_probe'])",
             f"custom_hooks = [dict(type='RankLossProbeHook', out_dir={str(probe_dir)!r})]",
             "model = dict(backbone=dict(norm_cfg=dict(type='GN', num_groups=16, "
             "requires_grad=True)), train_cfg=dict(rpn=dict(sampler=dict(num=8192)), "
             "rcnn=dict(sampler=dict(num=1024))))",
             "train_dataloader = dict(sampler=dict(shuffle=False))"]
    path.write_text('\n'.join(lines) + '\n')
    return path, {**overrides, 'train_dataloader.batch_size': batch_size}


def _dist_train(config: Path, nproc: int, options: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()), OMP_NUM_THREADS='1')
    cmd = ['bash', str(REPO / 'tools/dist_train.sh'), str(config), str(nproc), '--cfg-options',
           *[f'{k}={v}' for k, v in options.items()]]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _losses(probe_dir: Path) -> dict:
    per_rank = [[json.loads(line)['loss'] for line in p.read_text().splitlines()]
                for p in sorted(probe_dir.glob('rank*.jsonl'))]
    return len(per_rank), [sum(v) / len(v) for v in zip(*per_rank)]


def test_two_process_cpu_training_matches_one_process(tmp_path):
    data = tmp_path / 'toy_coco'
    load_tool('misc/make_toy_coco').make_toy_coco(data, num_train=4, num_val=2, seed=5)
    runs = {}
    for nproc, batch in ((2, 1), (1, 2)):
        work, probe = tmp_path / f'run{nproc}', tmp_path / f'probe{nproc}'
        probe.mkdir()
        config, options = _write_config(tmp_path / f'cfg{nproc}.py', data, work, probe, batch)
        proc = _dist_train(config, nproc, options)
        runs[nproc] = _losses(probe)
        if nproc == 2:
            log = proc.stdout + proc.stderr
            assert "'backend': 'gloo'" in log or 'gloo' in log
            assert (work / 'epoch_1.pth').is_file()
            scalars = sorted(work.glob('*/vis_data/scalars.json'))
            records = [json.loads(x) for x in scalars[-1].read_text().splitlines()]
            assert any('coco/bbox_mAP' in r for r in records)
    (ranks2, loss2), (ranks1, loss1) = runs[2], runs[1]
    assert (ranks2, ranks1) == (2, 1) and len(loss2) == len(loss1) == 2
    for a, b in zip(loss2, loss1):
        assert a == pytest.approx(b, rel=LOSS_RTOL)
