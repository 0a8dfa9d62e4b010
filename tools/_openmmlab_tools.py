"""Run one of an OpenMMLab package's own command-line tools with mmdet-eps registered first.

mmdet and mmpretrain ship their ``tools/`` inside the wheel (``<package>/.mim/tools``, what
``mim train`` runs), so our train/test scripts are those scripts, flag for flag, rather than
copies of them.
"""
import importlib.util
import os.path as osp
import runpy
import sys

import torch.distributed as torch_dist

import mmdet_eps  # noqa: F401  registers our modules and safe checkpoint loading


def run_tool(package: str, name: str) -> None:
    """Execute ``<package>/.mim/tools/<name>`` (package: 'mmdet' or 'mmpretrain') as
    ``__main__`` with the current ``sys.argv``, then release the distributed process group if
    the tool started one."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        extra = " (pip install -e '.[pretrain]')" if package == 'mmpretrain' else ''
        raise ModuleNotFoundError(f'{package} is not installed{extra}')
    path = osp.join(spec.submodule_search_locations[0], '.mim', 'tools', name)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} is missing: reinstall {package} from its wheel')
    sys.argv[0] = path
    try:
        runpy.run_path(path, run_name='__main__')
    except BaseException:
        _release_process_group(synchronize=False)  # peers may be gone: no collective call
        raise
    _release_process_group(synchronize=True)


def _release_process_group(synchronize: bool) -> None:
    """mmengine never destroys the process group; a gloo group alive at interpreter exit, or
    torn down by one rank while a peer still talks to it, can abort the process ("terminate
    called without an active exception"). After a clean run all ranks meet at a barrier first."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return
    if synchronize:
        torch_dist.barrier()
    torch_dist.destroy_process_group()
