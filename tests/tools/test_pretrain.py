"""ImageNet pretraining to a detector backbone, end to end on a toy classification set: train
configs/imagenet/ws_eps_resnet50_8xb32_in1k.py (at depth 18) through tools/pretrain.py, convert
the checkpoint with the converter, load it into WSResNet and get the trained stage outputs."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS as DET_MODELS
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image, ImageDraw

from mmdet_eps.engine.optimizers.eps_shifted_regularizer import EPS_KEY, FAMILY_KEY
from mmdet_eps.utils import safe_load
from tests.conftest import LANE, REPO, load_tool
from tests.toy_run import run_tool

# mmpretrain (the pretrain extra) needs the torchvision built for the torch in place
pytest.importorskip('torchvision', reason=LANE)
pytest.importorskip('mmpretrain', reason=LANE)
pytestmark = pytest.mark.slow

CLASSES = ('circle', 'square', 'triangle')
SIZE = 32


def make_toy_classification(root: Path, per_class: int, seed: int) -> Path:
    """``root/<class>/<i>.png``: one white shape of random size and place on a noisy dark
    background per image, the folder format mmpretrain's CustomDataset reads."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            r = int(rng.integers(6, 12))
            cx, cy = (int(v) for v in rng.integers(r, SIZE - r, 2))
            box = (cx - r, cy - r, cx + r, cy + r)
            draw = ImageDraw.Draw(image)
            if name == 'circle':
                draw.ellipse(box, fill=(255, 255, 255))
            elif name == 'square':
                draw.rectangle(box, fill=(255, 255, 255))
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)],
                             fill=(255, 255, 255))
            image.save(root / name / f'{i}.png')
    return root


def toy_pretrain_config(data_root: Path, work_dir: Path) -> Config:
    """The shipped ε config at depth 18 on the toy set: 2 epochs of 3 iterations, CPU-sized."""
    cfg = Config.fromfile(str(REPO / 'configs' / 'imagenet' / 'ws_eps_resnet50_8xb32_in1k.py'))
    cfg.model.backbone.depth = 18
    cfg.model.head.update(num_classes=len(CLASSES), in_channels=512, topk=(1, ))
    cfg.data_preprocessor.num_classes = len(CLASSES)
    small = dict(RandomResizedCrop=dict(scale=SIZE), ResizeEdge=dict(scale=SIZE),
                 CenterCrop=dict(crop_size=SIZE))
    for split in ('train', 'val'):
        loader = cfg[f'{split}_dataloader']
        loader.update(batch_size=8, num_workers=0, persistent_workers=False)
        dataset = loader.dataset
        dataset.pop('split')
        dataset.update(type='CustomDataset', data_root=str(data_root), data_prefix=split)
        for step in dataset.pipeline:
            step.update(small.get(step.type, {}))
    cfg.test_dataloader = cfg.val_dataloader
    cfg.val_evaluator = cfg.test_evaluator = dict(type='Accuracy', topk=(1, ))
    cfg.train_cfg.max_epochs = 2
    cfg.default_hooks.logger.interval = 1
    cfg.custom_hooks = [dict(type='WeightNormStatsHook', interval=1)]  # docs/pretrain.md
    cfg.randomness = dict(seed=0)
    cfg.work_dir = str(work_dir)
    return cfg


def _scalars(work_dir: Path) -> list:
    files = sorted(work_dir.glob('*/vis_data/scalars.json'))
    assert files, f'no scalars.json under {work_dir}'
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_pretrain_convert_and_load_into_wsresnet(tmp_path):
    data = tmp_path / 'toy_cls'
    make_toy_classification(data / 'train', per_class=8, seed=0)
    make_toy_classification(data / 'val', per_class=4, seed=1)
    work_dir = tmp_path / 'work'
    cfg = toy_pretrain_config(data, work_dir)
    config = tmp_path / 'ws_eps_resnet18_toy.py'
    cfg.dump(str(config))
    run_tool('tools/pretrain.py', str(config))

    records = _scalars(work_dir)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert all(r['wn_stats/min_std'] > 0 for r in records if 'loss' in r)
    assert [r['accuracy/top1'] for r in records if 'accuracy/top1' in r]  # validated per epoch
    ckpt_path = work_dir / 'epoch_2.pth'
    ckpt = safe_load(str(ckpt_path))
    tagged = [g for g in ckpt['optimizer']['param_groups'] if FAMILY_KEY in g]
    assert [(g[FAMILY_KEY], g[EPS_KEY]) for g in tagged] == [('ws', 1e-3)]

    cvt = load_tool('model_converters/convert_imagenet_ckpt')
    dst = tmp_path / 'ws_resnet18_imagenet.pth'
    meta = cvt.convert(str(ckpt_path), str(dst), depth=18, arch='resnet', verify=True,
                       input_size=SIZE)
    assert (meta['format'], meta['arch'], meta['depth']) == ('mmpretrain', 'resnet', 18)

    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    trained_cfg = dict(cfg.model.backbone, out_indices=(0, 1, 2, 3))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        trained = PRETRAIN_MODELS.build(trained_cfg)
    trained.load_state_dict({k[len('backbone.'):]: v for k, v in ckpt['state_dict'].items()
                             if k.startswith('backbone.')})
    detector_backbone = DET_MODELS.build(
        dict(type='WSResNet', depth=18, out_indices=(0, 1, 2, 3), frozen_stages=1,
             init_cfg=dict(type='Pretrained', checkpoint=str(dst))))
    detector_backbone.init_weights()
    trained.eval()
    detector_backbone.eval()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = trained(images), detector_backbone(images)
    assert len(expected) == len(got) == 4
    for a, b in zip(expected, got):
        assert torch.equal(a, b)
