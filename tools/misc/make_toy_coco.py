"""Generate the embedded toy dataset: synthetic shape scenes in COCO layout.

The dataset is small enough for CPU training, yet not trivial: textured backgrounds,
random colours, sizes and rotations, and partial occlusion between objects. Every
placement that would hide too much of an earlier object is rejected, so each shape in an
image is annotated and stays mostly visible; each annotation describes the visible part.
Output is a pure function of the options: every image draws from its own numpy Generator
seeded by (seed, split, index), and images are lossless PNGs.

Example::

    python tools/misc/make_toy_coco.py data/toy_coco --num-train 1024 --num-val 64 --seed 0
"""
import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import cv2
import numpy as np
from mmengine.utils import ProgressBar

CLASSES = ('rectangle', 'ellipse', 'triangle', 'cross', 'star')
SPLITS = ('train2017', 'val2017')  # the position is the split's seed stream
MIN_VISIBLE = 0.7  # fraction of its own area an object must keep visible under later ones
MIN_CONTRAST = 90.0  # wanted RGB distance between a shape and the mean of what it covers
MAX_TRIES = 30  # placement attempts per object before it is skipped
#: Default extent of a shape, as fractions of the image's short side: medium-sized objects, so
#: a box that is right to a pixel or two scores at COCO's strict IoU thresholds (0.85-0.95).
SIZE_RANGE = (0.25, 0.55)


def _outline(rng: np.random.Generator, name: str, size: float) -> np.ndarray:
    """Return the (N, 2) vertices of one shape of extent ``size``, centred at the origin."""
    r = size / 2
    if name == 'rectangle':
        hw, hh = r, r * rng.uniform(0.45, 1.0)
        return np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
    if name == 'ellipse':
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([r * np.cos(t), r * rng.uniform(0.5, 1.0) * np.sin(t)], 1)
    if name == 'triangle':
        t = np.deg2rad(90 + 120 * np.arange(3) + rng.uniform(-20, 20, 3))
        return 1.15 * r * np.stack([np.cos(t), np.sin(t)], 1)
    if name == 'cross':
        a, b = r, r * rng.uniform(0.28, 0.4)  # arm half-length and half-thickness
        return np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a],
                         [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]])
    t = np.pi / 2 + np.pi / 5 * np.arange(10)  # star: alternating outer and inner points
    radius = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.4, 0.5))
    return np.stack([radius * np.cos(t), radius * np.sin(t)], 1)


def _is_simple(mask: np.ndarray) -> bool:
    """True if ``mask`` is one component without holes, i.e. one polygon describes it."""
    contours = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP,
                                cv2.CHAIN_APPROX_SIMPLE)[0]
    return len(contours) == 1


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Return a float (h, w, 3) texture: gradient, maybe stripes, blotches, pixel noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)

    def along_random_direction() -> np.ndarray:
        angle = rng.uniform(0, np.pi)
        return xx * np.cos(angle) + yy * np.sin(angle)

    p = along_random_direction()
    c1, c2 = rng.uniform(0, 255, (2, 3))
    img = c1 + (c2 - c1) * ((p - p.min()) / np.ptp(p))[..., None]
    if rng.random() < 0.5:
        phase = np.sin(2 * np.pi * along_random_direction() / rng.uniform(6, 20))
        img += rng.uniform(-25, 25, 3) * np.sign(phase)[..., None]
    blotches = rng.normal(0, rng.uniform(5, 20), (4, 5, 3)).astype(np.float32)
    img += cv2.resize(blotches, (w, h), interpolation=cv2.INTER_CUBIC)
    return img + rng.normal(0, rng.uniform(2, 8), img.shape)


def _place(rng: np.random.Generator, objects: List[list], h: int, w: int,
           size_range: Tuple[float, float]) -> Optional[Tuple[int, np.ndarray]]:
    """Sample a shape fully inside the image that leaves every earlier object mostly visible.

    On success, shrink the visible masks in ``objects`` and return (category index, mask).
    """
    lo, hi = (max(8.0, frac * min(h, w)) for frac in size_range)
    for _ in range(MAX_TRIES):
        cat = int(rng.integers(len(CLASSES)))
        poly = _outline(rng, CLASSES[cat], rng.uniform(lo, hi))
        a = rng.uniform(0, 2 * np.pi)
        poly = poly @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        poly -= poly.min(0)
        poly += rng.uniform(0, 1, 2) * (np.array([w - 1, h - 1]) - poly.max(0))
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        mask = mask.astype(bool)
        visible = [o[2] & ~mask for o in objects]
        if _is_simple(mask) and all(
                v.sum() >= MIN_VISIBLE * o[1] and _is_simple(v)
                for v, o in zip(visible, objects)):
            for o, v in zip(objects, visible):
                o[2] = v
            return cat, mask
    return None


