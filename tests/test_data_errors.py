"""Bad input data is found before a run (tools/check_datasets.py), with a message naming the file or value
and the fix; images with no objects are valid and go through training and evaluation."""
import json
import os.path as osp
import shutil

import pytest
from mmengine.config import Config

from convnext_mm.demo_data import CLASSES, SEG_CLASSES, make_ade, make_coco
from project import CASCADE_T, ROOT, UPERNET_T, load_tool
from tiny_models import shrink_cascade
from dataset_checks import DataError, check_datasets  # noqa: E402  tools/dataset_checks.py, on sys.path through project
SMALL_COCO = {'train': 6, 'val': 3}
SMALL_ADE = {'training': 4, 'validation': 2}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    make_coco(str(root / 'coco'), SMALL_COCO, image_size=((96, 128), (96, 128)))
    make_ade(str(root / 'ade'), SMALL_ADE, image_size=((64, 64), (64, 64)))
    return root


@pytest.fixture
def coco_root(data, tmp_path):
    """A fresh copy of the small COCO-format set, for a test to break."""
    shutil.copytree(data / 'coco', tmp_path / 'coco')
    return tmp_path / 'coco'


@pytest.fixture
def ade_root(data, tmp_path):
    shutil.copytree(data / 'ade', tmp_path / 'ade')
    return tmp_path / 'ade'


def det_config(coco_root, classes=CLASSES, num_classes=len(CLASSES)):
    """The cascade ConvNeXt-T config on the given COCO-format data."""
    cfg = Config.fromfile(CASCADE_T)
    for split in ('train', 'val'):
        cfg[f'{split}_dataloader'].dataset.update(
            data_root=str(coco_root), ann_file=f'annotations/instances_{split}.json',
            data_prefix=dict(img=f'{split}/'), metainfo=dict(classes=classes))
    cfg.val_evaluator.ann_file = str(coco_root / 'annotations' / 'instances_val.json')
    for head in cfg.model.roi_head.bbox_head:
        head.num_classes = num_classes
    cfg.model.roi_head.mask_head.num_classes = num_classes
    return cfg


def seg_config(ade_root, num_classes=len(SEG_CLASSES)):
    """The UperNet ConvNeXt-T config on the given ADE20K-format data, with the demo's classes."""
    cfg = Config.fromfile(UPERNET_T)
    for split, folder in (('train', 'training'), ('val', 'validation')):
        cfg[f'{split}_dataloader'].dataset.update(
            type='BaseSegDataset', data_root=str(ade_root), img_suffix='.jpg', seg_map_suffix='.png',
            reduce_zero_label=True, metainfo=dict(classes=SEG_CLASSES),
            data_prefix=dict(img_path=f'images/{folder}', seg_map_path=f'annotations/{folder}'))
    cfg.model.decode_head.num_classes = num_classes
    cfg.model.auxiliary_head.num_classes = num_classes
    return cfg


def test_good_data_passes(coco_root, ade_root):
    check_datasets(det_config(coco_root))
    check_datasets(seg_config(ade_root))


def test_missing_data_root_says_where_data_goes_and_how_to_run_the_demo(tmp_path, monkeypatch):
    cfg = Config.fromfile(CASCADE_T)  # data/coco/ relative to the working directory
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"(?s)Data root 'data/coco/'.*data/coco/.*train2017.*make demo"):
        check_datasets(cfg)
    with pytest.raises(DataError, match=r'(?s)ADEChallengeData2016.*make demo-seg'):
        check_datasets(Config.fromfile(UPERNET_T))


@pytest.mark.parametrize('content, message', [
    (b'\x89PNG\r\n\x1a\n\x00\x00 not json', 'could not be read as JSON'),
    (b'{"images": [], "annotations": [', 'could not be read as JSON'),  # truncated
    (b'[1, 2, 3]', 'not in the COCO format: the file holds a list'),
    (b'{"images": [], "categories": []}', 'not in the COCO format: it lacks a list "images", "annotations"'),
])
def test_unreadable_or_non_coco_annotation_file(coco_root, content, message):
    (coco_root / 'annotations' / 'instances_train.json').write_bytes(content)
    with pytest.raises(DataError, match=message) as error:
        check_datasets(det_config(coco_root))
    assert 'instances_train.json' in str(error.value)


