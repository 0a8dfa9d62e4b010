"""Run one of mmdet's own command-line tools with mmdet-eps registered first.

mmdet ships its ``tools/`` inside the wheel (``mmdet/.mim/tools``, what ``mim train`` runs), so
our train/test scripts are those scripts, flag for flag, rather than copies of them.
"""
import os.path as osp
import runpy
import sys

import mmdet
import torch.distributed as torch_dist

import mmdet_eps  # noqa: F401  registers our modules and safe checkpoint loading


def run_mmdet_tool(name: str) -> None:
    """Execute ``mmdet/.mim/tools/<name>`` as ``__main__`` with the current ``sys.argv``, then
    release the distributed process group if the tool started one."""
    path = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', name)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} is missing: reinstall mmdet 3.3 from its wheel')
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
