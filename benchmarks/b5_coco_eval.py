"""B5: COCO bbox evaluation time, faster-coco-eval (our evaluator) vs pycocotools, same AP.

A synthetic COCO set of realistic size is generated once (default 5000 images, 80 categories,
about 7 ground-truth boxes per image, crowd boxes included, and 100 detections per image =
500k detections: jittered copies of the ground truth with high scores plus random boxes with low
scores, so AP is neither 0 nor 1). Then, interleaved:

- ``pycocotools`` (baseline): ``gt.loadRes(dets)``, ``COCOeval(gt, dt, 'bbox')``,
  ``evaluate()``, ``accumulate()``, ``summarize()`` - what mmdet's ``CocoMetric`` runs.
- ``faster_coco_eval``: the same calls on ``faster_coco_eval.COCO`` / ``COCOeval_faster``.
- ``mmdet CocoMetric`` / ``FastCocoMetric(use_faster_coco_eval=True)``: the whole
  ``compute_metrics`` of mmdet's metric (results to json, load, evaluate, log) with each backend
  (``mmdet_eps.evaluation.FastCocoMetric``).

The ground truth is loaded once per backend, untimed (mmdet loads it once per run). The 12 COCO
summary numbers must be identical between the backends; the largest difference is recorded.

    python benchmarks/b5_coco_eval.py [--quick] [--images 5000] [--dets 100]
"""
import contextlib
import functools
import io
import json
import os.path as osp
import tempfile

import numpy as np

from _common import Report, start

NUM_CLASSES = 80


