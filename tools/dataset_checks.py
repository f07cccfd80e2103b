"""Checks of a config's data sets, so bad input is found before a run with a message that says the fix.

Without them, a missing data root, a broken annotation file, a listed image that is not on disk or labels
beyond the model's classes surface as deep tracebacks from pycocotools, OpenCV or the loss, sometimes only
hours into training; and COCO categories whose names the config does not list are dropped silently.

``python tools/check_datasets.py CONFIG`` runs ``check_datasets(cfg, ('train', 'val', 'test'))``; the
training and test tools do not (a run reads its data once, as mmdet's and mmseg's own tools do). It builds each
dataset without loading it (``lazy_init``) to learn its resolved paths and classes exactly as mmdet/mmseg will,
then reads the files itself, as they read them (label maps with mmcv's decoder, cast to uint8, as mmseg's
``LoadAnnotations``). Images with no objects are valid: they stay in the data (mmdet's
``filter_cfg.filter_empty_gt`` leaves them out of training batches only).
"""
import json
import os.path as osp

import mmcv
import numpy as np
from mmengine.fileio import get as read_bytes
from mmengine.logging import print_log
from mmengine.registry import DATASETS, DefaultScope

MAX_NAMES_SHOWN = 5
MAX_LABEL_MAPS_READ = 200  # label maps read to find the largest class index (evenly spread over the set)
IGNORE_INDEX = 255

DATA_HELP = {
    'CocoDataset': ('COCO 2017 goes in data/coco/ (annotations/instances_{train,val}2017.json, train2017/, '
                    'val2017/; from https://cocodataset.org)'),
    'ADE20KDataset': ('ADE20K goes in data/ade/ADEChallengeData2016/ (images/{training,validation}/, '
                      'annotations/{training,validation}/; from http://sceneparsing.csail.mit.edu)'),
}
DEMO_HELP = ('To try the model without the dataset, run `make demo` (detection) or `make demo-seg` '
             '(segmentation): they generate a small dataset in these formats under data/demo/ and train on it.')
CHECK_HINT = ('python tools/check_datasets.py CONFIG [--cfg-options ...] checks the config\'s data sets and names '
              'what is missing or malformed. ' + DEMO_HELP)


class DataError(ValueError):
    """A dataset that cannot be used as configured; the message names the file or value and the fix."""


def check_datasets(cfg, splits=('train', 'val')):
    """Check the datasets of ``cfg``'s ``{split}_dataloader`` and ``{split}_evaluator`` for each split; raise
    :class:`DataError`."""
    for split in splits:
        _check_split(cfg, split)


def _check_split(cfg, split):
    loader = cfg.get(f'{split}_dataloader')
    if loader:
        for dataset_cfg in leaf_datasets(loader['dataset']):
            with DefaultScope.overwrite_default_scope(cfg.get('default_scope')):
                dataset = DATASETS.build(dict(dataset_cfg, lazy_init=True))
            _check_data_root(dataset)
            if 'seg_map_path' in dataset.data_prefix:  # mmseg's BaseSegDataset and its subclasses
                _check_seg_dataset(dataset, cfg.model, split)
            elif str(dataset.ann_file).endswith('.json'):  # mmdet's COCO-format datasets
                _check_coco_dataset(dataset, cfg.model, split, dataset_cfg.get('filter_cfg'))
        evaluator = cfg.get(f'{split}_evaluator')
        for metric in evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]:
            ann_file = metric.get('ann_file') if isinstance(metric, dict) else None
            if ann_file and not osp.isfile(ann_file):
                raise DataError(f'{split}_evaluator.ann_file {ann_file!r} does not exist: point it at the '
                                f'annotation file of the {split} data. {DEMO_HELP}')


def leaf_datasets(dataset_cfg):
    """The dataset configs inside wrappers (RepeatDataset, ClassBalancedDataset, ConcatDataset, ...), or the
    config itself; the same objects, to read or change in place."""
    if 'datasets' in dataset_cfg:
        return [leaf for inner in dataset_cfg['datasets'] for leaf in leaf_datasets(inner)]
    if 'dataset' in dataset_cfg:
        return leaf_datasets(dataset_cfg['dataset'])
    return [dataset_cfg]


def _listing(names):
    names = list(names)
    more = f' and {len(names) - MAX_NAMES_SHOWN} more' if len(names) > MAX_NAMES_SHOWN else ''
    return ', '.join(str(n) for n in names[:MAX_NAMES_SHOWN]) + more


def _check_data_root(dataset):
    root = dataset.data_root
    if root and not osp.isdir(root):
        help_text = DATA_HELP.get(type(dataset).__name__, 'Put the dataset there or set data_root in the config')
        raise DataError(f'Data root {root!r} of {type(dataset).__name__} does not exist. {help_text}; or point '
                        f'data_root at it with --cfg-options. {DEMO_HELP}')


