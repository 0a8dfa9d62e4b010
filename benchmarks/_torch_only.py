"""Run the package's layers and regularizer with torch alone (the GPU check machine has no
mmcv / mmengine / mmdet), plus a torchvision-style ResNet that takes any conv class.

:func:`load_package` imports ``mmdet_eps`` normally when mmdet is importable. Otherwise (or with
``MMDET_EPS_BENCH_TORCH_ONLY=1``, which also blocks mmcv/mmengine/mmdet imports so the path can
be tried on a machine that has them) it imports only the torch-only files of the package:
``models/layers/{norm_family,filter_stats,filter_normalize,normalized_conv,filter_group,ws_conv,
wn_conv}.py`` and ``engine/optimizers/eps_shifted_regularizer.py``, behind stub parent packages,
with a stub ``mmdet.registry.MODELS`` whose ``register_module()`` returns the class unchanged and
stand-in classes for mmcv's ``ConvWS2d`` / ``ConvAWS2d`` (which no model here contains).
The code that runs is the package's own code, file for file.
"""
import importlib
import importlib.abc
import os
import os.path as osp
import sys
import types
from typing import Callable, List, Optional, Type

import torch
from torch import nn

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
BLOCKED = ('mmcv', 'mmengine', 'mmdet')
ENV_FLAG = 'MMDET_EPS_BENCH_TORCH_ONLY'


