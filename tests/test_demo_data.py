"""The demo dataset: deterministic, written atomically, and read by mmdet's and mmseg's own dataset classes."""
import json
import os
import os.path as osp

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from convnext_mm.demo_data import CLASSES, MARKER, SEG_CLASSES, ensure_demo_data, make_ade, make_coco

SMALL = {'coco': {'train': 12, 'val': 4}, 'ade': {'training': 6, 'validation': 3}}


def _files(root):
    found = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = osp.join(folder, name)
            with open(path, 'rb') as f:
                found[osp.relpath(path, root)] = f.read()
    return found


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    ensure_demo_data(str(root), splits=SMALL)
    return root


def test_generation_is_deterministic(tmp_path, demo_root):
    make_coco(str(tmp_path / 'coco'), SMALL['coco'])
    make_ade(str(tmp_path / 'ade'), SMALL['ade'])
    again = _files(tmp_path)
    first = {k: v for k, v in _files(demo_root).items() if not k.endswith(MARKER)}
    assert again.keys() == first.keys()
    assert all(again[k] == first[k] for k in first)
    make_coco(str(tmp_path / 'other_seed'), SMALL['coco'], seed=1)
    assert _files(tmp_path / 'other_seed')['train/000000.jpg'] != first['coco/train/000000.jpg']


def test_existing_complete_copy_is_kept_and_partial_one_replaced(demo_root):
    image = demo_root / 'coco' / 'train' / '000000.jpg'
    before = image.stat().st_mtime_ns
    ensure_demo_data(str(demo_root), kinds=('coco', ), splits=SMALL)
    assert image.stat().st_mtime_ns == before  # complete: not written again
    (demo_root / 'coco' / MARKER).unlink()  # as if generation had been cut short
    ensure_demo_data(str(demo_root), kinds=('coco', ), splits=SMALL)
    assert (demo_root / 'coco' / MARKER).is_file()
    assert not [p for p in os.listdir(demo_root) if p.startswith('.')]  # no temporary folders left


def test_coco_annotations_are_consistent_polygons(demo_root):
    coco = json.loads((demo_root / 'coco' / 'annotations' / 'instances_train.json').read_text())
    assert [c['name'] for c in coco['categories']] == list(CLASSES)
    images = {i['id']: i for i in coco['images']}
    assert {a['category_id'] for a in coco['annotations']} == {1, 2, 3}
    for ann in coco['annotations']:
        image = images[ann['image_id']]
        assert all(len(polygon) >= 6 for polygon in ann['segmentation'])
        rles = mask_utils.frPyObjects(ann['segmentation'], image['height'], image['width'])
        mask = mask_utils.decode(mask_utils.merge(rles))
        # box = the polygons' extent (in pixels), area = theirs up to the border pixels pycocotools leaves out
        x, y, w, h = ann['bbox']
        points = np.concatenate([np.reshape(polygon, (-1, 2)) for polygon in ann['segmentation']])
        assert (x, y, x + w - 1, y + h - 1) == (*points.min(0), *points.max(0))
        assert 0 <= x and 0 <= y and x + w <= image['width'] and y + h <= image['height']
        assert abs(int(mask.sum()) - ann['area']) <= 0.35 * ann['area']


def test_coco_loads_through_mmdet_coco_dataset(demo_root):
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules
    register_all_modules()
    dataset = CocoDataset(
        data_root=str(demo_root / 'coco'),
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        metainfo=dict(classes=CLASSES),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
            dict(type='PackDetInputs')
        ])
    assert len(dataset) == SMALL['coco']['train']
    sample = next(dataset[i] for i in range(len(dataset)) if len(dataset[i]['data_samples'].gt_instances))
    instances = sample['data_samples'].gt_instances
    assert sample['inputs'].shape[0] == 3
    assert instances.masks.to_ndarray().shape[1:] == tuple(sample['inputs'].shape[1:])
    assert set(instances.labels.tolist()) <= {0, 1, 2}


def test_ade_loads_through_mmseg_ade20k_dataset(demo_root):
    from mmseg.datasets import ADE20KDataset, BaseSegDataset
    from mmseg.utils import register_all_modules
    register_all_modules()
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
    split = dict(img_path='images/validation', seg_map_path='annotations/validation')
    ade = ADE20KDataset(data_root=str(demo_root / 'ade'), data_prefix=split, pipeline=pipeline)
    assert len(ade) == SMALL['ade']['validation']
    labels = ade[0]['data_samples'].gt_sem_seg.data
    # reduce_zero_label: stored 0 (unlabeled blobs) -> 255, 1..4 -> 0..3
    assert set(labels.unique().tolist()) <= {0, 1, 2, 3, 255} and 0 in labels
    # With the demo's own class names, through the base class the demo configs use.
    demo = BaseSegDataset(data_root=str(demo_root / 'ade'), data_prefix=split, pipeline=pipeline,
                          img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True,
                          metainfo=dict(classes=SEG_CLASSES))
    assert demo[0]['data_samples'].gt_sem_seg.data.equal(labels)
