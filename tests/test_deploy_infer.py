"""tools/deploy_infer.py, the whole detector's ONNX file run without PyTorch: its preprocessing against mmdet's own
test pipeline and data preprocessor, its COCO RLE against pycocotools, its runs in onnxruntime and OpenVINO, its
errors (the same words as tools/infer.py's for the same inputs), and a run where torch, mmcv, mmdet, mmengine,
convnext_mm and pycocotools cannot be imported.

The ONNX files are built here with onnx.helper: they have the inputs, outputs and metadata of the whole detector
that tools/export_onnx.py writes, and outputs that show what the tool fed in: scores are the sigmoid of the input's
per-channel means (padding included), each box is [img_w, img_h, w_scale, h_scale], labels 0, 1, 2, and mask k of
the original image's size is ((x * (k + 1) + y * y) mod 5) < 2."""
import json
import os
import os.path as osp
import sys

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from pycocotools import mask as mask_util

from project import load_tool, run_script
from test_infer_export import write_video

CLASSES = ['cat', 'dog', 'bird']
MASK_RCNN_PREPROCESS = dict(resize_scale=[1333, 800], keep_ratio=True, mean=[123.675, 116.28, 103.53],
                            std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=32, pad_value=0,
                            interpolation='bilinear')
STRETCH_PREPROCESS = dict(resize_scale=[100, 60], keep_ratio=False, mean=[100.0, 110.0, 120.0],
                          std=[50.0, 60.0, 70.0], bgr_to_rgb=False, pad_size_divisor=32, pad_value=7.5,
                          interpolation='bilinear')
BLOCKED = ('torch', 'mmcv', 'mmdet', 'mmengine', 'mmseg', 'convnext_mm', 'pycocotools')

deploy_infer = load_tool('deploy_infer')