def _scene(rng: np.random.Generator, h: int, w: int, max_objects: int,
           size_range: Tuple[float, float]) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Render one image; return it (uint8) and (category index, visible mask) per object."""
    img = _background(rng, h, w)
    objects: List[list] = []  # [category index, full area, visible mask]
    for _ in range(int(rng.integers(1, max_objects + 1))):
        placed = _place(rng, objects, h, w, size_range)
        if placed is not None:
            cat, mask = placed
            under = img[mask].mean(0)
            colours = rng.uniform(0, 255, (16, 3))
            dist = np.linalg.norm(colours - under, axis=1)
            far = np.flatnonzero(dist >= MIN_CONTRAST)  # first far one, else the farthest
            img[mask] = colours[far[0] if len(far) else dist.argmax()]
            objects.append([cat, int(mask.sum()), mask])
    img += rng.normal(0, 3, img.shape)  # so shapes are not perfectly flat either
    return np.clip(np.round(img), 0, 255).astype(np.uint8), [(o[0], o[2]) for o in objects]


def _annotation(cat: int, visible: np.ndarray, image_id: int, ann_id: int) -> dict:
    """Build a COCO annotation from a visible mask (tight box, pixel area, one polygon).

    The polygon is traced on the lattice of pixel corners (a corner is set when any of its
    four pixels is), so it runs along the outside of the mask rather than through the
    centres of its border pixels; rasterized again it keeps the same tight box.
    """
    h, w = visible.shape
    corners = np.zeros((h + 1, w + 1), np.uint8)
    for dy in (0, 1):
        for dx in (0, 1):
            corners[dy:dy + h, dx:dx + w] |= visible
    contour = cv2.findContours(corners, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0][0]
    ys, xs = np.nonzero(visible)
    x0, y0 = int(xs.min()), int(ys.min())
    return dict(id=ann_id, image_id=image_id, category_id=cat + 1,
                bbox=[x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                area=int(visible.sum()), iscrowd=0,
                segmentation=[[float(v) for v in contour.reshape(-1)]])


def _write_split(root: Path, split: str, num: int, seed: int, width: int, height: int,
                 max_objects: int, size_range: Tuple[float, float]) -> Dict[str, Union[str, int]]:
    """Write one split's images and annotation file below ``root``; return its summary."""
    (root / split).mkdir()
    images, anns = [], []
    print(f'{split}: {num} images', flush=True)
    bar = ProgressBar(num)
    for image_id in range(1, num + 1):
        rng = np.random.default_rng([seed, SPLITS.index(split), image_id])
        img, objects = _scene(rng, height, width, max_objects, size_range)
        file_name = f'{image_id:06d}.png'
        cv2.imwrite(str(root / split / file_name), img)
        images.append(dict(id=image_id, file_name=file_name, width=width, height=height,
                           license=1))
        anns += [_annotation(cat, mask, image_id, len(anns) + i + 1)
                 for i, (cat, mask) in enumerate(objects)]
        bar.update()
    print(flush=True)
    coco = dict(
        info=dict(description=f'mmdet-eps toy shapes ({split}, seed {seed})', version='1.0',
                  contributor='mmdet-eps tools/misc/make_toy_coco.py'),
        licenses=[dict(id=1, name='CC0 1.0',
                       url='https://creativecommons.org/publicdomain/zero/1.0/')],
        categories=[dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(CLASSES)],
        images=images, annotations=anns)
    ann_file = root / 'annotations' / f'instances_{split}.json'
    ann_file.write_text(json.dumps(coco), encoding='utf-8')
    return dict(ann_file=f'annotations/{ann_file.name}', img_dir=f'{split}/',
                num_images=num, num_annotations=len(anns))


def make_toy_coco(out_dir: Union[str, Path], num_train: int = 1024, num_val: int = 64,
                  seed: int = 0, width: int = 160, height: int = 128, max_objects: int = 5,
                  force: bool = False,
                  size_range: Tuple[float, float] = SIZE_RANGE) -> Dict[str, object]:
    """Generate the dataset into ``out_dir`` atomically and return its layout and counts.

    Returns ``dict(root=..., classes=CLASSES, train=..., val=...)``; each split has
    ``ann_file`` and ``img_dir`` relative to ``root`` (as mmdet's ``data_root`` expects),
    ``num_images`` and ``num_annotations``. Refuses to replace a non-empty ``out_dir``
    unless ``force``. Raises ``ValueError`` on invalid options.
    """
    for name, value, low in (('num_train', num_train, 1), ('num_val', num_val, 1),
                             ('seed', seed, 0), ('width', width, 32), ('height', height, 32),
                             ('max_objects', max_objects, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f'{name} must be an integer >= {low}, got {value!r}')
    lo, hi = (float(v) for v in size_range)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f'size_range must be two fractions 0 < LO <= HI <= 1, got {size_range!r}')
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f'{out} exists and is not a directory')
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f'{out} exists and is not empty; use --force to replace it')
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.tmp-', dir=out.parent))
    try:
        (tmp / 'annotations').mkdir()
        splits = {key: _write_split(tmp, split, num, seed, width, height, max_objects, (lo, hi))
                  for key, split, num in zip(('train', 'val'), SPLITS, (num_train, num_val))}
        if out.exists():  # empty, or replaced because of force: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f'.{out.name}.old-', dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dict(root=str(out), classes=CLASSES, **splits)


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out_dir', help='directory to create (must not exist or be empty)')
    parser.add_argument('--num-train', type=int, default=1024, help='train images')
    parser.add_argument('--num-val', type=int, default=64, help='val images')
    parser.add_argument('--seed', type=int, default=0, help='random seed (>= 0)')
    parser.add_argument('--width', type=int, default=160, help='image width (>= 32)')
    parser.add_argument('--height', type=int, default=128, help='image height (>= 32)')
    parser.add_argument('--max-objects', type=int, default=5, help='most objects per image (>= 1)')
    parser.add_argument('--size-range', type=float, nargs=2, default=SIZE_RANGE,
                        metavar=('LO', 'HI'),
                        help='shape extent as fractions of the short side (default: %(default)s)')
    parser.add_argument('--force', action='store_true', help='replace a non-empty out_dir')
    args = parser.parse_args(argv)
    try:
        result = make_toy_coco(args.out_dir, args.num_train, args.num_val, args.seed,
                               args.width, args.height, args.max_objects, args.force,
                               tuple(args.size_range))
    except (ValueError, FileExistsError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    for key in ('train', 'val'):
        s = result[key]
        print(f"{key}: {s['num_images']} images, {s['num_annotations']} objects -> "
              f"{result['root']}/{s['ann_file']}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
