"""Tests for tools/model_converters/convert_imagenet_ckpt.py: the three source formats,
architecture inference, refusals that leave no DST behind, --verify, and the command line."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmengine.runner import load_checkpoint

from mmdet_eps.utils import UnsafeCheckpointError
from tests.conftest import LANE, REPO, load_tool

cvt = load_tool('model_converters/convert_imagenet_ckpt')
TOOL = REPO / 'tools' / 'model_converters' / 'convert_imagenet_ckpt.py'
SIZE = 64


def _backbone(arch='resnet', depth=18, **kwargs):
    """A WS backbone (all four stage outputs) in eval mode."""
    cfg = dict(type='WSResNeXt' if arch == 'resnext' else 'WSResNet', depth=depth,
               out_indices=(0, 1, 2, 3), norm_eval=False, **kwargs)
    model = MODELS.build(cfg)
    model.eval()
    return model


def _source(arch='resnet', depth=18, **kwargs):
    """A random WS network standing in for an ImageNet model: BN statistics come from one batch
    (momentum 1), so its eval-mode outputs are finite and every tensor matters."""
    torch.manual_seed(depth)
    model = _backbone(arch, depth, **kwargs)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.1, 0.1)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, SIZE, SIZE))
    model.eval()
    return model


def _outputs(model):
    with torch.no_grad():
        return model(torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)))


def _classifier(model):
    """The backbone's tensors plus a 10-class ``fc``, torchvision names."""
    state = dict(model.state_dict())
    channels = state['layer4.0.conv1.weight'].shape[1] * 2
    state.update({'fc.weight': torch.randn(10, channels), 'fc.bias': torch.zeros(10)})
    return state


def save_pytorchinsight(model, path, numpy1_legacy=False):
    """The authors' layout; ``numpy1_legacy`` mimics a torch 1.x / numpy 1.x file."""
    state = {f'module.{k}': v for k, v in _classifier(model).items()}
    ckpt = dict(epoch=100, state_dict=state, acc=np.float64(76.1), best_acc=np.float64(76.3),
                optimizer=dict(state={0: dict(momentum_buffer=torch.zeros(3))},
                               param_groups=[dict(lr=0.1, momentum=0.9, params=[0])]))
    torch.save(ckpt, path, _use_new_zipfile_serialization=not numpy1_legacy)
    if numpy1_legacy and np.__version__ >= '2':  # numpy 1.x: numpy.core.multiarray.scalar
        data = path.read_bytes()
        assert b'numpy._core.multiarray' in data
        path.write_bytes(data.replace(b'numpy._core.multiarray', b'numpy.core.multiarray'))
    return path


def save_torchvision(model, path, wrap=None, drop_num_batches=False):
    state = {k: v for k, v in _classifier(model).items()
             if not (drop_num_batches and k.endswith('num_batches_tracked'))}
    torch.save(state if wrap is None else {wrap: state}, path)
    return path


def save_mmpretrain(model, path):
    state = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    state.update({f'head.{k}': v for k, v in _classifier(model).items() if k.startswith('fc.')})
    torch.save(dict(meta=dict(epoch=100, mmpretrain_version='1.2.0'), state_dict=state), path)
    return path


@pytest.fixture(scope='module')
def r18():
    return _source(depth=18)


@pytest.fixture(scope='module')
def r50():
    return _source(depth=50)


def _needs_no_allow_list(path) -> bool:
    """Whether torch's own weights-only loader, with nothing added to its allow-list, takes the
    file: what any other tool that reads the checkpoint can rely on."""
    if hasattr(torch.serialization, 'get_unsafe_globals_in_checkpoint'):  # torch >= 2.5
        return torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    torch.load(path, weights_only=True)  # torch < 2.4: no allow-list, its defaults only
    return True


def _check_dst(dst, src, source_model, arch='resnet', depth=18, **kwargs):
    """DST loads strictly into a fresh WS backbone, which then computes what the source does."""
    ours = _backbone(arch, depth, **kwargs)
    load_checkpoint(ours, str(dst), strict=True)
    ours.eval()
    for a, b in zip(_outputs(source_model), _outputs(ours)):
        assert torch.equal(a, b)
    assert _needs_no_allow_list(dst)
    ckpt = torch.load(dst, weights_only=True)
    assert set(ckpt) == {'state_dict', 'meta'}
    assert not any(k.startswith(('fc.', 'head.', 'module.', 'backbone.'))
                   for k in ckpt['state_dict'])
    meta = ckpt['meta']
    assert all(isinstance(v, (str, int)) for v in meta.values())
    assert meta['source'] == os.path.abspath(src)
    assert meta['sha256'] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert (meta['arch'], meta['depth']) == (arch, depth)
    assert meta['converter'].startswith('mmdet-eps ')
    assert sorted(p.name for p in dst.parent.iterdir()) == [dst.name]  # no temp files left
    return meta


