"""A small synthetic dataset in the COCO and ADE20K formats, to run the configs where COCO and ADE20K are not.

Every image is a textured background (smooth colour noise, stripes, grain) carrying a few filled shapes of
three classes (circle, square, triangle) that overlap and occlude each other, plus unlabeled grey blobs.
Each class has its own hue range and shapes vary in size, rotation, colour and texture, so a detector
trained from scratch learns it in minutes on a CPU without the task being a colour lookup.

Layout under ``data/demo/`` (the datasets' standard layouts, loaded by mmdet's ``CocoDataset`` and mmseg's
``ADE20KDataset`` / ``BaseSegDataset`` unchanged):

- ``coco/annotations/instances_{train,val}.json`` + ``coco/{train,val}/*.jpg``: instance annotations with
  polygons of the visible part of each shape; a few images have no objects.
- ``ade/images/{training,validation}/*.jpg`` + ``ade/annotations/{training,validation}/*.png``: label maps
  in ADE20K's convention, 0 = unlabeled "other" (the blobs; ignored under ``reduce_zero_label=True``),
  1 = background, 2..4 = the shapes; so the model's classes are :data:`SEG_CLASSES`.

Generation is deterministic (seeded per image) and takes a few seconds: ``python -m convnext_mm.demo_data``.
"""
import argparse
import colorsys
import json
import os
import os.path as osp
import shutil
import tempfile

import cv2
import numpy as np
from mmengine.utils import track_iter_progress

DEMO_ROOT = 'data/demo'
CLASSES = ('circle', 'square', 'triangle')
# The label map's 0 is ADE20K's unlabeled "other"; reduce_zero_label maps it to 255 (ignored) and the rest to
# 0..3, the indices of these names.
SEG_CLASSES = ('background', ) + CLASSES
SPLITS = {'coco': {'train': 240, 'val': 60}, 'ade': {'training': 240, 'validation': 60}}
# Bump when the generated data changes: a copy written by another version is regenerated.
FORMAT_VERSION = 2
SEED = 2022
MARKER = 'DEMO_DATA.json'  # written last: a folder without it is a cut-short generation

# Hue (degrees) around which each class's colours are drawn, and how far they stray.
CLASS_HUES = {'circle': 0., 'square': 215., 'triangle': 55.}
HUE_JITTER = 20.
MAX_OBJECTS = 5
EMPTY_IMAGE_PROB = 0.06
MIN_VISIBLE_FRACTION = 0.5  # an occluded shape keeps at least this much of itself in view
# Sizes relative to the shorter image side (at 128 pixels: shapes of 14 to 48, blobs of radius 6 to 20).
SHAPE_SIZE = (0.11, 0.375)
BLOB_RADIUS = (0.05, 0.16)
MIN_VISIBLE_AREA = 0.0023  # times the shorter side squared: 38 pixels at 128
PLACEMENT_TRIES = 30