def make_coco(num_images: int, dets_per_image: int, seed: int = 0):
    """``(gt_dict, detections)``: COCO ground truth and a results list (xywh boxes)."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    categories = [dict(id=i + 1, name=f'class_{i}') for i in range(NUM_CLASSES)]
    ann_id = 1
    for img_id in range(1, num_images + 1):
        w, h = int(rng.integers(480, 641)), int(rng.integers(360, 481))
        images.append(dict(id=img_id, width=w, height=h, file_name=f'{img_id:012d}.jpg'))
        n_gt = int(rng.poisson(7))
        gts = []
        for _ in range(n_gt):
            # sizes spanning small / medium / large
            bw, bh = np.exp(rng.uniform(np.log(8), np.log(0.8 * w))), np.exp(
                rng.uniform(np.log(8), np.log(0.8 * h)))
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            cat = int(rng.integers(1, NUM_CLASSES + 1))
            crowd = int(rng.random() < 0.01)
            annotations.append(dict(id=ann_id, image_id=img_id, category_id=cat,
                                    bbox=[x, y, bw, bh], area=bw * bh, iscrowd=crowd,
                                    segmentation=[[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]))
            ann_id += 1
            gts.append((x, y, bw, bh, cat))
        for k in range(dets_per_image):
            if gts and k < 3 * len(gts):
                x, y, bw, bh, cat = gts[k % len(gts)]
                jitter = rng.normal(0, 0.08 * (k // len(gts) + 1), 4)
                box = [x + jitter[0] * bw, y + jitter[1] * bh, bw * np.exp(jitter[2]),
                       bh * np.exp(jitter[3])]
                if rng.random() < 0.1:
                    cat = int(rng.integers(1, NUM_CLASSES + 1))
                score = float(rng.uniform(0.3, 1.0))
            else:
                bw, bh = rng.uniform(8, w / 2), rng.uniform(8, h / 2)
                box = [rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh]
                cat = int(rng.integers(1, NUM_CLASSES + 1))
                score = float(rng.uniform(0.0, 0.5))
            detections.append(dict(image_id=img_id, category_id=cat,
                                   bbox=[round(float(v), 2) for v in box], score=round(score, 4)))
    gt = dict(images=images, annotations=annotations, categories=categories,
              info=dict(description='synthetic B5'), licenses=[])
    return gt, detections


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def coco_eval(gt_file: str, dets, fast: bool):
    """A timed ``run()`` of COCO bbox evaluation (faster-coco-eval's ``COCOeval_faster`` when
    ``fast``, else pycocotools' ``COCOeval``) and the dict its 12 stats land in."""
    if fast:
        from faster_coco_eval import COCO, COCOeval_faster
        make_eval = functools.partial(COCOeval_faster, print_function=print)
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as make_eval
    with _quiet():
        gt = COCO(gt_file)
    stats = {}

    def run():
        with _quiet():
            ev = make_eval(gt, gt.loadRes(dets), 'bbox')
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats['stats'] = np.array(ev.stats[:12])
    return run, stats


def mmdet_metric(gt_file: str, dets, fast: bool):
    """``FastCocoMetric.compute_metrics`` (off: exactly mmdet's CocoMetric) on mmdet results."""
    from mmdet_eps.evaluation import FastCocoMetric
    metric = FastCocoMetric(ann_file=gt_file, metric='bbox', use_faster_coco_eval=fast)
    metric.dataset_meta = dict(classes=[f'class_{i}' for i in range(NUM_CLASSES)])
    by_image = {}
    for d in dets:
        by_image.setdefault(d['image_id'], []).append(d)
    results = []
    for img_id, ds in sorted(by_image.items()):
        boxes = np.array([d['bbox'] for d in ds], dtype=np.float32)
        boxes[:, 2:] += boxes[:, :2]
        results.append((dict(), dict(img_id=img_id, bboxes=boxes,
                                     scores=np.array([d['score'] for d in ds], np.float32),
                                     labels=np.array([d['category_id'] - 1 for d in ds]))))
    out = {}

    def run():
        with _quiet():
            out['metrics'] = metric.compute_metrics(results)
    return run, out


def extra_args(parser):
    parser.add_argument('--images', type=int, default=None, help='images (default 5000)')
    parser.add_argument('--dets', type=int, default=100, help='detections per image')
    parser.add_argument('--no-mmdet', action='store_true', help='skip the mmdet metric pair')


def main(argv=None):
    args, env = start(__doc__.splitlines()[0], extra_args, argv)
    import faster_coco_eval
    import pycocotools
    env.update(faster_coco_eval=faster_coco_eval.__version__,
               pycocotools=getattr(pycocotools, '__version__', '?'))
    images = args.images or (200 if args.quick else 5000)
    report = Report('B5', 'COCO bbox evaluation: faster-coco-eval vs pycocotools', args, env,
                    goal='faster_coco_eval >= 3x faster than pycocotools, identical AP')
    print(f'B5: generating {images} images x {args.dets} detections', flush=True)
    gt, dets = make_coco(images, args.dets)
    with tempfile.TemporaryDirectory() as tmp:
        gt_file = osp.join(tmp, 'gt.json')
        with open(gt_file, 'w') as f:
            json.dump(gt, f)
        ref_run, ref = coco_eval(gt_file, dets, fast=False)
        fast_run, fast = coco_eval(gt_file, dets, fast=True)
        timings = report.time(dict(pycocotools=ref_run, faster_coco_eval=fast_run),
                              'pycocotools', 3, warmup=0, quick_warmup=0, label='B5')
        diff = float(np.abs(ref['stats'] - fast['stats']).max())
        report.add(f'{images} images, {len(dets)} dets, {len(gt["annotations"])} GT',
                   timings, 'pycocotools',
                   labels=dict(pycocotools='pycocotools COCOeval',
                               faster_coco_eval='faster-coco-eval COCOeval_faster'),
                   goal_for='faster_coco_eval', goal_min_speedup=3.0,
                   ap_pycocotools=ref['stats'].tolist(), ap_faster=fast['stats'].tolist(),
                   ap_max_abs_diff=diff)
        report.note(f'AP (pycocotools) = {ref["stats"][0]:.4f}, AP50 = {ref["stats"][1]:.4f}; '
                    f'max |difference| over the 12 summary numbers = {diff:.2e}')
        speedup = 1 / timings['faster_coco_eval']['ratio']
        report.note(f'faster-coco-eval is {speedup:.2f}x faster (paired median)')
        if not args.no_mmdet:
            off_run, off = mmdet_metric(gt_file, dets, fast=False)
            on_run, on = mmdet_metric(gt_file, dets, fast=True)
            timings = report.time({'CocoMetric': off_run, 'FastCocoMetric': on_run},
                                  'CocoMetric', 3, warmup=0, quick_warmup=0,
                                  label='B5 mmdet')
            keys = sorted(off['metrics'])
            mdiff = max(abs(off['metrics'][k] - on['metrics'][k]) for k in keys)
            report.add('through mmdet: CocoMetric.compute_metrics', timings, 'CocoMetric',
                       labels={'CocoMetric': 'mmdet CocoMetric (pycocotools)',
                               'FastCocoMetric': 'FastCocoMetric(use_faster_coco_eval=True)'},
                       goal_for='FastCocoMetric', goal_min_speedup=3.0,
                       metric_max_abs_diff=mdiff)
            shown = ', '.join(f'{k}={off["metrics"][k]}' for k in keys[:3])
            report.note(f'mmdet metrics identical: max |difference| = {mdiff:.2e} '
                        f'({shown} ...)')
    report.finish()
    return report


if __name__ == '__main__':
    main()