@pytest.mark.parametrize('numpy1_legacy', [False, True])
def test_pytorchinsight(r18, tmp_path, capsys, numpy1_legacy):
    src = save_pytorchinsight(r18, tmp_path / 'ws_resnet18.pth.tar', numpy1_legacy)
    dst = tmp_path / 'out' / 'r18.pth'
    meta = cvt.convert(src, dst, depth=18, arch='resnet')
    assert meta == _check_dst(dst, src, r18)
    assert meta['format'] == 'pytorchinsight'
    assert 'groups' not in meta
    out = capsys.readouterr().out
    assert 'found ResNet-18 (pytorchinsight format)' in out and 'fc.weight' in out
    assert "'type': 'WSResNet', 'depth': 18" in out


@pytest.mark.parametrize('wrap,drop_num_batches', [(None, False), (None, True),
                                                   ('state_dict', False), ('model', False)])
def test_torchvision(r18, tmp_path, wrap, drop_num_batches):
    src = save_torchvision(r18, tmp_path / 'resnet18.pth', wrap, drop_num_batches)
    dst = tmp_path / 'out' / 'r18.pth'
    meta = cvt.convert(src, dst)
    assert _check_dst(dst, src, r18)['format'] == meta['format'] == 'torchvision'
    counters = torch.load(dst, weights_only=True)['state_dict']['bn1.num_batches_tracked']
    assert counters.dtype == torch.long and counters.item() == (0 if drop_num_batches else 1)


WS_CFG = "model = dict(backbone=dict(type='ResNet', depth=18, conv_cfg=dict(type='WSConv')))"


@pytest.mark.parametrize('fmt,cfg,stated,expected', [
    ('pytorchinsight', None, None, True), ('pytorchinsight', None, False, False),
    ('torchvision', None, None, False), ('torchvision', None, True, True),
    ('mmpretrain', WS_CFG, None, True), ('mmpretrain', WS_CFG.replace('WSConv', 'Conv2d'), None,
                                         False), ('mmpretrain', None, None, None)])
def test_meta_marks_what_the_weights_were_trained_with(r18, tmp_path, fmt, cfg, stated,
                                                       expected):
    """The guarded Pretrained init reads ``meta.trained_with_ws``: the authors' files are WS,
    torchvision's plain, an mmpretrain file tells by its saved config, else it is left out."""
    save = dict(pytorchinsight=save_pytorchinsight, torchvision=save_torchvision,
                mmpretrain=save_mmpretrain)[fmt]
    src = save(r18, tmp_path / 'src.pth')
    if cfg is not None:
        ckpt = torch.load(src, weights_only=True)
        ckpt['meta']['cfg'] = cfg
        torch.save(ckpt, src)
    dst = tmp_path / 'dst.pth'
    meta = cvt.convert(src, dst, trained_with_ws=stated)
    assert meta.get('trained_with_ws', 'absent') == ('absent' if expected is None else expected)
    assert torch.load(dst, weights_only=True)['meta'] == meta


def test_mmpretrain_resnet50(r50, tmp_path):
    src = save_mmpretrain(r50, tmp_path / 'resnet50_8xb32_in1k.pth')
    dst = tmp_path / 'out' / 'r50.pth'
    meta = cvt.convert(src, dst, depth=50, arch='resnet', verify=True, input_size=SIZE)
    assert _check_dst(dst, src, r50, depth=50)['format'] == meta['format'] == 'mmpretrain'


@pytest.mark.parametrize('groups,base_width', [(8, 4), pytest.param(4, 16, marks=pytest.mark.slow)])
def test_resnext_inferred(tmp_path, capsys, groups, base_width):
    source = _source('resnext', 50, groups=groups, base_width=base_width)
    src = save_pytorchinsight(source, tmp_path / 'ws_resnext50.pth.tar')
    dst = tmp_path / 'out' / 'x50.pth'
    meta = cvt.convert(src, dst, depth=50, arch='resnext', verify=True, input_size=SIZE)
    _check_dst(dst, src, source, 'resnext', 50, groups=groups, base_width=base_width)
    assert (meta['groups'], meta['base_width']) == (groups, base_width)
    out = capsys.readouterr().out
    assert f'found ResNeXt-50 ({groups}x{base_width}d)' in out and 'verify ok' in out


@pytest.fixture(scope='module')
def x50():
    return _source('resnext', 50, groups=32, base_width=4)