class _Blocker(importlib.abc.MetaPathFinder):
    """Make ``import mmcv`` / ``mmengine`` / ``mmdet`` fail, as on the GPU machine."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split('.')[0] in BLOCKED:
            raise ImportError(f'{fullname} blocked by {ENV_FLAG}=1')
        return None


def torch_only_requested() -> bool:
    return os.environ.get(ENV_FLAG, '') not in ('', '0')


def mmdet_available() -> bool:
    if torch_only_requested():
        return False
    try:
        import mmcv.ops  # noqa: F401
        import mmdet  # noqa: F401
    except Exception:  # ImportError, or a broken mmcv build
        return False
    return True


class _StubRegistry:
    """``MODELS.register_module()`` that registers nothing."""

    def register_module(self, *args, **kwargs):
        if args and isinstance(args[0], type):
            return args[0]
        return lambda cls: cls


def _stub_package(name: str, path: Optional[str]) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [path] if path else []
    module.__package__ = name
    sys.modules[name] = module
    return module


_PACKAGE = None


def load_package() -> types.SimpleNamespace:
    """The package's layers and regularizer: ``ns.WSConv``, ``ns.CWNConv``, ``ns.WNConv``,
    ``ns.regularizer`` (the module), ``ns.filter_stats`` and ``ns.filter_normalize`` (modules),
    ``ns.group_normalized_convs``, ``ns.torch_only`` (bool)."""
    global _PACKAGE
    if _PACKAGE is not None:
        return _PACKAGE
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    if mmdet_available():
        from mmdet.utils import register_all_modules

        import mmdet_eps  # noqa: F401  registers everything
        register_all_modules(init_default_scope=True)
        from mmdet_eps.engine.optimizers import eps_shifted_regularizer as regularizer
        from mmdet_eps.models.layers import (
            CWNConv,
            WNConv,
            WSConv,
            filter_normalize,
            filter_stats,
            group_normalized_convs,
        )
        _PACKAGE = types.SimpleNamespace(WSConv=WSConv, CWNConv=CWNConv, WNConv=WNConv,
                                         regularizer=regularizer, filter_stats=filter_stats,
                                         group_normalized_convs=group_normalized_convs,
                                         filter_normalize=filter_normalize, torch_only=False)
        return _PACKAGE
    if torch_only_requested() and not any(isinstance(f, _Blocker) for f in sys.meta_path):
        for name in list(sys.modules):
            if name.split('.')[0] in BLOCKED + ('mmdet_eps', ):
                del sys.modules[name]
        sys.meta_path.insert(0, _Blocker())
    # stub mmdet.registry (only its MODELS.register_module is used by the layer files)
    mmdet = types.ModuleType('mmdet')
    mmdet.__path__ = []
    registry = types.ModuleType('mmdet.registry')
    registry.MODELS = _StubRegistry()
    mmdet.registry = registry
    sys.modules['mmdet'], sys.modules['mmdet.registry'] = mmdet, registry
    _stub_package('mmengine', None)  # the conv layers register in mmengine's root registry
    sys.modules['mmengine.registry'] = registry
    conv_ws = types.ModuleType('mmcv.cnn.bricks.conv_ws')
    conv_ws.ConvWS2d = type('ConvWS2d', (nn.Conv2d, ), {})
    conv_ws.ConvAWS2d = type('ConvAWS2d', (nn.Conv2d, ), {})
    for name in ('mmcv', 'mmcv.cnn', 'mmcv.cnn.bricks'):
        _stub_package(name, None)
    sys.modules['mmcv.cnn.bricks.conv_ws'] = conv_ws
    pkg = osp.join(REPO, 'mmdet_eps')
    _stub_package('mmdet_eps', pkg)
    _stub_package('mmdet_eps.models', osp.join(pkg, 'models'))
    layers = _stub_package('mmdet_eps.models.layers', osp.join(pkg, 'models', 'layers'))
    _stub_package('mmdet_eps.utils', osp.join(pkg, 'utils'))  # only op_count is torch-only
    _stub_package('mmdet_eps.engine', osp.join(pkg, 'engine'))
    _stub_package('mmdet_eps.engine.optimizers', osp.join(pkg, 'engine', 'optimizers'))
    for name in ('norm_family', 'filter_stats', 'filter_normalize', 'normalized_conv',
                 'filter_group', 'ws_conv', 'wn_conv'):  # the package __init__'s names
        module = importlib.import_module(f'mmdet_eps.models.layers.{name}')
        for attr in getattr(module, '__all__', None) or dir(module):
            if not attr.startswith('_'):
                setattr(layers, attr, getattr(module, attr))
    regularizer = importlib.import_module('mmdet_eps.engine.optimizers.eps_shifted_regularizer')
    stats = sys.modules['mmdet_eps.models.layers.filter_stats']
    _PACKAGE = types.SimpleNamespace(WSConv=layers.WSConv, CWNConv=layers.CWNConv,
                                     WNConv=layers.WNConv, regularizer=regularizer,
                                     filter_stats=stats,
                                     filter_normalize=layers.filter_normalize,
                                     group_normalized_convs=layers.group_normalized_convs,
                                     torch_only=True)
    return _PACKAGE


# --------------------------------------------------------------------------- anchors

class StdConv2d(nn.Conv2d):
    """timm-style weight standardization (the anchor, not the package's layer): the weight viewed
    as ``(1, C_out, n)`` through ``F.batch_norm(training=True)``: one fused kernel each way,
    biased variance, eps inside the sqrt."""

    def __init__(self, *args, eps: float = 1e-6, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = nn.functional.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
            momentum=0., eps=self.eps).reshape_as(self.weight)
        return self._conv_forward(x, w, self.bias)


class MMCVStyleConvWS2d(nn.Conv2d):
    """A copy of mmcv 2.1's ``conv_ws_2d`` (per-filter mean and unbiased std, eps on the std),
    used as the mmcv anchor where mmcv is not installed."""

    def __init__(self, *args, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c_in = self.weight.size(0)
        weight_flat = self.weight.view(c_in, -1)
        mean = weight_flat.mean(dim=1, keepdim=True).view(c_in, 1, 1, 1)
        std = weight_flat.std(dim=1, keepdim=True).view(c_in, 1, 1, 1)
        weight = (self.weight - mean) / (std + self.eps)
        return self._conv_forward(x, weight, self.bias)


# --------------------------------------------------------------------------- ResNet

class Bottleneck(nn.Module):
    """torchvision / mmdet ``style='pytorch'`` bottleneck (stride on the 3x3 conv)."""
    expansion = 4

    def __init__(self, conv: Type[nn.Conv2d], inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = conv(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class TorchResNet(nn.Module):
    """ResNet-50/101/152 backbone returning the four stage outputs, like mmdet's ResNet with
    ``out_indices=(0, 1, 2, 3)``; ``conv`` builds every conv (stem, blocks, downsample),
    ``width`` is the stem's and first stage's width (mmdet's ``base_channels``)."""

    arch = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

    def __init__(self, depth: int = 50, conv: Type[nn.Conv2d] = nn.Conv2d,
                 width: int = 64) -> None:
        super().__init__()
        self.conv1 = conv(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes, layers = width, []
        for i, blocks in enumerate(self.arch[depth]):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            downsample = nn.Sequential(conv(inplanes, planes * 4, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
            stage = [Bottleneck(conv, inplanes, planes, stride, downsample)]
            inplanes = planes * 4
            stage += [Bottleneck(conv, inplanes, planes) for _ in range(1, blocks)]
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs


def quiet_warnings() -> None:
    """The package warns on tiny-fan-in normalized convs; benchmarks build none, but silence
    numpy's subnormal warning that flush-denormal triggers."""
    import warnings
    warnings.filterwarnings('ignore', message='The value of the smallest subnormal')


ConvFactory = Callable[..., nn.Conv2d]