def test_annotation_file_missing(coco_root):
    (coco_root / 'annotations' / 'instances_val.json').unlink()
    with pytest.raises(DataError, match="instances_val.json' does not exist"):
        check_datasets(det_config(coco_root))


def test_annotation_with_unknown_image(coco_root):
    path = coco_root / 'annotations' / 'instances_train.json'
    coco = json.loads(path.read_text())
    coco['annotations'][0]['image_id'] = 999
    path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match='refer to an image or category id that is not listed'):
        check_datasets(det_config(coco_root))


def test_listed_image_missing(coco_root, ade_root):
    (coco_root / 'train' / '000003.jpg').unlink()
    with pytest.raises(DataError, match=r'1 of the 6 images listed in .*instances_train.json are not in .*000003.jpg'):
        check_datasets(det_config(coco_root))
    (ade_root / 'annotations' / 'training' / '000001.png').unlink()
    with pytest.raises(DataError, match=r'1 of the 4 label maps of the train set are missing: .*000001.png'):
        check_datasets(seg_config(ade_root))


def test_unreadable_label_map(ade_root):
    (ade_root / 'annotations' / 'validation' / '000000.png').write_bytes(b'not a png')
    with pytest.raises(DataError, match='000000.png.* could not be read'):
        check_datasets(seg_config(ade_root))


def test_class_names_differ_between_data_and_config(coco_root):
    cfg = det_config(coco_root)
    for split in ('train', 'val'):
        cfg[f'{split}_dataloader'].dataset.pop('metainfo')  # COCO's 80 classes
    with pytest.raises(DataError, match=r"has 3 categories \(circle, square, triangle\) but the config lists 80 "
                                        r"classes.*metainfo=dict\(classes=\('circle', 'square', 'triangle'\)\)"):
        check_datasets(cfg)


def test_class_count_differs_between_data_and_model(coco_root, ade_root):
    with pytest.raises(DataError, match=r'has 3 classes .* model.roi_head.bbox_head\[0\].num_classes=80; .*'
                                        r'model.roi_head.mask_head.num_classes=80'):
        check_datasets(det_config(coco_root, num_classes=80))
    with pytest.raises(DataError, match=r'4 classes .*model.decode_head.num_classes=150'):
        check_datasets(seg_config(ade_root, num_classes=150))


def test_label_values_beyond_the_config_classes(ade_root):
    import cv2
    path = str(ade_root / 'annotations' / 'training' / '000002.png')
    labels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    labels[:4, :4] = 9  # class index 8 after reduce_zero_label; the config has 4 classes
    cv2.imwrite(path, labels)
    with pytest.raises(DataError, match=r'000002.png.* holds class index 8 .*reduce_zero_label.* 4 classes'):
        check_datasets(seg_config(ade_root))


def _empty_some_images(coco_root, split, image_ids):
    path = coco_root / 'annotations' / f'instances_{split}.json'
    coco = json.loads(path.read_text())
    coco['annotations'] = [a for a in coco['annotations'] if a['image_id'] not in image_ids]
    path.write_text(json.dumps(coco))


