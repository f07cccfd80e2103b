"""Tiny data sets on disk for the tools' tests: COCO-format instances (mmdet's layout) and ADE20K-format label
maps (mmseg's layout) of a few 64x64 images, the same bytes on every run."""
import json
import os
import os.path as osp

import cv2
import numpy as np

IMAGE_SIZE = 64


def write_coco(root, splits=('train2017', 'val2017'), classes=None, num_images=4):
    """``root/SPLIT/I.jpg`` and ``root/annotations/instances_SPLIT.json``: each image noise with one bright
    rectangle, its box and polygon, of class 1 + I % 3. ``classes``: the category names (COCO's 80 when None)."""
    if classes is None:
        from mmdet.datasets import CocoDataset
        classes = CocoDataset.METAINFO['classes']
    rng = np.random.default_rng(0)
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(classes)]
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    for split in splits:
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, annotations = [], []
        for i in range(num_images):
            image = rng.integers(0, 80, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
            x, y = (int(v) for v in rng.integers(4, 24, 2))
            w, h = (int(v) for v in rng.integers(16, 36, 2))
            image[y:y + h, x:x + w] = 230
            cv2.imwrite(osp.join(root, split, f'{i}.jpg'), image)
            images.append(dict(id=i + 1, file_name=f'{i}.jpg', height=IMAGE_SIZE, width=IMAGE_SIZE))
            annotations.append(
                dict(id=i + 1, image_id=i + 1, category_id=1 + i % 3, bbox=[x, y, w, h], area=w * h, iscrowd=0,
                     segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]]))
        with open(osp.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            # pycocotools 2.0.10 copies 'info' into its result sets: a file without it fails evaluation.
            json.dump(dict(info={}, licenses=[], images=images, annotations=annotations, categories=categories), f)
    return root


def write_ade(root, splits=('training', 'validation'), num_images=2):
    """``root/images/SPLIT/ADE_I.jpg`` and ``root/annotations/SPLIT/ADE_I.png``: label 1 everywhere (0 is
    ignored, 1..150 are the classes) and 2 + I in a rectangle, the image brighter with the label."""
    rng = np.random.default_rng(0)
    for split in splits:
        os.makedirs(osp.join(root, 'images', split), exist_ok=True)
        os.makedirs(osp.join(root, 'annotations', split), exist_ok=True)
        for i in range(num_images):
            labels = np.ones((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
            labels[16:48, 8:40] = 2 + i
            image = (labels[..., None] * 60 + rng.integers(0, 30, (IMAGE_SIZE, IMAGE_SIZE, 3))).astype(np.uint8)
            cv2.imwrite(osp.join(root, 'images', split, f'ADE_{i}.jpg'), image)
            cv2.imwrite(osp.join(root, 'annotations', split, f'ADE_{i}.png'), labels)
    return root