def contract_model(path, detections=3, preprocess=MASK_RCNN_PREPROCESS, palette=None, metadata=True):
    """A tiny ONNX file with the whole detector's inputs and outputs (module docstring), ``detections`` of them
    (0 to 3); ``metadata=False`` leaves out the contract's metadata, as a backbone-only export has none."""
    k = detections
    nodes = [
        helper.make_node('ReduceMean', ['input'], ['means'], axes=[0, 2, 3], keepdims=0),
        helper.make_node('Sigmoid', ['means'], ['all_scores']),
        helper.make_node('Slice', ['all_scores', 'zero_1d', 'k_1d'], ['scores']),
        helper.make_node('Gather', ['img_shape', 'wh_index'], ['img_wh']),
        helper.make_node('Concat', ['img_wh', 'scale_factor'], ['box'], axis=0),
        helper.make_node('Unsqueeze', ['box', 'zero_1d'], ['box_row']),
        helper.make_node('Tile', ['box_row', 'box_repeats'], ['boxes']),
        helper.make_node('Identity', ['all_labels'], ['labels']),
        helper.make_node('Gather', ['ori_shape', 'zero'], ['height']),
        helper.make_node('Gather', ['ori_shape', 'one'], ['width']),
        helper.make_node('Range', ['zero', 'height', 'one'], ['ys']),
        helper.make_node('Range', ['zero', 'width', 'one'], ['xs']),
        helper.make_node('Reshape', ['ys', 'column'], ['ys_column']),
        helper.make_node('Mul', ['ys_column', 'ys_column'], ['ys_squared']),
        helper.make_node('Mul', ['xs', 'factors'], ['xs_scaled']),
        helper.make_node('Add', ['xs_scaled', 'ys_squared'], ['pattern']),
        helper.make_node('Mod', ['pattern', 'five'], ['residue']),
        helper.make_node('Less', ['residue', 'two'], ['masks']),
    ]
    constants = [
        helper.make_tensor('zero_1d', TensorProto.INT64, [1], [0]),
        helper.make_tensor('k_1d', TensorProto.INT64, [1], [k]),
        helper.make_tensor('wh_index', TensorProto.INT64, [2], [1, 0]),
        helper.make_tensor('box_repeats', TensorProto.INT64, [2], [k, 1]),
        helper.make_tensor('all_labels', TensorProto.INT64, [k], list(range(k))),
        helper.make_tensor('zero', TensorProto.INT64, [], [0]),
        helper.make_tensor('one', TensorProto.INT64, [], [1]),
        helper.make_tensor('column', TensorProto.INT64, [3], [1, -1, 1]),
        helper.make_tensor('factors', TensorProto.INT64, [k, 1, 1], list(range(1, k + 1))),
        helper.make_tensor('five', TensorProto.INT64, [], [5]),
        helper.make_tensor('two', TensorProto.INT64, [], [2]),
    ]
    graph = helper.make_graph(
        nodes, 'contract', [
            helper.make_tensor_value_info('input', TensorProto.FLOAT, [1, 3, 'height', 'width']),
            helper.make_tensor_value_info('img_shape', TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info('scale_factor', TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info('ori_shape', TensorProto.INT64, [2]),
        ], [
            helper.make_tensor_value_info('boxes', TensorProto.FLOAT, [k, 4]),
            helper.make_tensor_value_info('scores', TensorProto.FLOAT, [k]),
            helper.make_tensor_value_info('labels', TensorProto.INT64, [k]),
            helper.make_tensor_value_info('masks', TensorProto.BOOL, [k, 'ori_height', 'ori_width']),
        ], initializer=constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8
    if metadata:
        props = dict(classes=CLASSES, preprocess=preprocess)
        if palette is not None:
            props['palette'] = palette
        helper.set_model_props(model, {key: json.dumps(value) for key, value in props.items()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def model_masks(height, width, detections=3):
    """The masks contract_model computes, in numpy."""
    y, x = np.mgrid[:height, :width]
    return np.stack([(x * (k + 1) + y * y) % 5 < 2 for k in range(detections)])


def mmdet_reference(path, preprocess):
    """(input batch, metainfo) of mmdet's test pipeline (LoadImageFromFile, Resize, PackDetInputs) and
    DetDataPreprocessor on an image file."""
    from mmcv.transforms import LoadImageFromFile
    from mmdet.datasets.transforms import PackDetInputs, Resize
    from mmdet.models.data_preprocessors import DetDataPreprocessor
    results = LoadImageFromFile()(dict(img_path=str(path)))
    results = Resize(scale=tuple(preprocess['resize_scale']), keep_ratio=preprocess['keep_ratio'],
                     interpolation=preprocess['interpolation'])(results)
    packed = PackDetInputs()(results)
    data_preprocessor = DetDataPreprocessor(
        mean=preprocess['mean'], std=preprocess['std'], bgr_to_rgb=preprocess['bgr_to_rgb'],
        pad_size_divisor=preprocess['pad_size_divisor'], pad_value=preprocess['pad_value'])
    data = data_preprocessor(dict(inputs=[packed['inputs']], data_samples=[packed['data_samples']]), False)
    return data['inputs'].numpy(), data['data_samples'][0].metainfo


def write_image(path, height, width, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[..., 0] //= 2  # blue below ImageNet's mean, red above: scores on both sides of a sigmoid's 0.5
    image[..., 2] = 128 + image[..., 2] // 2
    image[height // 4:height // 2, width // 4:width // 2] = (40, 200, 230)
    assert cv2.imwrite(str(path), image)
    return str(path)


@pytest.mark.parametrize('height, width, preprocess', [
    (61, 97, MASK_RCNN_PREPROCESS),  # neither side a multiple of 32: padded at the bottom and right
    (13, 301, MASK_RCNN_PREPROCESS),  # 1:23, the long side bounds the scale
    (45, 70, STRETCH_PREPROCESS),  # no keep_ratio, BGR kept, padding with 7.5
], ids=['odd_size', 'extreme_aspect', 'stretch'])
def test_preprocess_is_mmdets_test_pipeline_and_data_preprocessor(height, width, preprocess, tmp_path):
    path = write_image(tmp_path / 'image.jpg', height, width)
    expected, metainfo = mmdet_reference(path, preprocess)
    inputs = deploy_infer.preprocess(deploy_infer.read_image(path), preprocess)
    assert inputs['input'].dtype == np.float32 and inputs['input'].shape == expected.shape
    np.testing.assert_array_equal(inputs['input'], expected)
    np.testing.assert_array_equal(inputs['img_shape'], np.float32(metainfo['img_shape']))
    np.testing.assert_array_equal(inputs['scale_factor'], np.float32(metainfo['scale_factor']))
    assert inputs['ori_shape'].dtype == np.int64 and inputs['ori_shape'].tolist() == list(metainfo['ori_shape'])
    assert expected.shape[2] % 32 == 0 and expected.shape[3] % 32 == 0


def test_rle_is_pycocotools_encoding_and_decodes_to_the_mask():
    rng = np.random.default_rng(0)
    blobs = np.zeros((300, 500), bool)
    blobs[20:280, 30:460] = True  # runs over 2**15: run-length differences of several 5-bit groups, negative ones
    blobs[100:120, 200:210] = False
    masks = [np.zeros((7, 5), bool), np.ones((7, 5), bool), rng.random((31, 17)) < 0.5, blobs,
             np.eye(9, 4, dtype=bool), np.zeros((0, 4), bool)]
    corner = np.zeros((6, 6), bool)
    corner[0, 0] = True  # the first run, of zeros, is empty
    masks.append(corner)
    for mask in masks:
        expected = mask_util.encode(np.asfortranarray(mask[:, :, None].astype(np.uint8)))[0]
        encoded = deploy_infer.encode_rle(mask)
        assert encoded == {'size': expected['size'], 'counts': expected['counts'].decode()}
        assert list(encoded) == ['size', 'counts']  # the key order of pycocotools' dicts, in the JSON
        if mask.size:
            np.testing.assert_array_equal(mask_util.decode(dict(encoded, counts=encoded['counts'].encode())),
                                          mask)


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """A folder of two images (one at an odd size, one 1:8) and a note, and a video of three 64x80 frames."""
    folder = tmp_path_factory.mktemp('inputs')
    write_image(folder / 'odd.png', 61, 97, seed=1)
    write_image(folder / 'wide.jpg', 20, 160, seed=2)
    (folder / 'notes.txt').write_text('not an image: ignored in a folder')
    video = write_video(folder.parent / 'clip.mp4')
    return str(folder), video


@pytest.mark.parametrize('engine', ['onnxruntime', 'openvino'])
def test_a_run_writes_what_infer_writes(engine, images, tmp_path, capsys):
    folder, video = images
    model = contract_model(tmp_path / 'detector.onnx')
    out = tmp_path / 'out'
    score_thr = 0.5
    deploy_infer.main([model, folder, video, '--out-dir', str(out), '--engine', engine,
                       '--score-thr', str(score_thr)])
    assert json.loads((out / 'classes.json').read_text()) == CLASSES
    lines = []  # one per input
    for name in ('odd.png', 'wide.jpg'):
        expected_input, metainfo = mmdet_reference(osp.join(folder, name), MASK_RCNN_PREPROCESS)
        scores = 1 / (1 + np.exp(-expected_input.mean(axis=(0, 2, 3), dtype=np.float64)))
        prediction = json.loads((out / 'preds' / (osp.splitext(name)[0] + '.json')).read_text())
        assert list(prediction) == ['labels', 'scores', 'bboxes', 'masks', 'label_names']  # as tools/infer.py
        keep = [k for k in range(3) if scores[k] >= score_thr]
        assert 0 < len(keep) < 3, 'the threshold should split these scores'
        assert prediction['labels'] == keep and prediction['label_names'] == [CLASSES[k] for k in keep]
        np.testing.assert_allclose(prediction['scores'], scores[keep], rtol=1e-5)
        box = [metainfo['img_shape'][1], metainfo['img_shape'][0], *metainfo['scale_factor']]
        assert prediction['bboxes'] == [np.float32(box).tolist()] * len(keep)
        height, width = metainfo['ori_shape']
        masks = model_masks(height, width)
        for k, rle in zip(keep, prediction['masks']):
            assert rle['size'] == [height, width]
            np.testing.assert_array_equal(mask_util.decode(dict(rle, counts=rle['counts'].encode())), masks[k])
        picture = cv2.imread(str(out / 'vis' / name))
        assert picture.shape == (height, width, 3)
        assert not np.array_equal(picture, cv2.imread(osp.join(folder, name)))
        lines.append(f'{osp.join(folder, name)}: {len(keep)} detections')
    assert sorted(os.listdir(out / 'preds' / 'clip')) == ['000000.json', '000001.json', '000002.json']
    frame = json.loads((out / 'preds' / 'clip' / '000002.json').read_text())
    assert [rle['size'] for rle in frame['masks']] == [[64, 80]] * len(frame['labels'])
    reader = cv2.VideoCapture(str(out / 'vis' / 'clip.mp4'))
    assert int(reader.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and reader.read()[1].shape == (64, 80, 3)
    assert capsys.readouterr().out.splitlines() == lines + [
        f'{video}: 3 frames', f'Pictures in {out / "vis"}, predictions in {out / "preds"}']


@pytest.mark.parametrize('engine', ['onnxruntime', 'openvino'])
def test_no_detections_write_empty_lists(engine, images, tmp_path):
    folder, _ = images
    model = contract_model(tmp_path / 'empty.onnx', detections=0)
    deploy_infer.main([model, osp.join(folder, 'odd.png'), '--out-dir', str(tmp_path), '--engine', engine])
    assert json.loads((tmp_path / 'preds' / 'odd.json').read_text()) == dict(
        labels=[], scores=[], bboxes=[], masks=[], label_names=[])
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / 'vis' / 'odd.png')),
                                  cv2.imread(osp.join(folder, 'odd.png')))


def test_openvino_bf16_gives_the_same_labels_and_masks(images, tmp_path):
    folder, _ = images
    run, metadata = deploy_infer.load_model(contract_model(tmp_path / 'detector.onnx'), 'openvino', 'bf16')
    reference_run, _ = deploy_infer.load_model(str(tmp_path / 'detector.onnx'), 'onnxruntime', 'f32')
    image = deploy_infer.read_image(osp.join(folder, 'odd.png'))
    bf16, f32 = deploy_infer.predict(run, image, metadata), deploy_infer.predict(reference_run, image, metadata)
    np.testing.assert_array_equal(bf16['labels'], f32['labels'])
    np.testing.assert_array_equal(bf16['masks'], f32['masks'])
    np.testing.assert_allclose(bf16['scores'], f32['scores'], atol=1e-2)


def test_masks_are_drawn_in_the_palettes_colour(tmp_path):
    palette = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    run, metadata = deploy_infer.load_model(contract_model(tmp_path / 'm.onnx', palette=palette))
    assert metadata['palette'] == palette and metadata['classes'] == CLASSES
    image = np.full((40, 50, 3), 100, np.uint8)
    mask = np.zeros((1, 40, 50), bool)
    mask[0, 25:35, 30:45] = True
    detections = dict(boxes=np.float32([[28, 22, 47, 37]]), scores=np.float32([0.9]), labels=np.int64([1]),
                      masks=mask)
    picture = deploy_infer.draw(image, detections, metadata, 0.3)
    assert picture[30, 37].tolist() == [50, 177, 50]  # BGR: half the image's grey, half the class's green
    assert picture[5, 5].tolist() == [100, 100, 100]
    assert deploy_infer.draw(image, detections, metadata, 0.95).tolist() == image.tolist()
    without = deploy_infer.read_metadata(contract_model(tmp_path / 'n.onnx'))
    assert without['palette'] == deploy_infer.read_metadata(contract_model(tmp_path / 'o.onnx'))['palette']
    assert len(without['palette']) == len(CLASSES)


@pytest.mark.parametrize('case', ['missing file', 'no images', 'unreadable image', 'not an image'])
def test_bad_input_is_infer_pys_error(case, tmp_path):
    """The same message as tools/infer.py's for the same input, word for word, naming it."""
    infer = load_tool('infer')
    inputs = tmp_path / 'images'
    inputs.mkdir()
    if case == 'missing file':
        inputs = inputs / 'nothing.jpg'
    elif case == 'unreadable image':
        (inputs / 'broken.jpg').write_bytes(b'this is text, not a JPEG')
    elif case == 'not an image':
        inputs = inputs / 'notes.txt'
        inputs.write_text('hello')
    messages = []
    for tool in (infer, deploy_infer):
        with pytest.raises(SystemExit) as exit_info:
            for _, path, _ in tool.list_inputs([str(inputs)]):
                tool.read_image(path)
        messages.append(str(exit_info.value.code))
    assert messages[0] == messages[1]
    model = contract_model(tmp_path / 'detector.onnx')
    with pytest.raises(SystemExit) as exit_info:
        deploy_infer.main([model, str(inputs), '--out-dir', str(tmp_path / 'out')])
    message = str(exit_info.value.code)
    assert message == messages[0] and message.startswith('error: ')
    assert str(inputs if case != 'unreadable image' else inputs / 'broken.jpg') in message


@pytest.mark.parametrize('case', ['missing', 'not onnx', 'truncated', 'no metadata', 'other outputs'])
def test_a_model_file_that_is_not_a_whole_detector_is_an_error_with_the_export_command(case, images, tmp_path):
    path = tmp_path / 'model.onnx'
    if case == 'not onnx':
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    elif case == 'truncated':
        contract_model(path)
        path.write_bytes(path.read_bytes()[:-40])
    elif case == 'no metadata':  # a backbone-only or partial export: no classes or preprocessing
        contract_model(path, metadata=False)
    elif case == 'other outputs':
        model = onnx.load(contract_model(path))  # 'boxes' renamed, as in a detector exported up to its first NMS
        for node in model.graph.node:
            node.output[:] = ['fpn_stride4' if name == 'boxes' else name for name in node.output]
        model.graph.output[0].name = 'fpn_stride4'
        onnx.save(model, str(path))
    with pytest.raises(SystemExit) as exit_info:
        deploy_infer.main([str(path), images[0], '--out-dir', str(tmp_path / 'out')])
    message = str(exit_info.value.code)
    assert message.startswith('error: ') and str(path) in message
    assert f'python tools/export_onnx.py CONFIG CHECKPOINT --out {path}' in message
    expected = {'missing': 'does not exist', 'not onnx': 'is not an ONNX model', 'truncated': 'is not an ONNX model',
                'no metadata': 'metadata lacks classes, preprocess', 'other outputs': 'lacks the whole detector'}
    assert expected[case] in message


def test_bf16_with_onnxruntime_is_a_usage_error(images, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        deploy_infer.main([contract_model(tmp_path / 'm.onnx'), images[0], '--precision', 'bf16'])
    assert exit_info.value.code == 2 and '--engine openvino' in capsys.readouterr().err


BLOCKER = f"""
import importlib.abc, runpy, sys
BLOCKED = {BLOCKED!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError(f'{{name}} is blocked')
sys.meta_path.insert(0, Blocker())
sys.path.insert(0, 'tools')  # as `python tools/deploy_infer.py` puts the script's folder first
for engine in ('onnxruntime', 'openvino'):
    sys.argv = ['tools/deploy_infer.py'] + sys.argv[1:] + ['--engine', engine, '--out-dir', 'OUT/' + engine]
    runpy.run_path('tools/deploy_infer.py', run_name='__main__')
    sys.argv = sys.argv[:-4]
print('loaded:', sorted(name for name in sys.modules if name.split('.')[0] in BLOCKED))
"""


def test_runs_without_torch_or_openmmlab(images, tmp_path):
    folder, video = images
    model = contract_model(tmp_path / 'detector.onnx')
    script = BLOCKER.replace('OUT', str(tmp_path))
    result = run_script([sys.executable, '-c', script, model, osp.join(folder, 'odd.png'), video])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == 'loaded: []'
    for engine in ('onnxruntime', 'openvino'):
        assert (tmp_path / engine / 'preds' / 'odd.json').is_file()
        assert (tmp_path / engine / 'vis' / 'clip.mp4').is_file()