def test_images_without_objects_are_kept_and_train_and_evaluate(coco_root, tmp_path, one_thread):
    from mmengine.runner import Runner
    _empty_some_images(coco_root, 'train', {1, 2, 3, 4, 5, 6})  # every training image
    _empty_some_images(coco_root, 'val', {1})
    cfg = det_config(coco_root)
    with pytest.raises(DataError, match='No image in .*instances_train.json has objects, so filter_empty_gt'):
        check_datasets(cfg)
    # Kept when the config keeps them: they train (no positive RoIs) and the metric counts them.
    cfg.train_dataloader.dataset.filter_cfg = dict(filter_empty_gt=False)
    check_datasets(cfg)
    shrink_cascade(cfg, len(CLASSES))
    tiny = dict(
        optim_wrapper=dict(type='OptimWrapper', paramwise_cfg=dict(num_layers=6)),
        train_dataloader=dict(batch_size=2, num_workers=0, persistent_workers=False),
        val_dataloader=dict(num_workers=0, persistent_workers=False),
        train_cfg=dict(max_epochs=1, val_interval=1), work_dir=str(tmp_path / 'work'))
    cfg.merge_from_dict(tiny)
    for loader in ('train_dataloader', 'val_dataloader'):
        pipeline = cfg[loader].dataset.pipeline
        for transform in pipeline:
            if transform.type in ('Resize', 'RandomChoice'):
                pipeline[pipeline.index(transform)] = dict(type='Resize', scale=(128, 128), keep_ratio=True)
    cfg.test_dataloader = cfg.val_dataloader
    runner = Runner.from_cfg(cfg)
    runner.train()  # 3 iterations on images without objects, then validation on 3 images, 1 empty
    assert runner.iter == 3
    metrics = runner.val()
    assert 'coco/bbox_mAP' in metrics and 'coco/segm_mAP' in metrics


def _edit_coco(coco_root, split, edit):
    path = coco_root / 'annotations' / f'instances_{split}.json'
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))


def test_annotation_lacking_a_field(coco_root):
    _edit_coco(coco_root, 'train', lambda coco: coco['annotations'][2].pop('bbox'))
    with pytest.raises(DataError, match=r'instances_train.json.* not in the COCO format: annotations\[2\] lacks one '
                                        r'of the fields id, image_id, category_id, bbox'):
        check_datasets(det_config(coco_root))


def test_annotation_with_an_unknown_category_id(coco_root):
    unknown = {}

    def edit(coco):
        coco['annotations'][1]['category_id'] = 99
        unknown['id'] = coco['annotations'][1]['id']

    _edit_coco(coco_root, 'val', edit)
    with pytest.raises(DataError, match=rf"instances_val.json.*: annotations {unknown['id']} refer to an image or "
                                        r'category id that is not listed'):
        check_datasets(det_config(coco_root))


def test_a_subset_of_the_file_categories_in_its_order_is_accepted(coco_root):
    # The file's categories: circle, square, triangle (mmdet numbers the kept ones in this order).
    check_datasets(det_config(coco_root, classes=('circle', 'triangle'), num_classes=2))
    with pytest.raises(DataError, match=r"in another order than the file's.*classes=\('circle', 'triangle'\)"):
        check_datasets(det_config(coco_root, classes=('triangle', 'circle'), num_classes=2))
    with pytest.raises(DataError, match=r'1 of them are not in the file \(hexagon\)'):
        check_datasets(det_config(coco_root, classes=('circle', 'hexagon'), num_classes=2))


def test_split_file_lists_the_samples(ade_root):
    cfg = seg_config(ade_root)
    cfg.train_dataloader.dataset.ann_file = 'train.txt'  # under data_root, one image name (no suffix) a line
    with pytest.raises(DataError, match=r"Split file '.*train.txt' does not exist"):
        check_datasets(cfg)
    (ade_root / 'train.txt').write_text('000000\n000002\n')
    check_datasets(cfg)
    (ade_root / 'train.txt').write_text('000000\n000002\n000007\n')
    with pytest.raises(DataError, match=r'1 of the 3 images of the train set are missing: .*000007.jpg'):
        check_datasets(cfg)


def test_empty_image_folder(ade_root):
    for image in (ade_root / 'images' / 'validation').iterdir():
        image.unlink()
    with pytest.raises(DataError, match=r"No .jpg images in '.*images/validation'.*make demo-seg"):
        check_datasets(seg_config(ade_root))


