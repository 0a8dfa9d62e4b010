"""mmdet's ``CocoMetric`` evaluated by faster-coco-eval's C++ COCO evaluation.

``FastCocoMetric`` takes ``CocoMetric``'s arguments and gives its results and log, computed by
``faster_coco_eval.COCO`` / ``COCOeval_faster``: the same COCO protocol
(benchmarks/b5_coco_eval.py checks identical AP; its speed-up is in docs/benchmarks.md)::

    val_evaluator = dict(type='FastCocoMetric', ann_file=..., metric='bbox')

faster-coco-eval comes with ``pip install -e .[fast]`` (or ``.[test]``);
``use_faster_coco_eval=False`` falls back to pycocotools, i.e. exactly mmdet's ``CocoMetric``.

How: mmdet's metric module looks up ``COCO``, ``COCOeval`` and ``COCOevalMP`` as module globals;
while this metric loads its annotations and computes its metrics, those names are bound to the
faster-coco-eval classes, then restored (metrics run in the main process, one at a time).
"""
import contextlib
from types import ModuleType
from typing import Dict, Iterator

from mmdet.evaluation.metrics import CocoMetric
from mmdet.evaluation.metrics import coco_metric as _coco_metric_module
from mmdet.registry import METRICS


def _faster_coco_eval() -> ModuleType:
    try:
        import faster_coco_eval
    except ImportError as err:
        raise ImportError(
            'FastCocoMetric needs faster-coco-eval: pip install -e .[fast] (or pip install '
            "faster-coco-eval); use_faster_coco_eval=False or type='CocoMetric' evaluates with "
            'pycocotools instead') from err
    return faster_coco_eval


def _faster_cocoeval(coco_gt, coco_dt, iou_type='bbox', *args, **kwargs):
    """``COCOeval(gt, dt, iou_type)`` of faster-coco-eval, printing its summary to stdout as
    pycocotools does (mmdet captures stdout into its log)."""
    return _faster_coco_eval().COCOeval_faster(coco_gt, coco_dt, iou_type, *args,
                                               print_function=print, **kwargs)


@METRICS.register_module()
class FastCocoMetric(CocoMetric):
    """mmdet's ``CocoMetric`` with faster-coco-eval as its COCO API and evaluator.

    Args:
        use_faster_coco_eval (bool): Load annotations and evaluate with faster-coco-eval's
            ``COCO`` / ``COCOeval_faster``; ``use_mp_eval`` is then ignored (the C++ evaluation
            is faster than mmdet's multi-process one). False gives mmdet's pycocotools path
            unchanged. Defaults to True.
        *args, **kwargs: those of ``mmdet.evaluation.CocoMetric`` (``ann_file``, ``metric``,
            ``classwise``, ``metric_items``, ...), with its defaults.
    """

    def __init__(self, *args, use_faster_coco_eval: bool = True, **kwargs) -> None:
        self.use_faster_coco_eval = bool(use_faster_coco_eval)
        if self.use_faster_coco_eval:
            _faster_coco_eval()  # fail at build time when it is missing
        with self._backend():
            super().__init__(*args, **kwargs)

    @contextlib.contextmanager
    def _backend(self) -> Iterator[None]:
        """Bind mmdet's COCO names to faster-coco-eval for the block, when enabled."""
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
