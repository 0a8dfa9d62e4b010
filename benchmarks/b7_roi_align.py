"""B7: RoIAlign forward + backward on the toy demo's feature maps: DenseRoIAlign vs mmcv's op.

One cascade stage of the CPU demo: 2 images, P2 features (stride 4) of a 160x128 image, 64
channels, 128 sampled RoIs per image (16-90 px boxes), 7x7 output. Interleaved:

- ``mmcv`` (baseline): ``mmcv.ops.RoIAlign`` (scalar CPU loops).
- ``dense``: ``DenseRoIAlign`` (two matrix products per image; equal results).

Both for mmdet's default ``sampling_ratio=0`` (adaptive) and ``sampling_ratio=2``; a COCO-size
P2 map (200x336, above ``max_dense_area``) checks that large maps fall back to mmcv's op.

    python benchmarks/b7_roi_align.py [--quick]
"""
import torch

from _common import Report, start


def toy_rois(num_per_img: int, num_imgs: int, width: float, height: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    n = num_per_img * num_imgs
    size = torch.tensor([width, height])
    wh = 16 + torch.rand(n, 2, generator=gen) * 74
    xy = torch.rand(n, 2, generator=gen) * (size - wh).clamp_min(0)
    batch = torch.arange(n)[:, None].div(num_per_img, rounding_mode='floor').float()
    return torch.cat([batch, xy, xy + wh], 1)


def main(argv=None):
    args, env = start(__doc__.splitlines()[0], argv=argv)
    from mmcv.ops import RoIAlign

    from mmdet_eps.models.roi_extractors import DenseRoIAlign

    report = Report('B7', 'RoIAlign fwd+bwd on toy feature maps: dense vs mmcv', args, env,
                    goal='report only (the demo uses it)')
    per_img = 16 if args.quick else 128
    cases = [('toy P2 40x32', 32, 40), ('COCO P2 200x336 (falls back)', 200, 336)]
    for sampling_ratio in (0, 2):
        for case, height, width in cases:
            if args.quick and height > 32:
                continue
            torch.manual_seed(0)
            feats = torch.randn(2, 64, height, width, requires_grad=True)
            rois = toy_rois(per_img, 2, width * 4., height * 4.)
            grad = torch.randn(rois.shape[0], 64, 7, 7)
            layers = dict(mmcv=RoIAlign(7, 0.25, sampling_ratio),
                          dense=DenseRoIAlign(7, 0.25, sampling_ratio))
            diff = (layers['mmcv'](feats, rois) - layers['dense'](feats, rois)).abs().max()

            def fwd_bwd(layer):
                def run():
                    layer(feats, rois).backward(grad)
                return run
            timings = report.time({k: fwd_bwd(m) for k, m in layers.items()}, 'mmcv', 30,
                                  label=f'B7 {case} sr={sampling_ratio}')
            report.add(f'{case}, sampling_ratio={sampling_ratio}', timings, 'mmcv',
                       labels={'mmcv': 'mmcv.ops.RoIAlign', 'dense': 'DenseRoIAlign'})
            report.note(f'{case}, sampling_ratio={sampling_ratio}: max |dense - mmcv| = '
                        f'{diff.item():.1e}')
    print(report.finish())


if __name__ == '__main__':
    main()
