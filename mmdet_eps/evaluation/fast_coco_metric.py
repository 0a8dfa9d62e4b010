"""mmdet's ``CocoMetric`` with a switch to faster-coco-eval's C++ COCO evaluation.

``FastCocoMetric`` is ``CocoMetric`` (same arguments, same results, same log) plus
``use_faster_coco_eval``. Off (the default) it *is* mmdet's metric, on pycocotools. On, the ground
truth and detections are loaded with ``faster_coco_eval.COCO`` and evaluated with
``faster_coco_eval.COCOeval_faster`` - the same COCO protocol (benchmarks/b5_coco_eval.py checks
identical AP on 500k detections) several times faster::

    val_evaluator = dict(type='FastCocoMetric', ann_file=..., metric='bbox',
                         use_faster_coco_eval=True)   # pip install faster-coco-eval

How: mmdet's metric module looks up ``COCO``, ``COCOeval`` and ``COCOevalMP`` as module globals;
while this metric loads its annotations and computes its metrics, those names are bound to the
faster-coco-eval classes, then restored (metrics run in the main process, one at a time).
"""
import contextlib
from typing import Dict, Iterator

from mmdet.evaluation.metrics import CocoMetric
from mmdet.evaluation.metrics import coco_metric as _coco_metric_module
from mmdet.registry import METRICS


def _faster_coco_eval():
    try:
        import faster_coco_eval
    except ImportError as err:
        raise ImportError('FastCocoMetric(use_faster_coco_eval=True) needs faster-coco-eval: '
                          "pip install faster-coco-eval (or pip install 'mmdet-eps[fast]')"
                          ) from err
    return faster_coco_eval


def _faster_cocoeval(coco_gt, coco_dt, iou_type='bbox', *args, **kwargs):
    """``COCOeval(gt, dt, iou_type)`` of faster-coco-eval, printing its summary to stdout as
    pycocotools does (mmdet captures stdout into its log)."""
    return _faster_coco_eval().COCOeval_faster(coco_gt, coco_dt, iou_type, *args,
                                               print_function=print, **kwargs)


@METRICS.register_module()
class FastCocoMetric(CocoMetric):
    """``CocoMetric`` with ``use_faster_coco_eval`` (default False: pycocotools, unchanged).

    Args:
        use_faster_coco_eval (bool): Load annotations and evaluate with faster-coco-eval's
            ``COCO`` / ``COCOeval_faster`` instead of pycocotools. ``use_mp_eval`` is then
            ignored (the C++ evaluation is faster than mmdet's multi-process one).
        *args, **kwargs: those of ``mmdet.evaluation.CocoMetric``.
    """

    def __init__(self, *args, use_faster_coco_eval: bool = False, **kwargs) -> None:
        self.use_faster_coco_eval = bool(use_faster_coco_eval)
        if self.use_faster_coco_eval:
            _faster_coco_eval()  # fail at build time when it is missing
        with self._backend():
            super().__init__(*args, **kwargs)

    @contextlib.contextmanager
    def _backend(self) -> Iterator[None]:
        if not self.use_faster_coco_eval:
            yield
            return
        fce = _faster_coco_eval()
        module = _coco_metric_module
        saved = {name: getattr(module, name) for name in ('COCO', 'COCOeval', 'COCOevalMP')}
        module.COCO = fce.COCO
        module.COCOeval = module.COCOevalMP = _faster_cocoeval
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(module, name, value)

    def compute_metrics(self, results: list) -> Dict[str, float]:
        with self._backend():
            return super().compute_metrics(results)
