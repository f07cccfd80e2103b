"""The whole detector as one ONNX file: tools/whole_detector.py computes what mmdet's ``predict`` computes, and
the file tools/export_onnx.py writes gives, through tools/deploy_infer.py in ONNX Runtime and OpenVINO, the
detections tools/infer.py gives through mmdet's DetInferencer.

Tiny Mask R-CNN and Cascade Mask R-CNN (tests/tiny_models.py, the smallest backbone) with heads whose outputs
spread: mmdet's initialization gives every class of every RoI nearly the same score and every mask a
probability near the 0.5 threshold, where a 1e-7 difference between engines decides; a random one saturates
scores at 1, where ties decide. The Mask R-CNN's classifier leans to the background, so that a black image has
no detection while the others have some."""
import json
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from project import CASCADE_T, MASK_RCNN_T, load_tool
from tiny_models import SMALLEST_ARCH, build_model, shrink_cascade
from config_utils import load_config  # noqa: E402  tools/config_utils.py, on sys.path through project
from deployment_parity import compare  # noqa: E402  benchmarks/, on sys.path through project
from whole_detector import WholeDetector  # noqa: E402

CLASSES = ('cat', 'dog', 'bird')
TEST_SCALE = (96, 64)  # the test pipeline's Resize: images fit 96x64
MAX_PER_IMAGE = 5
# (height, width) of the test images: resized to 64x96 (a multiple of 32), 61x96 and 58x91 (not), 9x96 (extreme)
IMAGE_SHAPES = {'photo': (64, 96), 'odd': (83, 131), 'portrait': (140, 88), 'strip': (20, 210)}
BLACK = 'black'


def spread_heads(model, background_bias):
    """In place: classifier, box regressor and mask logits drawn wider than mmdet's initialization, layer
    scales at 0.5, and the background's logit raised by ``background_bias``."""
    generator = torch.Generator().manual_seed(0)
    widths = {'fc_cls.weight': 1.0 if background_bias else 0.05, 'bbox_pred.weight': 0.01,
              'conv_logits.weight': 2.0, 'rpn_cls.weight': 0.05, 'rpn_reg.weight': 0.02}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            for suffix, std in widths.items():
                if name.endswith(suffix):
                    parameter.normal_(0, std, generator=generator)
            if name.endswith('gamma'):
                parameter.fill_(0.5)
            if name.endswith('fc_cls.bias'):
                parameter[-1] += background_bias
    return model


def tiny_detector(base, tmp_path, background_bias=0.0):
    """(config file, checkpoint file, model) of a tiny detector of ``base`` (configs/cascade or mask_rcnn)."""
    cfg = shrink_cascade(load_config(base), len(CLASSES))
    cfg.model.backbone.update(arch=SMALLEST_ARCH)
    cfg.model.neck.in_channels = SMALLEST_ARCH['dims']
    cfg.model.test_cfg.rcnn.score_thr = 0.05
    for transform in cfg.test_dataloader.dataset.pipeline:
        if transform['type'] == 'Resize':
            transform['scale'] = TEST_SCALE
    config = str(tmp_path / 'tiny.py')
    cfg.dump(config)
    torch.manual_seed(0)
    model = spread_heads(build_model(cfg), background_bias)
    checkpoint = str(tmp_path / 'tiny.pth')
    torch.save(dict(meta=dict(dataset_meta=dict(classes=CLASSES)), state_dict=model.state_dict()), checkpoint)
    return config, checkpoint, model


def write_images(folder, black=False):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (height, width) in IMAGE_SHAPES.items():
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image[height // 4:height // 2, width // 4:width // 2] = (40, 200, 230)
        cv2.imwrite(str(folder / f'{name}.png'), image)
    if black:
        cv2.imwrite(str(folder / f'{BLACK}.png'), np.zeros((50, 75, 3), np.uint8))
    return folder


def mmdet_inputs(model, image):
    """The data preprocessor's batch and meta of one uint8 (3, H, W) image, fed at its own size (no resize)."""
    from mmdet.structures import DetDataSample
    height, width = image.shape[1:]
    sample = DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height * 2 - 3, width * 2 + 5),
                                         scale_factor=(width / (width * 2 + 5), height / (height * 2 - 3))))
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)
    return data['inputs'], data['data_samples']


