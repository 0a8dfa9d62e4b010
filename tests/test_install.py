"""Installing the plugin into a working mmdet stack changes nothing in it: pip resolves
``setup.py``'s requirements against what the lane's venv holds (torch, torchvision, numpy, mmcv
built against that torch) and would install mmdet-eps alone."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_pip_would_install_nothing_but_the_plugin():
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '--no-build-isolation', '--quiet',
         '--report', '-', '-e', str(REPO)],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    would_install = {item['metadata']['name'].lower(): item['metadata']['version']
                     for item in report['install']}
    assert would_install == {'mmdet-eps': '0.1.0'}


@pytest.mark.slow
def test_install_goes_on_without_the_fused_ops_when_they_do_not_build(tmp_path):
    """A compiler that fails (here ``false``) does not fail the install: it says so and the
    extension is simply absent (the layers then use torch ops; checked by hand with
    ``pip install --no-build-isolation -e .``, which goes on the same way)."""
    src = tmp_path / 'src'
    shutil.copytree(REPO / 'mmdet_eps', src / 'mmdet_eps',
                    ignore=shutil.ignore_patterns('*.so', '__pycache__'))
    for name in ('setup.py', 'README.md'):
        shutil.copy(REPO / name, src / name)
    env = dict(os.environ, CXX='false', CC='false')
    result = subprocess.run([sys.executable, 'setup.py', 'build_ext', '--inplace'],
                            capture_output=True, text=True, timeout=600, cwd=src, env=env)
    assert result.returncode == 0, result.stderr[-3000:]  # in place: what `pip install -e` does
    assert 'the fused CPU ops did not build' in result.stdout
    assert not list(src.glob('**/*.so'))
