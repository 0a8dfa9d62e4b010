"""The GPU check (``benchmarks/gpu_e2e.sh``, issue 11) keeps working between GPU loans: its dry
run on the CPU (every section of ``gpu_e2e.py`` and a benchmark of ``BENCH``), its shell syntax,
the dependency fetcher's command line, and the trimming of mmcv's sources that its minimal CUDA
build applies. No test downloads anything."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from torch.torch_version import TorchVersion

from tests.conftest import REPO

sys.path.insert(0, str(REPO / 'benchmarks'))
import mmcv_minimal_ops  # noqa: E402

SCRIPT = REPO / 'benchmarks' / 'gpu_e2e.sh'
ARCHS = ['cascade_rcnn', 'faster_rcnn', 'mask_rcnn']
VARIANTS = ['baseline', 'ws', 'ws_eps']
CHECKS = {'layers', 'eps_step', 'loss_decreases', 'stats_hook_logs', 'coco_eval'}


def test_script_is_valid_bash():
    subprocess.run(['bash', '-n', str(SCRIPT)], check=True)


def test_fetch_script_help():
    proc = subprocess.run([sys.executable, 'benchmarks/fetch_gpu_deps.py', '--help'], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert '--dest' in proc.stdout and '--check' in proc.stdout


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_minimal_ops_keeps_only_the_named_kernels(tmp_path):
    """A source tree laid out like mmcv 2.1's: one block per op in cudabind.cpp, a kernel file
    per op, and a dispatcher that calls its CUDA function directly."""
    csrc = tmp_path / 'mmcv' / 'ops' / 'csrc' / 'pytorch'
    for op, launcher in [('nms', 'NMSCUDAKernelLauncher'), ('roi_align', 'ROIAlignLauncher'),
                         ('focal_loss', 'FocalLossLauncher'), ('nms_rotated', None)]:
        name = launcher or f'{op}_cuda'
        _write(csrc / 'cuda' / f'{op}_cuda.cu',
               f'// Copyright (c) OpenMMLab\n#include "x.hpp"\nTensor {name}(Tensor a,\n'
               f'    int b) {{\n  for (int i = 0; i < b; ++i) {{ a += 1; }}\n  return a;\n}}\n')
    bind = ['#include "pytorch_cpp_helper.hpp"\n']
    for op, launcher in [('focal_loss', 'FocalLossLauncher'), ('nms', 'NMSCUDAKernelLauncher'),
                         ('roi_align', 'ROIAlignLauncher')]:
        bind.append(f'Tensor {launcher}(Tensor a, int b);\n\n'
                    f'Tensor {op}_cuda(Tensor a, int b) {{\n  return {launcher}(a, b);\n}};\n\n'
                    f'Tensor {op}_impl(Tensor a, int b);\n'
                    f'REGISTER_DEVICE_IMPL({op}_impl, CUDA, {op}_cuda);\n\n')
    _write(csrc / 'cuda' / 'cudabind.cpp', ''.join(bind))
    _write(csrc / 'nms_rotated.cpp', '#ifdef MMCV_WITH_CUDA\nTensor nms_rotated_cuda(Tensor a, '
           'int b);\n#endif\nTensor nms_rotated(Tensor a) {\n  if (a.is_cuda()) {\n'
           '    return nms_rotated_cuda(a, 0);\n  }\n  return a;\n}\n')
    _write(csrc / 'nms.cpp', 'Tensor nms(Tensor a) {\n  return nms_impl(a, 0);\n}\n')

    report = mmcv_minimal_ops.trim(str(tmp_path), ['nms', 'roi_align'])

    assert sorted(p.name for p in (csrc / 'cuda').iterdir()) == [
        'cudabind.cpp', 'nms_cuda.cu', 'roi_align_cuda.cu']
    bind_text = (csrc / 'cuda' / 'cudabind.cpp').read_text()
    assert bind_text.startswith('#include "pytorch_cpp_helper.hpp"\n')
    assert 'REGISTER_DEVICE_IMPL(nms_impl' in bind_text
    assert 'REGISTER_DEVICE_IMPL(roi_align_impl' in bind_text
    assert 'focal_loss' not in bind_text and 'FocalLoss' not in bind_text
    assert (csrc / 'nms_rotated.cpp').read_text().startswith('#undef MMCV_WITH_CUDA')
    assert not (csrc / 'nms.cpp').read_text().startswith('#undef')
    assert report['undef_cuda_in'] == ['nms_rotated.cpp']
    with pytest.raises(SystemExit):
        mmcv_minimal_ops.trim(str(tmp_path), ['no_such_op'])


def test_minimal_ops_on_the_fetched_sdist(tmp_path):
    """The real mmcv sdist, when ``fetch_gpu_deps.py`` has downloaded it here."""
    sdists = sorted((REPO / '.gpu_deps').glob('mmcv-*.tar.gz'))
    if not sdists:
        pytest.skip('no mmcv sdist in .gpu_deps (benchmarks/fetch_gpu_deps.py downloads it)')
    with tarfile.open(sdists[-1]) as tar:
        tar.extractall(tmp_path, filter='data')
    src = next(tmp_path.iterdir())
    report = mmcv_minimal_ops.trim(str(src))
    bind = (src / 'mmcv' / 'ops' / 'csrc' / 'pytorch' / 'cuda' / 'cudabind.cpp').read_text()
    assert bind.startswith('#include "pytorch_cpp_helper.hpp"\n#include "pytorch_device_registry')
    assert report['registered'] == ['nms_impl', 'roi_align_backward_impl',
                                    'roi_align_forward_impl']
    assert report['undef_cuda_in'] == ['nms_quadri.cpp', 'nms_rotated.cpp', 'spconv_ops.cpp']


@pytest.mark.slow
def test_dry_run_on_cpu(tmp_path):
    """``DEVICE=cpu SMOKE=1 bash benchmarks/gpu_e2e.sh``: every section runs on tiny images with
    the installed stack (no install, no build), every correctness check passes, and a benchmark
    named in ``BENCH`` runs first and lands in the report."""
    out, work = tmp_path / 'out', tmp_path / 'work'
    env = dict(os.environ, DEVICE='cpu', SMOKE='1', PYTHON=sys.executable, OUT=str(out),
               WORK=str(work), BUDGET_S='1800', COMPILE_BACKEND='aot_eager',
               BENCH='b4_inference', BENCH_ARGS='--quick')
    proc = subprocess.run(['bash', str(SCRIPT)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((out / 'gpu_e2e.json').read_text())
    assert result['build']['mode'] == 'preinstalled'
    assert [(r['arch'], r['precision']) for r in result['timing']] == [
        (arch, 'fp32') for arch in ARCHS]
    for row in result['timing']:
        assert row['finite'], row['last_loss']
        assert all(row['median_s'][v] > 0 for v in VARIANTS)
        assert set(row['ratios']) == {'ws_eps/baseline', 'ws_eps/ws'}
    compiles = TorchVersion(torch.__version__) >= '2.4'  # older: the section is skipped
    if compiles:
        compiled = result['compiled']  # the compiled Cascade train_step the GPU run times
        assert compiled['backend'] == 'aot_eager' and compiled['finite']
        assert all(compiled['median_s'][v] > 0 for v in ('baseline', 'ws_eps'))
    assert set(result['checks']) == CHECKS
    failed = {k: c['detail'] for k, c in result['checks'].items() if not c['ok']}
    assert not failed
    layers = result['checks']['layers']['errors']  # every family, alone and grouped, and steps
    for key in ('ws', 'ws population', 'cwn', 'wn', 'ws grouped'):
        assert layers[f'{key} forward'] < 1e-4 and layers[f'{key} weight grad'] < 1e-4
    for family in ('ws', 'cwn', 'wn'):
        assert max(layers[f'{family} step after a forward'], layers[f'{family} step, cold']) < 1e-4
    [bench] = result['benchmarks']
    assert bench['bench'] == 'B4' and all(r['ratio'] > 0 for r in bench['rows'])
    [profile] = result['profile']
    assert profile['arch'] == 'cascade_rcnn' and set(profile['parts']) == set(VARIANTS)
    eps = profile['parts']['ws_eps']
    assert eps['backbone_fwd_norm'] > 0 and eps['backbone_bwd_norm'] > 0
    assert eps['step_eps_shift'] > 0 and eps['total'] > eps['backbone_fwd']
    baseline = profile['parts']['baseline']  # no normalization (up to profiler misparenting)
    assert baseline['backbone_fwd_norm'] <= 0.05 * baseline['backbone_fwd']
    table = (out / 'gpu_e2e.md').read_text()
    assert table.startswith('### GPU end-to-end (issue 11)')
    for name in ('Cascade R-CNN', 'Faster R-CNN', 'Mask R-CNN', 'Where the time goes',
                 '### B4: eval inference'):
        assert name in table
    assert ('Compiled `train_step`' in table) == compiles
    assert all(f'| {name} | pass |' in table for name in CHECKS)
    assert (out / 'gpu_e2e.log').stat().st_size > 0