@pytest.mark.parametrize('base', [CASCADE_T, MASK_RCNN_T], ids=['cascade', 'mask_rcnn'])
def test_the_whole_detector_computes_mmdets_predict(base, tmp_path, one_thread):
    """Eagerly, with mmcv's own NMS and RoIAlign kernels: the same labels, scores, boxes and masks as mmdet's
    ``predict(rescale=True)``, on images whose padded, resized and original sizes all differ, including an
    extreme aspect ratio; and more candidates than ``max_per_img``."""
    _, _, model = tiny_detector(base, tmp_path)
    whole = WholeDetector(model).eval()
    generator = torch.Generator().manual_seed(0)
    counts = []
    for height, width in ((64, 64), (50, 70), (30, 120), (100, 40)):
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        inputs, samples = mmdet_inputs(model, image)
        meta = samples[0].metainfo
        with torch.no_grad():
            expected = model.predict(inputs, samples, rescale=True)[0].pred_instances
            boxes, scores, labels, masks = whole(
                inputs, torch.tensor(meta['img_shape'], dtype=torch.float32),
                torch.tensor(meta['scale_factor'], dtype=torch.float32), torch.tensor(meta['ori_shape']))
        assert torch.equal(labels, expected.labels)
        torch.testing.assert_close(scores, expected.scores, rtol=0, atol=0)
        torch.testing.assert_close(boxes, expected.bboxes, rtol=0, atol=0)
        assert masks.shape == expected.masks.shape and torch.equal(masks, expected.masks)
        counts.append(len(scores))
    assert min(counts) == MAX_PER_IMAGE  # capped: more candidates than that passed the score threshold
    cfg = model.roi_head.test_cfg
    cfg.max_per_img = 1000
    with torch.no_grad():
        assert len(whole(inputs, torch.tensor(meta['img_shape'], dtype=torch.float32),
                         torch.tensor(meta['scale_factor'], dtype=torch.float32),
                         torch.tensor(meta['ori_shape']))[1]) > MAX_PER_IMAGE


def read_predictions(folder, names):
    """{name: (boxes, scores, labels, masks)} of the preds/NAME.json files of tools/infer.py or deploy_infer.py."""
    predictions = {}
    for name in names:
        with open(osp.join(folder, 'preds', name + '.json')) as stream:
            prediction = json.load(stream)
        masks = np.array([mask_utils.decode(dict(size=m['size'], counts=m['counts'].encode()))
                          for m in prediction['masks']], dtype=bool)
        predictions[name] = (np.array(prediction['bboxes'], np.float64).reshape(-1, 4),
                             np.array(prediction['scores']), np.array(prediction['labels']), masks)
        assert prediction['label_names'] == [CLASSES[label] for label in prediction['labels']]
    return predictions


def pairs_by_label_and_box(found, expected, min_iou=0.98):
    """Greedy one-to-one pairs (i, j) of one label and box IoU >= ``min_iou``, best IoU first."""
    boxes, ref = found[0], expected[0]
    pairs, used_i, used_j = [], set(), set()
    candidates = []
    for i in range(len(boxes)):
        for j in range(len(ref)):
            if found[2][i] != expected[2][j]:
                continue
            lt, rb = np.maximum(boxes[i, :2], ref[j, :2]), np.minimum(boxes[i, 2:], ref[j, 2:])
            inter = np.prod(np.clip(rb - lt, 0, None))
            union = np.prod(boxes[i, 2:] - boxes[i, :2]) + np.prod(ref[j, 2:] - ref[j, :2]) - inter
            if inter / union >= min_iou:
                candidates.append((inter / union, i, j))
    for _, i, j in sorted(candidates, reverse=True):
        if i not in used_i and j not in used_j:
            pairs.append((i, j))
            used_i.add(i)
            used_j.add(j)
    return pairs