class ShapeScene:
    """One random image: background texture, unlabeled blobs, then labeled shapes painted back to front."""

    def __init__(self, rng, height, width):
        self.rng, self.height, self.width = rng, height, width
        self.unit = min(height, width)
        self.min_pixels = MIN_VISIBLE_AREA * self.unit**2
        self.image = self._background()
        self.blob_mask = self._paint_blobs()
        self.instances = []  # dicts: class name, visible mask (bool HxW)
        count = 0 if rng.random() < EMPTY_IMAGE_PROB else int(rng.integers(1, MAX_OBJECTS + 1))
        for _ in range(count):
            self._place_shape()
        # A touch of blur so edges are not perfectly aliased, then 8-bit colour.
        self.image = np.clip(cv2.GaussianBlur(self.image, (0, 0), 0.6), 0, 255).astype(np.uint8)

    def label_map(self):
        """ADE20K-style labels: 0 unlabeled blob, 1 background, 2.. the shape classes (:data:`SEG_CLASSES`)."""
        labels = np.ones((self.height, self.width), np.uint8)
        labels[self.blob_mask] = 0
        for instance in self.instances:
            labels[instance['mask']] = SEG_CLASSES.index(instance['class']) + 1
        return labels

    def _texture(self, height, width, base_rgb, grain, stripe_amplitude, smooth_amplitude):
        """A height x width colour field: base colour + smooth colour noise + oriented stripes + grain."""
        rng = self.rng
        coarse = rng.standard_normal((height // 32 + 2, width // 32 + 2, 3), dtype=np.float32)
        smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) * smooth_amplitude
        ys, xs = np.ogrid[0:height, 0:width]
        ys, xs = ys.astype(np.float32), xs.astype(np.float32)
        angle, period = rng.uniform(0, np.pi), rng.uniform(5, 24)
        stripes = np.sin((2 * np.pi / period) * (xs * np.cos(angle) + ys * np.sin(angle))) * stripe_amplitude
        grain = rng.standard_normal((height, width, 3), dtype=np.float32) * grain
        return np.asarray(base_rgb, np.float32) + smooth + stripes[..., None] + grain

    def _paint(self, mask, *texture_args, **texture_kwargs):
        """Fill ``mask`` with a texture made only over its bounding box (most of the cost is per pixel)."""
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        texture = self._texture(y1 - y0, x1 - x0, *texture_args, **texture_kwargs)
        inside = mask[y0:y1, x0:x1]
        self.image[y0:y1, x0:x1][inside] = texture[inside]

    def _background(self):
        rng = self.rng
        # Muted colours: shapes are saturated, the background is not, but both are textured.
        hue, saturation, value = rng.uniform(0, 1), rng.uniform(0, 0.3), rng.uniform(0.3, 0.8)
        base = np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255
        return self._texture(self.height, self.width, base, grain=rng.uniform(3, 12),
                             stripe_amplitude=rng.uniform(0, 25), smooth_amplitude=rng.uniform(10, 35))

    def _paint_blobs(self):
        """0-2 irregular grey-ish blobs: clutter the detector must learn to ignore (ADE's label 0)."""
        rng = self.rng
        blob_mask = np.zeros((self.height, self.width), bool)
        for _ in range(int(rng.integers(0, 3))):
            radius = rng.uniform(*BLOB_RADIUS) * self.unit
            center = rng.uniform([0, 0], [self.width, self.height])
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(6, 11))))
            radii = radius * rng.uniform(0.5, 1.2, len(angles))
            polygon = center + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
            mask = self._rasterize(polygon)
            grey = np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.25), rng.uniform(0.2, 0.9)))
            if mask.any():
                self._paint(mask, grey * 255, grain=rng.uniform(2, 10), stripe_amplitude=rng.uniform(0, 20),
                            smooth_amplitude=10)
                blob_mask |= mask
        return blob_mask

    def _shape_polygon(self, name, size, center):
        rng = self.rng
        angle = rng.uniform(0, 2 * np.pi)
        if name == 'circle':
            # Slightly elliptic, so size and aspect vary like real objects.
            t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
            aspect = rng.uniform(0.8, 1.25)
            points = np.stack([np.cos(t) * aspect, np.sin(t) / aspect], 1) * size / 2
        elif name == 'square':
            points = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * size / 2
        else:  # triangle: equilateral, corners jittered a little
            t = np.array([0, 2, 4]) * np.pi / 3
            points = np.stack([np.cos(t), np.sin(t)], 1) * size / np.sqrt(3) * rng.uniform(0.9, 1.1, (3, 1))
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        return center + points @ rotation.T

    def _rasterize(self, polygon):
        mask = np.zeros((self.height, self.width), np.uint8)
        cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
        return mask.astype(bool)

    def _place_shape(self):
        """Try placements until every shape, old and new, stays mostly visible and hole-free; else skip."""
        rng = self.rng
        name = CLASSES[int(rng.integers(len(CLASSES)))]
        for _ in range(PLACEMENT_TRIES):
            size = rng.uniform(*SHAPE_SIZE) * self.unit
            center = rng.uniform([size * 0.4, size * 0.4], [self.width - size * 0.4, self.height - size * 0.4])
            mask = self._rasterize(self._shape_polygon(name, size, center))
            if mask.sum() < self.min_pixels:
                continue
            occluded = [instance['mask'] & ~mask for instance in self.instances]
            if all(self._fits(new, instance) for new, instance in zip(occluded, self.instances)):
                break
        else:
            return
        for new_visible, instance in zip(occluded, self.instances):
            instance['mask'] = new_visible
        hue = (CLASS_HUES[name] + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 360 / 360
        colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95))) * 255
        self._paint(mask, colour, grain=rng.uniform(2, 12), stripe_amplitude=rng.uniform(0, 30),
                    smooth_amplitude=rng.uniform(0, 15))
        self.instances.append({'class': name, 'mask': mask, 'full_area': int(mask.sum())})

    def _fits(self, visible, instance):
        """Enough of an occluded shape remains, in one piece or several, without holes (polygons have none)."""
        if visible.sum() < max(self.min_pixels, MIN_VISIBLE_FRACTION * instance['full_area']):
            return False
        _, hierarchy = cv2.findContours(visible.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        return hierarchy is None or bool((hierarchy[0][:, 3] < 0).all())


def mask_to_coco(mask):
    """A visible mask -> COCO ``segmentation`` (polygons), ``bbox`` (x, y, w, h) and ``area``, or None.

    Slivers that a polygon cannot describe (under 3 corners) are left out, and the box and area are those
    of the polygons, so the three agree.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = [c for c in contours if len(c) >= 3]
    if not contours:
        return None
    covered = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(covered, contours, -1, 1, thickness=cv2.FILLED)
    ys, xs = np.nonzero(covered)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]
    return [c.reshape(-1).astype(float).tolist() for c in contours], bbox, float(covered.sum())


def _scene(kind, split, index, image_size, seed):
    rng = np.random.default_rng([seed, list(SPLITS).index(kind), list(SPLITS[kind]).index(split), index])
    (min_h, max_h), (min_w, max_w) = image_size
    height, width = int(rng.integers(min_h, max_h + 1)), int(rng.integers(min_w, max_w + 1))
    return ShapeScene(rng, height, width)


def _write_image(path, rgb):
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92]):
        raise OSError(f'could not write {path}')


def make_coco(out_dir, splits=None, image_size=((128, 160), (128, 160)), seed=SEED):
    """Write the COCO-format demo set into ``out_dir``: annotations/instances_SPLIT.json and SPLIT/*.jpg."""
    splits = splits or SPLITS['coco']
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    categories = [dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(CLASSES)]
    for split, count in splits.items():
        print(f'demo data: COCO-style {split} split, {count} images -> {out_dir}', flush=True)
        os.makedirs(osp.join(out_dir, split), exist_ok=True)
        images, annotations = [], []
        for index in track_iter_progress(list(range(count))):
            scene = _scene('coco', split, index, image_size, seed)
            file_name = f'{index:06d}.jpg'
            _write_image(osp.join(out_dir, split, file_name), scene.image)
            images.append(dict(id=index + 1, file_name=file_name, height=scene.height, width=scene.width))
            for instance in scene.instances:
                coco_shape = mask_to_coco(instance['mask'])
                if coco_shape is None:
                    continue
                polygons, bbox, area = coco_shape
                annotations.append(dict(id=len(annotations) + 1, image_id=index + 1,
                                        category_id=CLASSES.index(instance['class']) + 1,
                                        segmentation=polygons, bbox=bbox, area=area, iscrowd=0))
        coco = dict(info=dict(description='convnext-mm demo shapes', version=str(FORMAT_VERSION)),
                    licenses=[], images=images, annotations=annotations, categories=categories)
        with open(osp.join(out_dir, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(coco, f)


def make_ade(out_dir, splits=None, image_size=((128, 128), (128, 128)), seed=SEED):
    """Write the ADE20K-format demo set into ``out_dir``: images/SPLIT/*.jpg, annotations/SPLIT/*.png."""
    splits = splits or SPLITS['ade']
    for split, count in splits.items():
        print(f'demo data: ADE20K-style {split} split, {count} images -> {out_dir}', flush=True)
        for folder in ('images', 'annotations'):
            os.makedirs(osp.join(out_dir, folder, split), exist_ok=True)
        for index in track_iter_progress(list(range(count))):
            scene = _scene('ade', split, index, image_size, seed)
            _write_image(osp.join(out_dir, 'images', split, f'{index:06d}.jpg'), scene.image)
            if not cv2.imwrite(osp.join(out_dir, 'annotations', split, f'{index:06d}.png'), scene.label_map()):
                raise OSError(f'could not write a label map under {out_dir}')


MAKERS = {'coco': make_coco, 'ade': make_ade}


def ensure_demo_data(root=DEMO_ROOT, kinds=('coco', 'ade'), force=False, splits=SPLITS):
    """Generate ``root/coco`` and/or ``root/ade`` unless a complete copy of this version is there (see
    :func:`ensure_demo_set`). ``splits`` ({kind: {split: image count}}) defaults to the demo's sizes; tests make
    smaller sets. Returns {kind: folder}."""
    return {kind: ensure_demo_set(kind, osp.join(root, kind), force, splits, ours=True) for kind in kinds}


def ensure_demo_set(kind, folder, force=False, splits=SPLITS, ours=False):
    """Generate the demo's ``kind`` set ('coco' or 'ade') in ``folder`` unless a complete copy of this version
    is there; returns ``folder``.

    The set is written into a temporary folder beside it and renamed into place when complete, so an
    interrupted run never leaves a set that looks finished. A demo set of another version is replaced, and so is
    anything in a folder that is ``ours`` (under the demo's root). Elsewhere a folder that holds anything but a
    demo set is refused, not replaced: a demo config run with ``--cfg-options data_root=PATH`` puts the demo's
    data at PATH, which may be a real dataset by mistake.
    """
    stamp = dict(format_version=FORMAT_VERSION, seed=SEED, splits=splits[kind])
    marker = osp.join(folder, MARKER)
    if osp.isfile(marker):
        with open(marker) as f:
            if not force and json.load(f) == stamp:
                return folder
    elif not ours and osp.isdir(folder) and os.listdir(folder):
        raise ValueError(f'{folder!r} holds files but no demo data (no {MARKER}), so the demo will not write its '
                         f'generated {kind} data there: give a new or empty folder as data_root, or none for '
                         f'{DEMO_ROOT}/{kind}')
    parent = osp.dirname(osp.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{kind}.', dir=parent)
    try:
        MAKERS[kind](tmp, splits[kind])
        with open(osp.join(tmp, MARKER), 'w') as f:
            json.dump(stamp, f)
        if osp.exists(folder):
            shutil.rmtree(folder)  # a stale or partial demo set, or an empty folder: ours to replace
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def main(argv=None):
    parser = argparse.ArgumentParser(description='Generate the demo datasets (COCO and ADE20K formats).')
    parser.add_argument('--root', default=DEMO_ROOT, help=f'output folder (default: {DEMO_ROOT})')
    parser.add_argument('--only', choices=sorted(MAKERS), help='generate one of the two sets')
    parser.add_argument('--force', action='store_true', help='regenerate even if a complete copy exists')
    args = parser.parse_args(argv)
    kinds = (args.only, ) if args.only else tuple(MAKERS)
    for kind, folder in ensure_demo_data(args.root, kinds, args.force).items():
        print(f'demo data: {kind} ready in {folder}')


if __name__ == '__main__':
    main()