def test_datasets_inside_wrappers_are_checked(coco_root, ade_root):
    cfg = det_config(coco_root)
    cfg.train_dataloader.dataset = dict(type='RepeatDataset', times=2, dataset=cfg.train_dataloader.dataset)
    check_datasets(cfg)
    (coco_root / 'train' / '000001.jpg').unlink()
    with pytest.raises(DataError, match=r'1 of the 6 images listed in .*instances_train.json are not in'):
        check_datasets(cfg)

    cfg = seg_config(ade_root)
    good = cfg.val_dataloader.dataset
    bad = dict(good, data_prefix=dict(img_path='images/validation', seg_map_path='annotations/nowhere'))
    cfg.val_dataloader.dataset = dict(type='ConcatDataset', datasets=[good, bad])
    with pytest.raises(DataError, match=r"label map folder '.*annotations/nowhere' does not exist"):
        check_datasets(cfg)


def test_label_map_of_a_class_subset_is_applied(ade_root):
    """ADE20K's class names, two of them in the config: mmseg maps the others to 255 (ignored)."""
    import cv2
    cfg = seg_config(ade_root, num_classes=2)
    for split in ('train', 'val'):
        cfg[f'{split}_dataloader'].dataset.update(type='ADE20KDataset', metainfo=dict(classes=('wall', 'floor')))
    # Stored values 1..4 (reduce_zero_label: ADE20K's classes 0..3, wall building sky floor) and 60 (class 59):
    # the config's classes 0 (wall) and 1 (floor), the others ignored.
    path = str(ade_root / 'annotations' / 'training' / '000001.png')
    labels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    labels[:4, :4] = 60
    cv2.imwrite(path, labels)
    check_datasets(cfg)
    cfg.model.decode_head.num_classes = cfg.model.auxiliary_head.num_classes = 1
    with pytest.raises(DataError, match=r'has 2 classes \(wall, floor\)'):
        check_datasets(cfg)


def test_label_maps_are_read_as_mmseg_reads_them(ade_root):
    """With Pillow (a palette PNG gives its indices, where OpenCV would expand its colours), cast to uint8."""
    import numpy as np
    from PIL import Image
    path = ade_root / 'annotations' / 'training' / '000001.png'
    labels = np.array(Image.open(path))
    palette = Image.fromarray(labels, mode='P')
    palette.putpalette([value for i in range(256) for value in (i * 37 % 256, i * 91 % 256, i * 53 % 256)])
    palette.save(path)
    check_datasets(seg_config(ade_root))

    wide = labels.astype(np.uint16)
    wide[:2, :2] = 258  # mmseg's uint8 cast would read class 2
    Image.fromarray(wide).save(path)
    with pytest.raises(DataError, match=r'000001.png.* holds values up to 258 \(uint16\).* casts label maps to uint8'):
        check_datasets(seg_config(ade_root))


def test_check_datasets_tool_passes_good_data_and_names_the_fix_for_bad(coco_root, tmp_path, capsys):
    """tools/check_datasets.py: the checks on a config file, data_root moved with --cfg-options."""
    tool = load_tool('check_datasets')
    config = tmp_path / 'shapes.py'
    config.write_text(f"""_base_ = {osp.join(ROOT, 'configs', 'demo', 'cascade_convnext_t_demo.py')!r}
custom_hooks = []  # no DemoDataHook: the data is the test's
""")
    tool.main([str(config), '--cfg-options', f'data_root={coco_root}'])
    assert 'the train, val, test data sets passed the checks' in capsys.readouterr().out
    (coco_root / 'val' / '000001.jpg').unlink()
    with pytest.raises(SystemExit) as exit_info:
        tool.main([str(config), '--splits', 'val', '--cfg-options', f'data_root={coco_root}'])
    assert str(exit_info.value.code).startswith('error: 1 of the 3 images listed') and '000001.jpg' in \
        str(exit_info.value.code)
