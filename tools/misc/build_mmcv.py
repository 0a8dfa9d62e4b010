#!/usr/bin/env python
"""Build and install mmcv (with ops) against the torch of this interpreter, cached per torch line.

pip's wheel cache keys a locally built mmcv wheel by its sdist only, so a venv with another torch
would silently reuse a wheel compiled against the first one. This keeps one wheel per torch line
(``<cache>/torch<major>.<minor>/mmcv-*.whl``): the first run builds it (10-15 minutes on 2
cores), later runs install it in seconds.

mmcv 2.1.0's ``setup.py`` hard-codes ``-std=c++17``, and torch >= 2.14's headers require C++20
(``#error C++20 or later compatible compiler is required to use ATen``). For such a torch the
build runs on a throw-away copy of the sdist whose flag is raised to ``-std=c++20``; nothing
installed is edited.

    python tools/misc/build_mmcv.py [--version 2.1.0] [--cache ~/.cache/mmdet-eps/mmcv]
"""
import argparse
import glob
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import List, Optional, Sequence

import torch
from torch.utils.cpp_extension import include_paths


def torch_line() -> str:
    return 'torch' + '.'.join(torch.__version__.split('+')[0].split('.')[:2])


def needs_cxx20() -> bool:
    """Whether torch's headers refuse anything older than C++20."""
    for root in include_paths():
        header = osp.join(root, 'ATen', 'ATen.h')
        if osp.exists(header):
            with open(header) as f:
                return 'C++20 or later' in f.read()
    return False


def pip(*args: str) -> None:
    subprocess.run([sys.executable, '-m', 'pip', *args], check=True)


def raise_cxx_std(setup_py: str) -> int:
    """``-std=c++14/17`` -> ``-std=c++20`` in mmcv's setup.py; returns how many were changed."""
    with open(setup_py) as f:
        text = f.read()
    text, count = re.subn(r"-std=c\+\+1[47]", '-std=c++20', text)
    with open(setup_py, 'w') as f:
        f.write(text)
    return count


def build_wheel(version: str, out_dir: str) -> str:
    """Build mmcv's wheel with ops into ``out_dir`` (atomically: a failed build leaves none)."""
    with tempfile.TemporaryDirectory() as tmp:
        pip('download', '--no-deps', '--no-build-isolation', '--no-binary', 'mmcv', '-d', tmp,
            f'mmcv=={version}')
        (sdist, ) = glob.glob(osp.join(tmp, 'mmcv-*.tar.gz'))
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter='data')
        src = osp.join(tmp, f'mmcv-{version}')
        if needs_cxx20():
            print(f'{torch.__version__} needs C++20: building mmcv with -std=c++20 '
                  f'({raise_cxx_std(osp.join(src, "setup.py"))} flags raised)', flush=True)
        env = dict(os.environ, MMCV_WITH_OPS='1')
        wheels = osp.join(tmp, 'wheels')
        subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                        '-w', wheels, src], check=True, env=env)
        (wheel, ) = glob.glob(osp.join(wheels, 'mmcv-*.whl'))
        os.makedirs(out_dir, exist_ok=True)
        target = osp.join(out_dir, osp.basename(wheel))
        shutil.copyfile(wheel, target + '.partial')
        os.replace(target + '.partial', target)
        return target


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--version', default='2.1.0')
    parser.add_argument('--cache', default=osp.expanduser('~/.cache/mmdet-eps/mmcv'),
                        help='wheels are kept under CACHE/torch<major>.<minor>/')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    out_dir = osp.join(args.cache, torch_line())
    found: List[str] = sorted(glob.glob(osp.join(out_dir, f'mmcv-{args.version}-*.whl')))
    if found:
        print(f'mmcv {args.version} for {torch_line()}: cached {found[-1]}', flush=True)
        wheel = found[-1]
    else:
        print(f'Building mmcv {args.version} with ops for {torch_line()} (10-15 minutes once)...',
              flush=True)
        wheel = build_wheel(args.version, out_dir)
    pip('install', wheel)  # with mmcv's own dependencies
    return 0


if __name__ == '__main__':
    sys.exit(main())
