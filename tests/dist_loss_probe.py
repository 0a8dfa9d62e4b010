"""A test-only hook that records each rank's training loss, to compare 1- and 2-process runs."""
import json
import os

from mmdet.registry import HOOKS
from mmengine.hooks import Hook


@HOOKS.register_module()
class RankLossProbeHook(Hook):
    """Appends ``{"iter", "loss"}`` per train iteration to ``out_dir/rank<RANK>.jsonl``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        path = os.path.join(self.out_dir, f'rank{os.environ.get("RANK", "0")}.jsonl')
        with open(path, 'a') as f:
            record = {'iter': runner.iter, 'loss': float(outputs['loss'].detach())}
            f.write(json.dumps(record) + '\n')