def _head_class_counts(model_cfg, path='model'):
    """(where, num_classes) of every classifying head in a model config (rpn_head is class-agnostic)."""
    counts = []
    if isinstance(model_cfg, dict):
        for key, value in model_cfg.items():
            where = f'{path}.{key}'
            if key in ('bbox_head', 'mask_head', 'decode_head', 'auxiliary_head'):
                for i, head in enumerate(value if isinstance(value, (list, tuple)) else [value]):
                    if isinstance(head, dict) and 'num_classes' in head:
                        counts.append((f'{where}[{i}]' if isinstance(value, (list, tuple)) else where,
                                       head['num_classes']))
            counts += _head_class_counts(value, where)
    return counts


def _check_class_count(classes, model_cfg, source):
    wrong = [(where, n) for where, n in _head_class_counts(model_cfg) if n != len(classes)]
    if wrong:
        raise DataError(f'{source} has {len(classes)} classes ({_listing(classes)}) but the config\'s '
                        + '; '.join(f'{where}.num_classes={n}' for where, n in wrong)
                        + f'. Set num_classes={len(classes)} in every head, e.g. with --cfg-options.')


def _read_coco(path):
    if not osp.isfile(path):
        raise DataError(f'Annotation file {path!r} does not exist: check data_root and ann_file. {DEMO_HELP}')
    try:
        with open(path, encoding='utf-8') as f:
            coco = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f'Annotation file {path!r} could not be read as JSON ({error}); it may be truncated '
                        'or not an annotation file: download or write it again.') from error
    problem = None
    if not isinstance(coco, dict):
        problem = f'the file holds a {type(coco).__name__}, not an object'
    elif any(not isinstance(coco.get(key), list) for key in ('images', 'annotations', 'categories')):
        problem = f'it lacks a list "images", "annotations" or "categories" (its keys: {_listing(coco)})'
    else:
        fields = {'images': ('id', 'file_name', 'height', 'width'), 'annotations': ('id', 'image_id',
                  'category_id', 'bbox'), 'categories': ('id', 'name')}
        for key, required in fields.items():
            bad = [i for i, entry in enumerate(coco[key]) if not isinstance(entry, dict) or
                   any(field not in entry for field in required)]
            if bad:
                problem = f'{key}[{bad[0]}] lacks one of the fields {", ".join(required)}'
                break
        else:
            image_ids, category_ids = {i['id'] for i in coco['images']}, {c['id'] for c in coco['categories']}
            orphans = [a['id'] for a in coco['annotations']
                       if a['image_id'] not in image_ids or a['category_id'] not in category_ids]
            if orphans:
                problem = f'annotations {_listing(orphans)} refer to an image or category id that is not listed'
    if problem:
        raise DataError(f'Annotation file {path!r} is not in the COCO format: {problem}. See '
                        'https://cocodataset.org/#format-data')
    return coco


def _check_coco_dataset(dataset, model_cfg, split, filter_cfg):
    coco = _read_coco(dataset.ann_file)
    image_dir = dataset.data_prefix.get('img', '')
    missing = [image['file_name'] for image in coco['images']
               if not osp.isfile(osp.join(image_dir, image['file_name']))]
    if missing:
        raise DataError(f'{len(missing)} of the {len(coco["images"])} images listed in {dataset.ann_file} are '
                        f'not in {image_dir!r}: {_listing(missing)}. Check data_prefix.img, or remove them from '
                        'the annotation file.')
    file_classes = [c['name'] for c in coco['categories']]
    classes = list(dataset.metainfo['classes'])
    # mmdet keeps the categories the config names, numbered in the file's order: a subset of the file's is
    # fine, a class the file lacks or another order mislabels the data.
    kept = [name for name in file_classes if name in classes]
    if kept != classes:
        absent = [name for name in classes if name not in file_classes]
        problem = (f'{len(absent)} of them are not in the file ({_listing(absent)})' if absent else
                   'in another order than the file\'s (mmdet numbers them in the file\'s order)')
        raise DataError(f'{dataset.ann_file} has {len(file_classes)} categories ({_listing(file_classes)}) but '
                        f'the config lists {len(classes)} classes ({_listing(classes)}), {problem}. Set '
                        f'{split}_dataloader.dataset.metainfo=dict(classes={tuple(kept or file_classes)!r}) (the '
                        'file\'s names, in its order; a subset is fine) and num_classes in every head to match.')
    _check_class_count(classes, model_cfg, dataset.ann_file)
    kept_ids = {c['id'] for c in coco['categories'] if c['name'] in classes}
    if len(kept) < len(file_classes):
        left_out = [name for name in file_classes if name not in classes]
        print_log(f'{dataset.ann_file}: the config uses {len(kept)} of its {len(file_classes)} categories; the '
                  f'objects of the other {len(left_out)} ({_listing(left_out)}) are left out.', logger='current')
    with_objects = {a['image_id'] for a in coco['annotations'] if a['category_id'] in kept_ids}
    empty = len(coco['images']) - len({i['id'] for i in coco['images']} & with_objects)
    if empty:
        dropped = not dataset.test_mode and (filter_cfg or {}).get('filter_empty_gt', False)
        print_log(f'{dataset.ann_file}: {empty} of {len(coco["images"])} images have no objects; '
                  + ('filter_cfg.filter_empty_gt leaves them out of training.' if dropped else 'they are kept.'),
                  logger='current')
        if dropped and empty == len(coco['images']):
            raise DataError(f'No image in {dataset.ann_file} has objects, so filter_empty_gt leaves nothing to '
                            'train on: check the annotations.')