def test_torchvision_resnext(x50, tmp_path):
    """torchvision's resnext*_32x4d layout, with the width configs/cascade_rcnn_ws_x101.py
    expects stated."""
    src = save_torchvision(x50, tmp_path / 'resnext50_32x4d.pth')
    dst = tmp_path / 'out' / 'x50.pth'
    meta = cvt.convert(src, dst, arch='resnext', groups=32, base_width=4, verify=True,
                       input_size=SIZE)
    _check_dst(dst, src, x50, 'resnext', 50, groups=32, base_width=4)
    assert (meta['format'], meta['groups'], meta['base_width']) == ('torchvision', 32, 4)


@pytest.mark.parametrize('name,arch,depth,kwargs', [
    ('resnet18', 'resnet', 18, {}), ('resnet50', 'resnet', 50, {}),
    ('resnext50_32x4d', 'resnext', 50, dict(groups=32, base_width=4))])
def test_real_torchvision_models(tmp_path, name, arch, depth, kwargs):
    """torchvision's own ResNet / ResNeXt classes (their state dicts as ``torch.save`` writes
    them): every backbone tensor lands in DST under its name and loads strictly."""
    models = pytest.importorskip('torchvision.models', reason=LANE)
    torch.manual_seed(0)
    source = getattr(models, name)(weights=None).state_dict()
    src = tmp_path / f'{name}.pth'
    torch.save(source, src)
    dst = tmp_path / 'out' / f'{name}.pth'
    meta = cvt.convert(src, dst, arch=arch, verify=True, input_size=SIZE, **kwargs)
    assert (meta['format'], meta['arch'], meta['depth']) == ('torchvision', arch, depth)
    state = torch.load(dst, weights_only=True)['state_dict']
    backbone = {k: v for k, v in source.items() if not k.startswith('fc.')}
    assert state.keys() == backbone.keys()
    assert all(torch.equal(state[k], v) for k, v in backbone.items())
    load_checkpoint(_backbone(arch, depth, **kwargs), str(dst), strict=True)


@pytest.mark.parametrize('kwargs,expected', [(dict(groups=64), 'groups=64 was expected'),
                                             (dict(base_width=8), 'base_width=8 was expected')])
def test_wrong_resnext_width_refused(x50, tmp_path, kwargs, expected):
    """A detector's Pretrained init would only warn about mismatched shapes and keep them
    random: the expected width is checked before anything is written."""
    src = save_torchvision(x50, tmp_path / 'src.pth')
    with pytest.raises(cvt.ConversionError, match=expected) as info:
        cvt.convert(src, tmp_path / 'out' / 'dst.pth', arch='resnext', **kwargs)
    assert 'holds ResNeXt-50 (32x4d)' in str(info.value)
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('conv', ['WSConv', 'CWNConv'])
def test_verify_passes(r18, tmp_path, capsys, conv):
    src = save_pytorchinsight(r18, tmp_path / 'src.pth')
    cvt.convert(src, tmp_path / 'out' / 'r18.pth', verify=True, conv=conv, input_size=SIZE)
    assert f'[4/4] verifying against the source network (conv={conv}' in capsys.readouterr().out


def test_verify_catches_a_missing_tensor(r18, tmp_path):
    """mmengine's Pretrained init loads non-strictly: a tensor missing from DST would silently
    stay randomly initialised, and only the output comparison notices."""
    src = save_torchvision(r18, tmp_path / 'src.pth')
    dst = tmp_path / 'r18.pth'
    cvt.convert(src, dst)
    ckpt = torch.load(dst, weights_only=True)
    del ckpt['state_dict']['layer4.1.conv2.weight']
    torch.save(ckpt, dst)
    reference, _, _ = cvt.extract_backbone(torch.load(src, weights_only=True))
    spec = cvt.infer_arch(reference)
    with pytest.raises(cvt.VerificationError, match='differs from the source network'):
        cvt.verify_checkpoint(reference, str(dst), spec, input_size=SIZE)


@pytest.mark.parametrize('kwargs,expected', [(dict(depth=50), 'depth=50 was expected'),
                                             (dict(arch='resnext'), 'arch=resnext was expected'),
                                             (dict(groups=32), 'groups=32 was expected')])
def test_wrong_target_refused(r18, tmp_path, kwargs, expected):
    src = save_pytorchinsight(r18, tmp_path / 'src.pth')
    out = tmp_path / 'out'
    with pytest.raises(cvt.ConversionError, match=expected) as info:
        cvt.convert(src, out / 'dst.pth', **kwargs)
    assert 'holds ResNet-18 (arch=resnet, depth=18)' in str(info.value)
    assert not out.exists() or not any(out.iterdir())


