"""FastCocoMetric: faster-coco-eval by default with mmdet's CocoMetric numbers; mmdet's metric
itself with use_faster_coco_eval=False."""
import json

import numpy as np
import pytest
from mmdet.evaluation.metrics import coco_metric
from mmdet.registry import METRICS

import mmdet_eps.evaluation  # noqa: F401  registers FastCocoMetric

CLASSES = ('a', 'b', 'c')


def _coco(tmp_path, num_images=12, seed=0):
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for img_id in range(1, num_images + 1):
        images.append(dict(id=img_id, width=200, height=160, file_name=f'{img_id}.png'))
        boxes, scores, labels = [], [], []
        for k in range(int(rng.integers(1, 5))):
            x, y = rng.uniform(0, 120, 2)
            w, h = rng.uniform(6, 70, 2)
            cat = int(rng.integers(0, 3))
            anns.append(dict(id=len(anns) + 1, image_id=img_id, category_id=cat + 1,
                             bbox=[x, y, w, h], area=w * h, iscrowd=int(k == 3)))
            jitter = rng.normal(0, 3, 4)
            boxes.append([x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]])
            scores.append(rng.uniform(0.2, 1))
            labels.append(cat if rng.random() > 0.2 else int(rng.integers(0, 3)))
        for _ in range(5):  # background detections
            x, y = rng.uniform(0, 150, 2)
            boxes.append([x, y, x + 30, y + 20])
            scores.append(rng.uniform(0, 0.4))
            labels.append(int(rng.integers(0, 3)))
        results.append((dict(), dict(img_id=img_id, bboxes=np.array(boxes, np.float32),
                                     scores=np.array(scores, np.float32),
                                     labels=np.array(labels))))
    gt = dict(images=images, annotations=anns,
              categories=[dict(id=i + 1, name=n) for i, n in enumerate(CLASSES)])
    path = tmp_path / 'gt.json'
    path.write_text(json.dumps(gt))
    return str(path), results


def _metrics(ann_file, results, **kwargs):
    metric = METRICS.build(dict(type='FastCocoMetric', ann_file=ann_file, metric='bbox',
                                **kwargs))
    metric.dataset_meta = dict(classes=CLASSES)
    return metric.compute_metrics(results)


def test_switched_off_is_mmdet_coco_metric(tmp_path):
    ann_file, results = _coco(tmp_path)
    ours = _metrics(ann_file, results, use_faster_coco_eval=False)
    ref = METRICS.build(dict(type='CocoMetric', ann_file=ann_file, metric='bbox'))
    ref.dataset_meta = dict(classes=CLASSES)
    assert ours == ref.compute_metrics(results)
    assert 0 < ours['bbox_mAP'] < 1


@pytest.mark.parametrize('classwise', [False, True])
def test_faster_coco_eval_by_default_gives_identical_metrics(tmp_path, classwise):
    ann_file, results = _coco(tmp_path)
    saved = (coco_metric.COCO, coco_metric.COCOeval, coco_metric.COCOevalMP)
    default = METRICS.build(dict(type='FastCocoMetric', ann_file=ann_file))
    assert default.use_faster_coco_eval
    fast = _metrics(ann_file, results, classwise=classwise)
    assert (coco_metric.COCO, coco_metric.COCOeval, coco_metric.COCOevalMP) == saved
    slow = _metrics(ann_file, results, use_faster_coco_eval=False, classwise=classwise)
    assert fast.keys() == slow.keys()
    for key in slow:
        assert fast[key] == pytest.approx(slow[key], abs=1e-12), key


def test_missing_faster_coco_eval_fails_at_build(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == 'faster_coco_eval':
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', fake_import)
    ann_file, _ = _coco(tmp_path)
    with pytest.raises(ImportError, match=r'pip install -e \.\[fast\]'):
        _metrics(ann_file, [])
    # pycocotools' path needs no faster-coco-eval
    METRICS.build(dict(type='FastCocoMetric', ann_file=ann_file, use_faster_coco_eval=False))
