"""Tests for tools/misc/make_toy_coco.py: COCO validity, determinism, safe writes, mmdet loading."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from mmdet.datasets import CocoDataset
from pycocotools.coco import COCO

from tests.conftest import REPO, load_tool

toy = load_tool('misc/make_toy_coco')
TOOL = REPO / 'tools' / 'misc' / 'make_toy_coco.py'

SMALL = dict(num_train=8, num_val=4)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """A small dataset with default image size, shared by the read-only tests."""
    return toy.make_toy_coco(tmp_path_factory.mktemp('toy') / 'coco', **SMALL)


@pytest.fixture(scope='module', params=['default', 'tiny'])
def any_dataset(request, dataset, tmp_path_factory):
    """The default-size dataset, and one at the minimum width with a taller-than-wide image."""
    if request.param == 'default':
        return dataset
    return toy.make_toy_coco(tmp_path_factory.mktemp('tiny') / 'coco', num_train=6,
                             num_val=3, width=32, height=48, max_objects=3, seed=3)


def _load(result, split):
    return COCO(str(Path(result['root']) / result[split]['ann_file']))


def _pixels(result, split):
    root = Path(result['root'])
    return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            for p in sorted((root / result[split]['img_dir']).iterdir())]


def test_layout_and_counts(dataset):
    root = Path(dataset['root'])
    assert sorted(p.name for p in root.iterdir()) == ['annotations', 'train2017', 'val2017']
    assert sorted(p.name for p in root.parent.iterdir()) == ['coco']  # no temp dirs left
    for split, num in (('train', 8), ('val', 4)):
        data = json.loads((root / dataset[split]['ann_file']).read_text())
        assert {'info', 'licenses', 'categories', 'images', 'annotations'} <= set(data)
        assert [c['name'] for c in data['categories']] == list(toy.CLASSES)
        assert [c['id'] for c in data['categories']] == [1, 2, 3, 4, 5]
        assert len(data['images']) == len(list((root / dataset[split]['img_dir']).iterdir()))
        assert len(data['images']) == dataset[split]['num_images'] == num
        assert len(data['annotations']) == dataset[split]['num_annotations']
        assert len({a['id'] for a in data['annotations']}) == len(data['annotations'])
        per_image = np.bincount([a['image_id'] for a in data['annotations']],
                                minlength=num + 1)[1:]
        assert len(per_image) == num and per_image.min() >= 1 and per_image.max() <= 5


@pytest.mark.parametrize('split', ['train', 'val'])
def test_annotations_are_valid_and_match_pixels(any_dataset, split):
    coco = _load(any_dataset, split)
    images = _pixels(any_dataset, split)
    for img_info, pixels in zip(coco.loadImgs(sorted(coco.getImgIds())), images):
        h, w = img_info['height'], img_info['width']
        assert pixels.shape == (h, w, 3)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_info['id'])):
            x, y, bw, bh = ann['bbox']
            assert ann['iscrowd'] == 0 and 1 <= ann['category_id'] <= len(toy.CLASSES)
            assert x >= 0 and y >= 0 and bw > 0 and bh > 0 and x + bw <= w and y + bh <= h
            assert 0 < ann['area'] <= bw * bh
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann['segmentation'])
            mask = coco.annToMask(ann).astype(bool)
            ys, xs = np.nonzero(mask)
            # The polygon reproduces the visible mask: same tight box, about the same area.
            assert [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] == \
                ann['bbox']
            assert ann['area'] <= mask.sum() <= 1.5 * ann['area']
            # The mask lies on one flat-coloured shape (pixel noise only): its visible pixels,
            # which the polygon covers, share one colour; only the polygon's fringe may not.
            inside = pixels[mask].astype(float)
            close = np.abs(inside - np.median(inside, 0)).max(1) <= 15
            assert close.sum() >= 0.98 * ann['area']


def test_same_seed_is_identical_and_other_seed_differs(dataset, tmp_path):
    again = toy.make_toy_coco(tmp_path / 'again', **SMALL)
    other = toy.make_toy_coco(tmp_path / 'other', seed=1, **SMALL)
    for split in ('train', 'val'):
        def text(result):
            return (Path(result['root']) / result[split]['ann_file']).read_bytes()

        assert text(again) == text(dataset)
        same, ref = _pixels(again, split), _pixels(dataset, split)
        assert len(same) == len(ref) and all(map(np.array_equal, same, ref))
        assert text(other) != text(dataset)
        assert not np.array_equal(_pixels(other, split)[0], _pixels(dataset, split)[0])


def test_val_split_does_not_depend_on_num_train(dataset, tmp_path):
    fewer = toy.make_toy_coco(tmp_path / 'fewer', num_train=2, num_val=4)
    val = Path(fewer['root']) / fewer['val']['ann_file']
    assert val.read_bytes() == (Path(dataset['root']) / dataset['val']['ann_file']).read_bytes()


def test_refuses_to_overwrite_unless_forced(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('precious')
    with pytest.raises(FileExistsError, match='force'):
        toy.make_toy_coco(out, num_train=1, num_val=1)
    assert sorted(p.name for p in out.iterdir()) == ['keep.txt']
    toy.make_toy_coco(out, num_train=1, num_val=1, force=True)
    assert sorted(p.name for p in out.iterdir()) == ['annotations', 'train2017', 'val2017']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']


def test_empty_existing_dir_is_filled(tmp_path):
    (tmp_path / 'out').mkdir()
    result = toy.make_toy_coco(tmp_path / 'out', num_train=1, num_val=1)
    assert result['train']['num_images'] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = []

    def failing_scene(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError('disk full')
        return real_scene(*args)

    real_scene = toy._scene
    monkeypatch.setattr(toy, '_scene', failing_scene)
    with pytest.raises(RuntimeError, match='disk full'):
        toy.make_toy_coco(tmp_path / 'out', num_train=4, num_val=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('bad', [dict(num_train=0), dict(num_val=0), dict(width=31),
                                 dict(height=8), dict(seed=-1), dict(max_objects=0),
                                 dict(num_train=2.5), dict(size_range=(0., 0.5)),
                                 dict(size_range=(0.6, 0.5)), dict(size_range=(0.5, 1.5))])
def test_invalid_options_are_rejected(tmp_path, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        toy.make_toy_coco(tmp_path / 'out', **{**SMALL, **bad})
    assert list(tmp_path.iterdir()) == []


def test_size_range_sets_object_extent(tmp_path):
    """Shapes get larger with the size range: boxes never exceed HI of the short side (times the
    triangle's 1.15 reach and a rotation's sqrt 2) and grow on average."""
    def box_sides(size_range):
        out = toy.make_toy_coco(tmp_path / str(size_range), num_train=12, num_val=1,
                                size_range=size_range)
        anns = _load(out, 'train').dataset['annotations']
        return np.array([max(a['bbox'][2:]) for a in anns])

    small, large = box_sides((0.15, 0.2)), box_sides((0.5, 0.6))
    assert small.max() <= 0.2 * 128 * 1.15 * 2**0.5 + 2
    assert large.mean() > 2 * small.mean()


def test_command_line(tmp_path):
    out = tmp_path / 'cli'
    cmd = [sys.executable, str(TOOL), str(out), '--num-train', '2', '--num-val', '1',
           '--width', '48', '--height', '40', '--seed', '5', '--size-range', '0.3', '0.6']
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert 'train: 2 images' in done.stdout
    assert len(COCO(str(out / 'annotations' / 'instances_train2017.json')).getImgIds()) == 2

    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode != 0 and 'not empty' in again.stderr and '--force' in again.stderr

    bad = subprocess.run(cmd[:2] + [str(tmp_path / 'bad'), '--height', '16'],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and 'height' in bad.stderr
    assert not (tmp_path / 'bad').exists()


def test_mmdet_coco_dataset_loads_it(dataset):
    """CocoDataset reads it (conftest has run mmdet's ``register_all_modules``)."""
    coco = _load(dataset, 'val')
    ds = CocoDataset(
        data_root=dataset['root'], ann_file=dataset['val']['ann_file'],
        data_prefix=dict(img=dataset['val']['img_dir']), metainfo=dict(classes=toy.CLASSES),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations', with_bbox=True, with_mask=True)])
    assert len(ds) == dataset['val']['num_images']
    for i in range(len(ds)):
        item = ds[i]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=item['img_id']))
        assert item['img'].shape == (128, 160, 3)
        assert len(item['gt_bboxes']) == len(item['gt_masks']) == len(anns) >= 1
        masks = item['gt_masks'].to_ndarray()
        assert masks.shape[1:] == (128, 160) and (masks.sum((1, 2)) > 0).all()
        np.testing.assert_allclose(
            item['gt_bboxes'].tensor.numpy(),
            [[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2],
              a['bbox'][1] + a['bbox'][3]] for a in anns])
        assert sorted(item['gt_bboxes_labels'].tolist()) == \
            sorted(a['category_id'] - 1 for a in anns)