@pytest.fixture(scope='module', params=[CASCADE_T, MASK_RCNN_T], ids=['cascade', 'mask_rcnn'])
def exported(request, tmp_path_factory):
    """(images folder, image names, tools/infer.py's output folder, ONNX file) of a tiny detector."""
    tmp_path = tmp_path_factory.mktemp('whole')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        black = request.param == MASK_RCNN_T
        config, checkpoint, _ = tiny_detector(request.param, tmp_path, background_bias=5.0 if black else 0.0)
        images = write_images(tmp_path / 'images', black=black)
        names = list(IMAGE_SHAPES) + ([BLACK] if black else [])
        onnx_file = str(tmp_path / 'whole.onnx')
        load_tool('export_onnx').main([config, checkpoint, '--out', onnx_file, '--shape', '64', '96'])
        load_tool('infer').main([config, checkpoint, str(images), '--out-dir', str(tmp_path / 'infer'),
                                 '--score-thr', '0.05', '--device', 'cpu'])
    finally:
        torch.set_num_threads(threads)
    return images, names, tmp_path / 'infer', onnx_file


@pytest.mark.parametrize('engine', ['onnxruntime', 'openvino'])
def test_the_exported_detector_gives_infers_detections(exported, engine, tmp_path):
    """tools/deploy_infer.py on the ONNX file against tools/infer.py on the checkpoint, image by image: each
    detection of one label with box IoU >= 0.98, score within 2e-3 and mask IoU >= 0.95, at least 98% of them
    matched; the black image gives none in both."""
    images, names, infer_dir, onnx_file = exported
    load_tool('deploy_infer').main([onnx_file, str(images), '--out-dir', str(tmp_path), '--engine', engine,
                                    '--score-thr', '0.05'])
    found, expected = read_predictions(tmp_path, names), read_predictions(infer_dir, names)
    matched = total = 0
    for name in names:
        pairs = pairs_by_label_and_box(found[name], expected[name])
        for i, j in pairs:
            assert abs(found[name][1][i] - expected[name][1][j]) <= 2e-3, name
            mask, reference = found[name][3][i], expected[name][3][j]
            assert mask.shape == reference.shape == cv2.imread(str(images / f'{name}.png')).shape[:2]
            assert np.logical_and(mask, reference).sum() >= 0.95 * np.logical_or(mask, reference).sum(), name
        matched += len(pairs)
        total += max(len(found[name][1]), len(expected[name][1]))
        if name == BLACK:
            assert len(found[name][1]) == len(expected[name][1]) == 0
        else:
            assert len(expected[name][1]) > 0, name
    # more candidates passed the score threshold than an image keeps, on some image
    assert max(len(expected[name][1]) for name in names) == MAX_PER_IMAGE
    assert matched >= 0.98 * total, f'{matched} of {total} detections matched'
    # benchmarks/deployment_parity.py, which measures the demo's parity for docs/deployment.md, pairs them alike
    summary = compare(str(tmp_path), str(infer_dir))
    assert (summary['paired'], summary['deployed'], summary['reference']) == (
        matched, sum(len(found[n][1]) for n in names), sum(len(expected[n][1]) for n in names))


def test_a_part_the_graph_does_not_reproduce_is_refused_by_name(tmp_path):
    """A detector the whole-detector graph would compute differently from mmdet stops the export, naming the
    part: here an RPN box coder with add_ctr_clamp."""
    from whole_detector import ExportError
    cfg = shrink_cascade(load_config(MASK_RCNN_T), len(CLASSES))
    cfg.model.rpn_head.bbox_coder.add_ctr_clamp = True
    with pytest.raises(ExportError, match='cannot be exported whole: a box coder DeltaXYWHBBoxCoder .*--backbone-only'):
        WholeDetector(build_model(cfg))