def _seg_names(dataset):
    """(image path, label map path) of each sample, as mmseg's BaseSegDataset.load_data_list finds them."""
    image_dir, label_dir = dataset.data_prefix['img_path'], dataset.data_prefix['seg_map_path']
    for folder, what in ((image_dir, 'image'), (label_dir, 'label map')):
        if not osp.isdir(folder):
            raise DataError(f'The {what} folder {folder!r} does not exist: check data_root and data_prefix. '
                            f'{DEMO_HELP}')
    if dataset.ann_file and not osp.isdir(dataset.ann_file):
        if not osp.isfile(dataset.ann_file):
            raise DataError(f'Split file {dataset.ann_file!r} does not exist: check ann_file.')
        with open(dataset.ann_file) as f:
            stems = [line.strip() for line in f if line.strip()]
    else:
        from mmengine.fileio import list_dir_or_file
        stems = sorted(name[:-len(dataset.img_suffix)] for name in list_dir_or_file(
            image_dir, list_dir=False, suffix=dataset.img_suffix, recursive=True))
    if not stems:
        raise DataError(f'No {dataset.img_suffix} images in {image_dir!r}. {DEMO_HELP}')
    return [(osp.join(image_dir, s + dataset.img_suffix), osp.join(label_dir, s + dataset.seg_map_suffix))
            for s in stems]


def _check_seg_dataset(dataset, model_cfg, split):
    samples = _seg_names(dataset)
    for kind, index in (('images', 0), ('label maps', 1)):
        missing = [sample[index] for sample in samples if not osp.isfile(sample[index])]
        if missing:
            raise DataError(f'{len(missing)} of the {len(samples)} {kind} of the {split} set are missing: '
                            f'{_listing(missing)}. Every image needs its label map (same name, '
                            f'{dataset.seg_map_suffix}).')
    classes = list(dataset.metainfo['classes'])
    _check_class_count(classes, model_cfg, f'The {split} dataset ({type(dataset).__name__})')
    largest, largest_at = -1, None
    step = max(1, len(samples) // MAX_LABEL_MAPS_READ)
    for _, label_path in samples[::step]:
        values = _train_labels(np.unique(_read_label_map(label_path, dataset)), dataset)
        values = values[values != IGNORE_INDEX]
        if values.size and values.max() > largest:
            largest, largest_at = int(values.max()), label_path
    if largest >= len(classes):
        zero = ' (after reduce_zero_label: stored value - 1)' if dataset.reduce_zero_label else ''
        raise DataError(f'Label map {largest_at!r} holds class index {largest}{zero}, but the config has '
                        f'{len(classes)} classes ({_listing(classes)}). Give the dataset metainfo all the data\'s '
                        'classes and set num_classes in every head to match, or fix reduce_zero_label.')


def _read_label_map(path, dataset):
    """A label map as mmseg's ``LoadAnnotations`` reads it (mmcv's decoder, Pillow by default: a palette PNG
    gives its indices), before its cast to uint8, which would silently wrap values above 255."""
    backend = next((t.imdecode_backend for t in getattr(dataset.pipeline, 'transforms', [])
                    if type(t).__name__ == 'LoadAnnotations' and hasattr(t, 'imdecode_backend')), 'pillow')
    try:
        labels = mmcv.imfrombytes(read_bytes(path), flag='unchanged', backend=backend).squeeze()
    except Exception as error:  # noqa: BLE001  whatever the decoder raises, the file is not a label map
        labels, reason = None, f' ({type(error).__name__}: {error})'
    else:
        reason = ''
    if labels is None or labels.ndim != 2:
        raise DataError(f'Label map {path!r} could not be read as a single-channel image{reason}: write it '
                        'again as an 8-bit PNG of class indices.')
    if labels.max() > np.iinfo(np.uint8).max:
        raise DataError(f'Label map {path!r} holds values up to {labels.max()} ({labels.dtype}), but mmseg casts '
                        'label maps to uint8, which turns them into other classes (value % 256): write it as an '
                        '8-bit PNG of class indices 0..255 (255 is ignored).')
    return labels.astype(np.uint8)


def _train_labels(values, dataset):
    """Stored label values -> class indices, as mmseg's LoadAnnotations maps them."""
    values = values.astype(np.int64)
    if dataset.reduce_zero_label:
        values = np.where((values == 0) | (values == IGNORE_INDEX), IGNORE_INDEX, values - 1)
    label_map = dataset.metainfo.get('label_map')
    if label_map:
        values = np.array([label_map.get(v, v) for v in values])
    return values
