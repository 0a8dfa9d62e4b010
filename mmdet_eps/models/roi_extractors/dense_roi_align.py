"""RoIAlign as two dense matrix products, for small feature maps on CPU.

Bilinear sampling and the average over a bin's samples are separable, so for RoI ``r`` of image
``b``: ``out[r, c] = Ay[r] @ F[b, c] @ Ax[r].T`` with per-RoI interpolation matrices ``Ay``
``(out_h, H)`` and ``Ax`` ``(out_w, W)``. Built with mmcv's sampling rules (sample positions,
adaptive ``sampling_ratio=0``, ``aligned``, border clamping, zero outside ``[-1, size]``), the
result equals ``mmcv.ops.RoIAlign`` to float rounding, and forward and backward are a few matrix
multiplications instead of mmcv's scalar CPU loops (timed by benchmark B7, docs/benchmarks.md).
The products cost ``O(R · out · H · W · C)``, so on large maps (more than ``max_dense_area``
cells, e.g. COCO's P2), for max pooling and with ``use_torchvision`` the layer calls mmcv's op.
mmdet only looks RoI layers up in ``mmcv.ops``: select it through ``RegistryRoIExtractor``.
"""
from typing import Tuple, Union

import torch
from mmcv.ops import RoIAlign
from mmdet.registry import MODELS
from torch import Tensor


def _interp_matrix(start: Tensor, length: Tensor, out: int, size: int,
                   sampling_ratio: int) -> Tensor:
    """``(R, out, size)`` weights that average the bilinear samples of each bin along one axis
    (mmcv's ``bilinear_interpolate``, restricted to that axis)."""
    num_rois = start.shape[0]
    bin_len = length / out
    if sampling_ratio > 0:
        grid = torch.full_like(start, sampling_ratio)
    else:  # adaptive: ceil(roi length / out) samples per bin (none for an empty RoI)
        grid = torch.ceil(bin_len).clamp_min(0)
    max_grid = max(int(grid.max()), 1) if num_rois else 1
    i = torch.arange(max_grid, dtype=start.dtype, device=start.device)
    ph = torch.arange(out, dtype=start.dtype, device=start.device)
    # (R, out, S): position of sample i of bin ph; samples beyond the RoI's own grid weigh 0
    pos = (start[:, None, None] + ph[None, :, None] * bin_len[:, None, None]
           + (i[None, None] + 0.5) * (bin_len / grid.clamp_min(1))[:, None, None])
    weight = ((i[None, None] < grid[:, None, None]) & (pos >= -1) & (pos <= size)).to(start.dtype)
    weight = weight / grid.clamp_min(1)[:, None, None]
    pos = pos.clamp_min(0)
    low = pos.floor().clamp_max(size - 1)
    frac = torch.where(low >= size - 1, torch.zeros_like(pos), pos - low)
    low = low.long()
    high = (low + 1).clamp_max(size - 1)
    mat = start.new_zeros(num_rois, out, size)
    mat.scatter_add_(2, low, weight * (1 - frac))
    mat.scatter_add_(2, high, weight * frac)
    return mat


def dense_roi_align(feats: Tensor, rois: Tensor, output_size: Tuple[int, int],
                    spatial_scale: float, sampling_ratio: int = 0,
                    aligned: bool = True) -> Tensor:
    """Average-mode RoIAlign of ``rois`` ``(R, 5)`` (batch index, x1, y1, x2, y2) on ``feats``
    ``(N, C, H, W)``, returning ``(R, C, out_h, out_w)``; the gradient flows to ``feats`` only."""
    num_imgs, channels, height, width = feats.shape
    out_h, out_w = output_size
    rois = rois.detach().to(feats.dtype)
    offset = 0.5 if aligned else 0.
    x1, y1, x2, y2 = (rois[:, k] * spatial_scale - offset for k in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp_min(1.), roi_h.clamp_min(1.)
    ay = _interp_matrix(y1, roi_h, out_h, height, sampling_ratio)
    ax = _interp_matrix(x1, roi_w, out_w, width, sampling_ratio)
    batch = rois[:, 0].long()
    order, pooled = [], []
    for img in range(num_imgs):
        idx = (batch == img).nonzero().squeeze(1)
        n = idx.numel()
        if n == 0:
            continue
        rows = feats[img].transpose(0, 1).reshape(height, channels * width)  # (H, C*W)
        tmp = (ay[idx].reshape(n * out_h, height) @ rows).view(n, out_h * channels, width)
        out = tmp @ ax[idx].transpose(1, 2)  # (n, out_h*C, out_w)
        order.append(idx)
        pooled.append(out.view(n, out_h, channels, out_w).transpose(1, 2))
    output = feats.new_zeros(rois.shape[0], channels, out_h, out_w)
    if not pooled:
        return output
    return output.index_copy(0, torch.cat(order), torch.cat(pooled))


@MODELS.register_module()
class DenseRoIAlign(RoIAlign):
    """``mmcv.ops.RoIAlign`` (same arguments and results) that pools small feature maps with
    :func:`dense_roi_align`; maps larger than ``max_dense_area`` cells, ``pool_mode='max'`` and
    ``use_torchvision`` go to mmcv's op.

    Args:
        output_size (int | tuple[int, int]): ``(h, w)`` of the pooled features.
        spatial_scale (float): Scale from image to feature-map coordinates. Defaults to 1.0.
        sampling_ratio (int): Samples per bin along each axis; 0 adapts it to the RoI size.
            Defaults to 0.
        pool_mode (str): ``'avg'`` or ``'max'`` (the latter always by mmcv's op).
            Defaults to ``'avg'``.
        aligned (bool): Shift box coordinates by -0.5 pixel, as mmdet's configs do.
            Defaults to True.
        use_torchvision (bool): Pool with torchvision's op (through mmcv). Defaults to False.
        max_dense_area (int): Largest ``H * W`` pooled densely; the dense products cost
            ``O(R * out * H * W * C)``, so larger maps go to mmcv's op. Defaults to 4096 (64x64).
    """

    def __init__(self, output_size: Union[int, Tuple[int, int]], spatial_scale: float = 1.0,
                 sampling_ratio: int = 0, pool_mode: str = 'avg', aligned: bool = True,
                 use_torchvision: bool = False, max_dense_area: int = 64 * 64) -> None:
        super().__init__(output_size, spatial_scale, sampling_ratio, pool_mode, aligned,
                         use_torchvision)
        self.max_dense_area = max_dense_area

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        if (self.pool_mode != 'avg' or self.use_torchvision
                or input.shape[-2] * input.shape[-1] > self.max_dense_area):
            return super().forward(input, rois)
        return dense_roi_align(input, rois, self.output_size, self.spatial_scale,
                               self.sampling_ratio, self.aligned)
