"""Shared helpers for the optimizer tests: the paper's formulas by autograd, builders."""
import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from mmdet_eps.models.layers import CWNConv, WNConv, WSConv

CONVS = {'ws': WSConv, 'wn': WNConv, 'cwn': CWNConv}


def paper_regularizer(w: torch.Tensor, family: str, eps: float, lam: float) -> torch.Tensor:
    """R of Eq. 25 (WN), Eq. 26 (WS) and the CWN analogue, summed over filters."""
    f = w.reshape(w.shape[0], -1)
    n = f.shape[1]
    m = f.mean(1)
    if family == 'ws':
        v = f.std(1, unbiased=False)
        return (0.5 * lam * n * (m**2 + (v - eps)**2)).sum()
    if family == 'wn':
        return (0.5 * lam * (f.norm(dim=1) - eps)**2).sum()
    r = (f - m[:, None]).norm(dim=1)
    return (0.5 * lam * (n * m**2 + (r - eps)**2)).sum()


def autograd_grad(w: torch.Tensor, family: str, eps: float, lam: float) -> torch.Tensor:
    w = w.detach().clone().requires_grad_(True)
    paper_regularizer(w, family, eps, lam).backward()
    return w.grad


def build_optim_wrapper(model: nn.Module, optimizer: dict, eps_shift: dict = None,
                        wrapper: dict = None, **paramwise) -> OptimWrapper:
    """Build through the registry, as a config does; ``wrapper`` adds OptimWrapper options."""
    paramwise_cfg = dict(paramwise)
    if eps_shift is not None:
        paramwise_cfg['eps_shift'] = eps_shift
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(
        dict(type='EpsShiftedOptimWrapperConstructor',
             optim_wrapper_cfg=dict(type='OptimWrapper', optimizer=optimizer, **(wrapper or {})),
             paramwise_cfg=paramwise_cfg))
    return constructor(model)


class TinyNet(nn.Module):
    """A normalized conv, BN, a plain conv head and an fc: what a detector mixes."""

    def __init__(self, family: str = 'ws', channels: int = 8) -> None:
        super().__init__()
        self.conv = CONVS[family](3, channels, 3, padding=1, eps=0.)
        self.bn = nn.BatchNorm2d(channels)
        self.head = nn.Conv2d(channels, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.mean((2, 3)))
