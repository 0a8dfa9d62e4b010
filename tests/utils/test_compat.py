"""The compatibility module: each fix with the upstream problem it solves."""
import os
import pickle
import subprocess
import sys

import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint, save_checkpoint

from mmdet_eps.utils import UnsafeCheckpointError, compat
from mmdet_eps.utils.compat import _init_dist_pytorch_cpu
from tests.conftest import REPO, needs_compile


@pytest.fixture
def mmengine_checkpoint(tmp_path):
    """A checkpoint with what mmengine writes: numpy scalars and a message hub with history."""
    hub = MessageHub.get_instance('compat_test')
    hub.update_scalar('train/loss', 0.5)
    hub.update_info('iter', 3)
    import numpy as np
    path = tmp_path / 'epoch_1.pth'
    save_checkpoint({
        'meta': {'epoch': 1, 'iter': 3, 'seed': np.int64(7), 'acc': np.float64(0.5)},
        'state_dict': {'w': torch.ones(2)},
        'message_hub': hub.state_dict(),
    }, str(path))
    return path


def _load_in_fresh_python(path, import_plugin: bool) -> subprocess.CompletedProcess:
    code = ('import mmdet_eps\n' if import_plugin else '') + (
        'from mmengine.runner.checkpoint import _load_checkpoint\n'
        f'print(sorted(_load_checkpoint({str(path)!r})))')
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


@pytest.fixture(params=['torch allow-list', 'AllowListUnpickler'])
def safety(request, monkeypatch) -> str:
    """Both ways ``safe_load`` checks a file: torch's weights-only loader with mmengine's types
    added (torch >= 2.4), and :class:`AllowListUnpickler` (what torch < 2.4 gets; here forced)."""
    if request.param == 'AllowListUnpickler':
        monkeypatch.setattr(compat, 'ALLOW_LIST_API', False)
    elif not compat.ALLOW_LIST_API:
        pytest.skip(f'torch {torch.__version__} has no allow-list: runs in the default and '
                    'current lanes')
    return request.param


def test_mmengine_checkpoint_loads_either_way(mmengine_checkpoint, safety):
    ckpt = _load_checkpoint(str(mmengine_checkpoint))
    assert sorted(ckpt) == ['message_hub', 'meta', 'state_dict']
    assert ckpt['meta']['seed'] == 7 and ckpt['meta']['acc'] == 0.5
    hub = MessageHub.get_instance('compat_test_loaded')
    hub.load_state_dict(ckpt['message_hub'])
    assert hub.get_scalar('train/loss').mean() == 0.5 and hub.get_info('iter') == 3


def test_mmengine_checkpoints_fail_upstream_and_load_with_the_fix(mmengine_checkpoint):
    upstream = _load_in_fresh_python(mmengine_checkpoint, import_plugin=False)
    if torch.__version__ >= '2.6':
        assert upstream.returncode != 0 and 'weights_only' in upstream.stderr.lower()
    fixed = _load_in_fresh_python(mmengine_checkpoint, import_plugin=True)
    assert fixed.returncode == 0, fixed.stderr
    assert "['message_hub', 'meta', 'state_dict']" in fixed.stdout


class _Payload:
    """Unpickling this would create a marker file: what an attacker's checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker, ))


def test_pickled_callable_is_refused_and_never_runs(tmp_path, safety):
    marker = str(tmp_path / 'pwned')
    path = tmp_path / 'evil.pth'
    with open(path, 'wb') as f:
        torch.save({'state_dict': {'w': torch.ones(1)}, 'payload': _Payload(marker)}, f)
    with pytest.raises(UnsafeCheckpointError, match='Refused to load .*nothing from it was '
                       'executed'):
        _load_checkpoint(str(path))
    with pytest.raises(UnsafeCheckpointError):
        CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert not os.path.exists(marker)


def test_plain_pickle_files_are_refused(tmp_path, safety):
    path = tmp_path / 'legacy.pkl'
    path.write_bytes(pickle.dumps({'state_dict': {'w': [1, 2]}, 'fn': print}))
    with pytest.raises(UnsafeCheckpointError):
        _load_checkpoint(str(path))


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU fix only applies without CUDA')
def test_cpu_distributed_upstream_calls_cuda_and_the_fix_uses_gloo(tmp_path):
    with pytest.raises((RuntimeError, AssertionError, AttributeError)):
        torch.cuda.set_device(0)  # what mmengine's pytorch launcher does first
    import torch.distributed as dist
    _init_dist_pytorch_cpu('nccl', init_method=f'file://{tmp_path}/store', rank=0,
                           world_size=1)
    try:
        assert dist.get_backend() == 'gloo'
        model = torch.nn.Linear(2, 2)
        from mmengine.model import MMDistributedDataParallel
        ddp = MMDistributedDataParallel(module=model, device_ids=[0])
        assert ddp.device_ids is None
    finally:
        dist.destroy_process_group()


def test_only_history_buffer_methods_pass_the_getattr_guard():
    from mmengine.logging import HistoryBuffer

    from mmdet_eps.utils.compat import _history_buffer_method
    assert _history_buffer_method(HistoryBuffer, 'mean') is HistoryBuffer.mean
    for obj, name in ((HistoryBuffer, '__init__'), (os, 'system'), (HistoryBuffer, '__class__')):
        with pytest.raises(pickle.UnpicklingError):
            _history_buffer_method(obj, name)


_TERM_THEN_UPDATE = '''
import torch

def term_then_update(ws, gs):  # the compiled ε-shifted step's shape: reduce, += grads, update
    for w, g in zip(ws, gs):
        u = w - w.mean((1, 2, 3), keepdim=True)
        g.add_(u * torch.rsqrt(u.square().mean((1, 2, 3), keepdim=True) + 1e-30), alpha=-0.1)
    for w, g in zip(ws, gs):
        w.add_(g.add(w, alpha=0.01), alpha=-0.1)

torch.manual_seed(0)
ws = [torch.randn(8, 3, 3, 3), torch.randn(16, 8, 3, 3)]
gs = [torch.randn_like(w) for w in ws]
eager = [[t.clone() for t in ws], [t.clone() for t in gs]]
with torch.no_grad():
    term_then_update(*eager)
    torch.compile(term_then_update)(ws, gs)
print(max(float((a - b).abs().max()) for a, b in zip(ws + gs, eager[0] + eager[1])))
'''


@pytest.mark.slow
@needs_compile
def test_inductor_outer_loop_local_buffer_fix(tmp_path):
    """Fix 4: inductor's CPU codegen raises KeyError on an in-place write whose buffer it
    considers making local (torch 2.13, 2.14); with the plugin the graph compiles and equals
    eager."""
    def run(prefix: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / str(len(prefix))),
                   TORCHINDUCTOR_FX_GRAPH_CACHE='0')  # compiled afresh, no cached kernels
        return subprocess.run([sys.executable, '-c', prefix + _TERM_THEN_UPDATE], env=env,
                              capture_output=True, text=True, cwd=REPO, timeout=600)

    if torch.__version__ < '2.15':  # torch.__version__ compares as a version
        upstream = run('')
        assert upstream.returncode != 0 and "KeyError: 'buf" in upstream.stderr
    fixed = run('import mmdet_eps\n')
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert float(fixed.stdout.split()[-1]) < 1e-5
