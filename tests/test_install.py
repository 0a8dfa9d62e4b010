"""Installing the plugin into a working mmdet stack changes nothing in it: pip resolves
``setup.py``'s requirements against what the lane's venv holds (torch, torchvision, numpy, mmcv
built against that torch) and would install mmdet-eps alone."""
import json
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