def test_unreadable_files_refused(tmp_path):
    good = save_torchvision(_backbone(), tmp_path / 'good.pth')
    cases = {
        'truncated.pth': good.read_bytes()[:good.stat().st_size // 2],
        'notes.txt': b'these are not weights\n',
        'empty.pth': b'',
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(cvt.ConversionError, match='not a readable PyTorch checkpoint'):
            cvt.convert(tmp_path / name, tmp_path / 'out' / 'dst.pth')
    with pytest.raises(FileNotFoundError):
        cvt.convert(tmp_path / 'absent.pth', tmp_path / 'out' / 'dst.pth')
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('obj,message', [
    ({'epoch': 1, 'state_dict': {'module.fc.weight': torch.zeros(2, 2)}}, 'no ResNet weights'),
    ({'conv1.weight': torch.zeros(64, 3, 7, 7), 'layer1.0.conv1.weight': torch.zeros(64, 64, 3, 3),
      'layer1.0.conv2.weight': torch.zeros(64, 64, 3, 3)}, 'match no ResNet depth'),
    ([torch.zeros(3)], 'expected a dict of tensors'),
])
def test_not_a_resnet_refused(tmp_path, obj, message):
    torch.save(obj, tmp_path / 'src.pth')
    with pytest.raises(cvt.ConversionError, match=message):
        cvt.convert(tmp_path / 'src.pth', tmp_path / 'out' / 'dst.pth')
    assert not (tmp_path / 'out').exists()


def test_unexpected_modules_refused(r18, tmp_path):
    """A variant with extra modules (e.g. the authors' SE/SGE nets) is not silently truncated."""
    state = _classifier(r18)
    state['layer1.0.se.fc1.weight'] = torch.zeros(4, 64)
    torch.save(state, tmp_path / 'src.pth')
    with pytest.raises(cvt.ConversionError, match=r'unexpected: layer1\.0\.se\.fc1\.weight'):
        cvt.convert(tmp_path / 'src.pth', tmp_path / 'dst.pth')
    assert not (tmp_path / 'dst.pth').exists()


def _touch(path):
    Path(path).touch()


class _Payload:
    """Unpickling this (with weights_only=False) creates the file ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return _touch, (self.path, )


@pytest.mark.parametrize('zipfile', [True, False])
def test_pickled_code_refused_without_running(tmp_path, zipfile):
    marker = tmp_path / 'marker'
    src = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'conv1.weight': torch.zeros(1)}, 'x': _Payload(marker)}, src,
               _use_new_zipfile_serialization=zipfile)
    with pytest.raises(UnsafeCheckpointError, match='nothing from it was executed'):
        cvt.convert(src, tmp_path / 'out' / 'dst.pth')
    assert not marker.exists()
    assert not (tmp_path / 'out').exists()
    torch.load(src, weights_only=False)  # the trap is real: an unsafe load runs the payload
    assert marker.exists()


def test_existing_dst_needs_force(r18, tmp_path):
    src = save_torchvision(r18, tmp_path / 'src.pth')
    dst = tmp_path / 'dst.pth'
    dst.write_bytes(b'old')
    with pytest.raises(FileExistsError, match='--force'):
        cvt.convert(src, dst)
    assert dst.read_bytes() == b'old'
    with pytest.raises(cvt.ConversionError, match='must not be SRC'):
        cvt.convert(src, src, force=True)
    cvt.convert(src, dst, force=True)
    assert torch.load(dst, weights_only=True)['meta']['format'] == 'torchvision'


def _cli(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli(r18, tmp_path):
    src = save_pytorchinsight(r18, tmp_path / 'src.pth.tar')
    dst = tmp_path / 'out' / 'r18.pth'
    done = _cli(src, dst, '--depth', '18', '--arch', 'resnet', '--verify', '--input-size', SIZE)
    assert done.returncode == 0, done.stderr
    for line in ('[1/4] loading', 'found ResNet-18', '[2/4] converting 120 tensors',
                 '[3/4] saving 120 tensors', 'verify ok', f'wrote {dst}'):
        assert line in done.stdout
    assert torch.load(dst, weights_only=True)['meta']['format'] == 'pytorchinsight'

    refused = _cli(src, tmp_path / 'other.pth', '--depth', '50', '--groups', '32',
                   '--base-width', '4')
    assert refused.returncode == 2
    assert 'ResNet-18' in refused.stderr
    assert 'depth=50, groups=32, base_width=4 was expected' in refused.stderr
    assert not (tmp_path / 'other.pth').exists()
