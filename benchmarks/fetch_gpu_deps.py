"""Download what ``benchmarks/gpu_e2e.sh`` installs on the GPU machine, which reaches no registry.

The GPU machine has Python 3.12 with CUDA torch, torchvision, numpy, opencv, matplotlib, scipy,
rich, pyyaml, nvcc and ninja, but no OpenMMLab package. This script, run where PyPI is reachable
(with the project's venv: mmcv's sdist needs ``pkg_resources`` to prepare its metadata), writes

- ``<dest>/wheels/``: the missing packages as wheels for CPython 3.12 on x86-64 Linux, pinned to
  the versions ``make setup`` installs here, without their dependencies (the list is complete);
- ``<dest>/mmcv-<version>.tar.gz``: mmcv's source, which ``gpu_e2e.sh`` builds there with CUDA;
- ``<dest>/manifest.json``: file names, sizes and sha256.

``<dest>`` (default ``.gpu_deps``, git-ignored) then travels with the working tree: name it in the
device call's ``carry`` list. The total must stay under the 64 MiB a call carries.

    .venv/bin/python benchmarks/fetch_gpu_deps.py [--dest .gpu_deps] [--check]
"""
import argparse
import importlib.metadata
import json
import os
import os.path as osp
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

from mmdet_eps.utils import sha256sum

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MMCV_VERSION = '2.1.0'
#: Packages the GPU image lacks, at the versions this project's venv uses. ``setuptools`` < 81 is
#: carried because mmcv's build and mmengine's ``mmdet::`` config paths need ``pkg_resources``.
WHEELS: Dict[str, str] = {
    'mmengine': '0.10.7',
    'mmdet': '3.3.0',
    'pycocotools': '2.0.11',
    'shapely': '2.2.0',
    'terminaltables': '3.1.10',
    'addict': '2.4.0',
    'yapf': '0.43.0',
    'platformdirs': '4.14.9',
    'termcolor': '3.3.0',
    'setuptools': '80.10.2',
}
#: The GPU machine's interpreter and platform (KINDS.md of the device tool).
TARGET = ['--python-version', '3.12', '--implementation', 'cp', '--abi', 'cp312',
          '--platform', 'manylinux_2_28_x86_64', '--platform', 'manylinux_2_17_x86_64',
          '--platform', 'manylinux2014_x86_64', '--platform', 'any']
CARRY_LIMIT = 64 * 1024 * 1024


def local_mismatches(pins: Dict[str, str]) -> List[str]:
    """Pins that differ from what this interpreter has installed (an outdated table)."""
    out = []
    for name, version in pins.items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if have != version:
            out.append(f'{name}: pinned {version}, installed here {have}')
    return out


def pip_download(args: Sequence[str], dest: str) -> None:
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--disable-pip-version-check',
           '-d', dest, *args]
    print('$', ' '.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def fetch(dest: str, pins: Dict[str, str], mmcv_version: str) -> Dict:
    """Download the wheels and mmcv's sdist into ``dest``; return the manifest."""
    wheels = osp.join(dest, 'wheels')
    os.makedirs(wheels, exist_ok=True)
    pip_download(['--only-binary=:all:', *TARGET, *(f'{n}=={v}' for n, v in pins.items())],
                 wheels)
    # pip prepares an sdist's metadata even to download it; mmcv's setup.py imports
    # pkg_resources, so use this interpreter's setuptools (< 81) instead of an isolated build.
    pip_download(['--no-binary=:all:', '--no-build-isolation', f'mmcv=={mmcv_version}'], dest)
    for name in os.listdir(wheels):  # a wheel from an older pin would be installed twice
        dist, version = name.split('-')[:2]
        if pins.get(dist.lower().replace('_', '-')) != version:
            os.remove(osp.join(wheels, name))
    files = []
    for root in (dest, wheels):
        for name in sorted(os.listdir(root)):
            path = osp.join(root, name)
            if osp.isfile(path) and name != 'manifest.json':
                files.append(dict(path=osp.relpath(path, dest), bytes=osp.getsize(path),
                                  sha256=sha256sum(path)))
    got = {f['path'].split('/')[-1].split('-')[0].lower().replace('_', '-') for f in files}
    missing = sorted(set(pins) - got) + ([] if 'mmcv' in got else ['mmcv'])
    if missing:
        raise SystemExit(f'not downloaded: {missing}')
    total = sum(f['bytes'] for f in files)
    manifest = dict(mmcv=mmcv_version, wheels=pins, files=files, total_bytes=total)
    with open(osp.join(dest, 'manifest.json'), 'w') as f:
        json.dump(manifest, f, indent=1)
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--dest', default=osp.join(REPO, '.gpu_deps'),
                        help='folder to fill (default: .gpu_deps in the repository, git-ignored)')
    parser.add_argument('--check', action='store_true',
                        help='only compare the pinned versions with this interpreter\'s packages')
    args = parser.parse_args(argv)
    mismatches = local_mismatches(WHEELS)
    for line in mismatches:
        print(f'warning: {line}', flush=True)
    if args.check:
        return 1 if mismatches else 0
    manifest = fetch(args.dest, WHEELS, MMCV_VERSION)
    for f in manifest['files']:
        print(f'{f["bytes"] / 2**20:7.2f} MiB  {f["path"]}')
    total = manifest['total_bytes']
    print(f'{total / 2**20:7.2f} MiB  total in {args.dest} (carry limit 64 MiB with the tree)')
    if total > CARRY_LIMIT:
        print('error: more than a device call can carry', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
