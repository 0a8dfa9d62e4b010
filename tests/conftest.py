"""Shared fixtures: mmdet's default scope, and the tools/ folder importable by tests."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.torch_version import TorchVersion

REPO = Path(__file__).resolve().parents[1]
#: Where a test skipped for want of torchvision or mmpretrain runs (README: tested torch lines).
LANE = 'runs in the legacy, current and oldest lanes (make test-matrix)'


def needs_torch(version: str, feature: str) -> pytest.MarkDecorator:
    """Skip a test of ``feature`` on torch older than ``version``: the default and current
    lanes run it (README: supported torch lines)."""
    return pytest.mark.skipif(
        TorchVersion(torch.__version__) < version,
        reason=f'{feature} needs torch >= {version}: runs in the default and current lanes')


#: torch.compile and torch.export of the plugin's models (README: supported torch lines).
needs_compile = needs_torch('2.4', 'torch.compile / torch.export')


def _dynamo_supported() -> bool:
    from torch._dynamo.eval_frame import check_if_dynamo_supported
    try:
        check_if_dynamo_supported()
    except RuntimeError:
        return False
    return True


#: Tests that run dynamo at all: torch 2.0 has no ``torch.compile`` on Python 3.11.
needs_dynamo = pytest.mark.skipif(
    not _dynamo_supported(),
    reason='torch.compile is unavailable on this torch and Python (torch 2.0 compiles on '
           'Python <= 3.10 only): runs in the default, legacy and current lanes')


def load_script(path: str):
    """Import the script ``REPO/<path>`` (e.g. ``'benchmarks/b2_optimizer_step.py'``) as a
    module: tools/ and benchmarks/ are not packages."""
    spec = importlib.util.spec_from_file_location(
        path[:-len('.py')].replace('/', '_'), REPO / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_tool(name: str):
    """Import ``tools/<name>.py`` (e.g. ``'misc/make_toy_coco'``) as a module."""
    return load_script(f'tools/{name}.py')


@pytest.fixture(autouse=True, scope='session')
def mmdet_scope():
    """Register mmdet and mmdet-eps and make 'mmdet' the default registry scope."""
    from mmdet.utils import register_all_modules

    import mmdet_eps  # noqa: F401
    register_all_modules(init_default_scope=True)
    torch.set_num_threads(2)


@pytest.fixture(scope='module')
def tiny_coco(tmp_path_factory) -> Path:
    """A toy COCO set of 4 train and 2 val images (tools/misc/make_toy_coco.py)."""
    root = tmp_path_factory.mktemp('data') / 'toy_coco'
    load_tool('misc/make_toy_coco').make_toy_coco(root, num_train=4, num_val=2, seed=3)
    return root
