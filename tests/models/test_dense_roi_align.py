"""DenseRoIAlign equals mmcv's RoIAlign (values and gradients) and is selectable by name."""
import pytest
import torch
from mmcv.ops import RoIAlign
from mmdet.registry import MODELS

from mmdet_eps.models.roi_extractors import DenseRoIAlign, RegistryRoIExtractor


def _rois(n: int, num_imgs: int, seed: int = 0) -> torch.Tensor:
    """Boxes in image pixels (stride-4 maps of 40x32): some beyond the borders, some empty, one
    image without any."""
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * torch.tensor([200., 160.]) - 20
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 80
    batch = torch.randint(0, num_imgs - 1, (n, 1), generator=gen).double()
    rois = torch.cat([batch, xy, xy + wh], 1)
    rois[:4, 3:] = rois[:4, 1:3]  # zero-size boxes
    return rois


@pytest.mark.parametrize('sampling_ratio', [0, 1, 2, 3])
@pytest.mark.parametrize('aligned', [True, False])
def test_values_and_gradients_equal_mmcv(sampling_ratio, aligned):
    feats = torch.randn(3, 8, 32, 40, dtype=torch.float64, requires_grad=True)
    rois = _rois(200, 3)
    ref = RoIAlign((7, 5), 0.25, sampling_ratio, aligned=aligned)(feats, rois)
    out = DenseRoIAlign((7, 5), 0.25, sampling_ratio, aligned=aligned)(feats, rois)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(ref)
    g_ref, = torch.autograd.grad(ref, feats, grad)
    g_out, = torch.autograd.grad(out, feats, grad)
    torch.testing.assert_close(g_out, g_ref, rtol=0, atol=1e-12)
    if aligned and sampling_ratio == 0:  # an empty box has no samples, as in mmcv
        assert out[:4].abs().sum() == 0 and out[4:].abs().sum() > 0


def test_float32_and_no_rois():
    feats = torch.randn(2, 16, 32, 40)
    rois = _rois(50, 2).float()
    torch.testing.assert_close(DenseRoIAlign(7, 0.25)(feats, rois), RoIAlign(7, 0.25)(feats, rois),
                               rtol=1e-5, atol=1e-5)
    assert DenseRoIAlign(7, 0.25)(feats, rois[:0]).shape == (0, 16, 7, 7)


def test_large_maps_and_max_pooling_use_mmcv(monkeypatch):
    calls = []
    real = RoIAlign.forward
    monkeypatch.setattr(RoIAlign, 'forward', lambda self, *a: calls.append(1) or real(self, *a))
    feats, rois = torch.randn(1, 4, 32, 40), _rois(20, 2).float()
    DenseRoIAlign(7, 0.25)(feats, rois)
    assert calls == []
    DenseRoIAlign(7, 0.25, max_dense_area=32 * 40 - 1)(feats, rois)
    DenseRoIAlign(7, 0.25, pool_mode='max')(feats, rois)
    assert len(calls) == 2


def test_extractor_selects_registered_layers_by_name_and_keeps_mmcv_names():
    cfg = dict(type='RegistryRoIExtractor', out_channels=8, featmap_strides=[4, 8],
               roi_layer=dict(type='DenseRoIAlign', output_size=7, sampling_ratio=0))
    dense = MODELS.build(cfg)
    assert isinstance(dense, RegistryRoIExtractor)
    assert [type(m) for m in dense.roi_layers] == [DenseRoIAlign, DenseRoIAlign]
    plain = MODELS.build({**cfg, 'roi_layer': dict(type='RoIAlign', output_size=7,
                                                    sampling_ratio=0)})
    assert [type(m) for m in plain.roi_layers] == [RoIAlign, RoIAlign]
    feats = (torch.randn(2, 8, 32, 40), torch.randn(2, 8, 16, 20))
    rois = _rois(60, 3).float()
    torch.testing.assert_close(dense(feats, rois), plain(feats, rois), rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match="roi_layer.type='NoSuchAlign'"):
        MODELS.build({**cfg, 'roi_layer': dict(type='NoSuchAlign', output_size=7)})
