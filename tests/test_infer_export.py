"""From a checkpoint to pictures and to ONNX: tools/infer.py on a folder of generated images (and a video) with a
detector and a segmentor, tools/export_onnx.py of the backbone and the UperNet segmentor with onnxruntime parity
(the whole detector: tests/test_whole_detector.py), tools/plot_curves.py on a logged run, and each bad input's error.

The paper's Cascade Mask R-CNN and UperNet configs, shrunk (tests/tiny_models.py): atto backbone, 32-channel
heads, small images; random weights saved as a checkpoint of tools/train.py would be (state_dict and the
classes in meta.dataset_meta), with ``randomize`` where numerics are compared (a fresh model's 1e-6 layer scale
would hide each block's branch)."""
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch

from project import CASCADE_T, UPERNET_T, load_tool
from tiny_models import randomize, randomize_whole_model, shrink_cascade, shrink_upernet
from config_utils import build_model, load_config  # noqa: E402  tools/config_utils.py, on sys.path through project

DET_CLASSES = ('cat', 'dog', 'bird')
SEG_CLASSES = ('sky', 'road', 'tree', 'car')
IMAGE_SHAPES = [(64, 80), (72, 64), (64, 64)]  # (height, width): outputs keep each image's own size


def with_test_resize(cfg, scale):
    for transform in cfg.test_dataloader.dataset.pipeline:
        if transform['type'] == 'Resize':
            transform['scale'] = scale
    return cfg


def tiny_config(tmp_path, kind):
    """(config file, config) of the shrunk cascade ('det') or UperNet ('seg'), testing at 64 pixels."""
    if kind == 'det':
        cfg = shrink_cascade(load_config(CASCADE_T), len(DET_CLASSES))
        cfg.model.test_cfg.rcnn.score_thr = 0.0  # random weights: keep boxes to draw and save
    else:
        cfg = shrink_upernet(load_config(UPERNET_T), len(SEG_CLASSES))
    with_test_resize(cfg, (64, 64))
    path = str(tmp_path / f'tiny_{kind}.py')
    cfg.dump(path)
    return path, cfg


def save_checkpoint(model, path, classes):
    """A checkpoint as tools/train.py writes it: weights under state_dict, the classes in meta.dataset_meta."""
    torch.save(dict(meta=dict(dataset_meta=dict(classes=classes)), state_dict=model.state_dict()), path)
    return str(path)


@pytest.fixture(scope='module')
def det(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('det')
    config, cfg = tiny_config(tmp_path, 'det')
    torch.manual_seed(0)
    model = build_model(cfg)
    return config, save_checkpoint(model, tmp_path / 'det.pth', DET_CLASSES), model


@pytest.fixture(scope='module')
def seg(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp('seg')
    config, cfg = tiny_config(tmp_path, 'seg')
    torch.manual_seed(0)
    model = randomize(build_model(cfg))
    return config, save_checkpoint(model, tmp_path / 'seg.pth', SEG_CLASSES), model


def write_images(folder):
    """A few images of different sizes with a bright rectangle on noise; returns their file names."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i, (height, width) in enumerate(IMAGE_SHAPES):
        image = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
        image[10:40, 12:44] = (40, 200, 230)
        names.append(f'photo_{i}.jpg' if i != 1 else f'photo_{i}.png')
        cv2.imwrite(osp.join(folder, names[-1]), image)
    with open(osp.join(folder, 'notes.txt'), 'w') as stream:
        stream.write('not an image: ignored in a folder')
    return names


def write_video(path, frames=3):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 5, (80, 64))
    for i in range(frames):
        frame = np.full((64, 80, 3), 40 * i, dtype=np.uint8)
        frame[20:50, 10 + 5 * i:40 + 5 * i] = 220
        writer.write(frame)
    writer.release()
    return str(path)


def test_infer_detection_on_a_folder_and_a_video(det, tmp_path, one_thread, capsys):
    config, checkpoint, _ = det
    names = write_images(tmp_path / 'images')
    video = write_video(tmp_path / 'clip.mp4')
    out = tmp_path / 'out'
    load_tool('infer').main([config, checkpoint, str(tmp_path / 'images'), video, '--out-dir', str(out),
                             '--score-thr', '0.05'])
    assert json.loads((out / 'classes.json').read_text()) == list(DET_CLASSES)
    for name in names:
        picture = cv2.imread(str(out / 'vis' / name))
        original = cv2.imread(str(tmp_path / 'images' / name))
        assert picture is not None and picture.shape == original.shape
        assert not np.array_equal(picture, original)  # something was drawn
        prediction = json.loads((out / 'preds' / (osp.splitext(name)[0] + '.json')).read_text())
        count = len(prediction['scores'])
        assert 0 < count <= 5  # the tiny config keeps at most 5 detections per image
        assert len(prediction['labels']) == len(prediction['bboxes']) == len(prediction['masks']) == count
        assert all(len(box) == 4 and box[0] <= box[2] and box[1] <= box[3] for box in prediction['bboxes'])
        assert all(score >= 0.05 for score in prediction['scores'])
        assert prediction['label_names'] == [DET_CLASSES[label] for label in prediction['labels']]
    assert not (out / 'vis' / 'notes.txt').exists()
    frames = sorted(os.listdir(out / 'preds' / 'clip'))
    assert frames == ['000000.json', '000001.json', '000002.json']
    assert cv2.VideoCapture(str(out / 'vis' / 'clip.mp4')).get(cv2.CAP_PROP_FRAME_COUNT) == 3
    assert f'Pictures in {out / "vis"}' in capsys.readouterr().out

    # --amp: the layers in bfloat16, mmcv's NMS and RoIAlign and the post-processing in float32; the same
    # detections as float32's.
    load_tool('infer').main([config, checkpoint, str(tmp_path / 'images'), '--out-dir', str(tmp_path / 'amp'),
                             '--score-thr', '0.05', '--amp'])
    scores = []
    for name in names:
        stem = osp.splitext(name)[0] + '.json'
        amp, fp32 = (json.loads((folder / 'preds' / stem).read_text()) for folder in (tmp_path / 'amp', out))
        assert_same_detections(amp, fp32)
        scores.append((amp['scores'], fp32['scores']))
    assert any(amp != fp32 for amp, fp32 in scores)  # the layers did run in bfloat16


def box_iou(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union if union > 0 else float(a == b)


def assert_same_detections(amp, fp32):
    """As many detections, and each of float32's found among bfloat16's, one for one: the same label, the same
    box (IoU 0.7 or more, or, for the untrained detector's boxes a pixel or two thin, every corner within 2
    pixels) and a score within 0.02 (bfloat16 keeps 8 significant bits through the network's layers)."""
    assert len(amp['scores']) == len(fp32['scores']) > 0
    unmatched = list(range(len(amp['scores'])))
    for label, box, score in zip(fp32['labels'], fp32['bboxes'], fp32['scores']):
        matches = [i for i in unmatched if amp['labels'][i] == label and abs(amp['scores'][i] - score) <= 0.02
                   and (box_iou(amp['bboxes'][i], box) >= 0.7
                        or max(abs(u - v) for u, v in zip(amp['bboxes'][i], box)) <= 2)]
        assert matches, f'float32 detection {label} {box} {score:.4f} not among bfloat16\'s: {amp}'
        unmatched.remove(max(matches, key=lambda i: box_iou(amp['bboxes'][i], box)))


def test_infer_segmentation_on_a_folder(seg, tmp_path, one_thread):
    """float32, then --amp (the layers in bfloat16): the same classes at nearly every pixel."""
    config, checkpoint, _ = seg
    names = write_images(tmp_path / 'images')
    label_maps = {}
    for precision in ('fp32', 'amp'):
        out = tmp_path / precision
        load_tool('infer').main([config, checkpoint, str(tmp_path / 'images'), '--out-dir', str(out),
                                 *(['--amp'] if precision == 'amp' else [])])
        assert json.loads((out / 'classes.json').read_text()) == list(SEG_CLASSES)
        for name, shape in zip(names, IMAGE_SHAPES):
            assert cv2.imread(str(out / 'vis' / name)).shape[:2] == shape
            labels = cv2.imread(str(out / 'preds' / (osp.splitext(name)[0] + '.png')), cv2.IMREAD_UNCHANGED)
            assert labels.dtype == np.uint8 and labels.shape == shape  # one class index a pixel, at the image size
            assert labels.max() < len(SEG_CLASSES)
            label_maps[precision, name] = labels
    for name in names:
        fp32, amp = label_maps['fp32', name], label_maps['amp', name]
        assert len(np.unique(fp32)) > 1 and (amp == fp32).mean() > 0.97, name


@pytest.mark.parametrize('case', ['missing file', 'no images', 'unreadable image', 'not an image', 'other model',
                                  'corrupt checkpoint'])
def test_infer_bad_input_is_a_clear_error(case, det, seg, tmp_path, capsys):
    config, checkpoint, _ = det
    inputs = tmp_path / 'images'
    inputs.mkdir()
    expected = {
        'missing file': 'nothing.jpg does not exist',
        'no images': 'holds no images',
        'unreadable image': 'cannot read image',
        'not an image': 'is neither an image',
        'other model': 'does not fit the model of',
        'corrupt checkpoint': 'could not be read as a PyTorch or safetensors checkpoint',
    }[case]
    if case == 'missing file':
        inputs = inputs / 'nothing.jpg'
    elif case == 'unreadable image':
        (inputs / 'broken.jpg').write_bytes(b'this is text, not a JPEG')
    elif case == 'not an image':
        inputs = inputs / 'notes.txt'
        inputs.write_text('hello')
    elif case == 'other model':
        write_images(inputs)
        checkpoint = seg[1]  # a segmentor's checkpoint given with the detector's config
    elif case == 'corrupt checkpoint':
        write_images(inputs)
        checkpoint = str(tmp_path / 'truncated.pth')
        with open(det[1], 'rb') as source, open(checkpoint, 'wb') as target:
            target.write(source.read()[:5000])
    with pytest.raises(SystemExit) as exit_info:
        load_tool('infer').main([config, checkpoint, str(inputs), '--out-dir', str(tmp_path / 'out')])
    message = str(exit_info.value.code)
    assert message.startswith('error: ') and expected in message
    if case == 'other model':  # names the parts that differ
        assert 'decode_head.*' in message and 'roi_head.*' in message
    elif case != 'corrupt checkpoint':
        assert str(inputs if case != 'unreadable image' else inputs / 'broken.jpg') in message


def test_infer_missing_checkpoint_is_a_usage_error(det, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_tool('infer').main([det[0], str(tmp_path / 'nothing.pth'), str(tmp_path)])
    assert exit_info.value.code == 2 and 'nothing.pth' in capsys.readouterr().err


def onnx_outputs(path, x):
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return session.run(None, {'input': x.numpy()})


def assert_close_relative(onnx, reference, tolerance=1e-4):
    reference = reference.detach().numpy()
    assert onnx.shape == reference.shape
    assert np.abs(onnx - reference).max() <= tolerance * np.abs(reference).max()


def test_export_backbone_runs_in_onnxruntime_with_the_same_outputs(seg, tmp_path, one_thread, capsys):
    config, checkpoint, model = seg
    out = tmp_path / 'backbone.onnx'
    deviation = load_tool('export_onnx').main([config, checkpoint, '--out', str(out), '--backbone-only',
                                               '--shape', '64', '96', '--dynamic'])
    printed = capsys.readouterr().out
    assert deviation <= 1e-4 and 'any height and width' in printed
    assert printed.count('largest relative deviation') == 2  # the export size and another
    x = torch.randn(3, 3, 96, 64)  # another batch size and image size than exported
    with torch.no_grad():
        expected = model.backbone(x)
    outputs = onnx_outputs(out, x)
    assert len(outputs) == 4
    for onnx, reference in zip(outputs, expected):
        assert_close_relative(onnx, reference)


def test_export_segmentor_runs_in_onnxruntime_with_the_same_logits(seg, tmp_path, one_thread, capsys):
    config, checkpoint, model = seg
    out = tmp_path / 'upernet.onnx'
    load_tool('export_onnx').main([config, checkpoint, '--out', str(out), '--shape', '64', '96', '--dynamic'])
    # UperNet's pyramid pooling exports for one size: the tool keeps height and width and says why.
    assert 'height and width stay 64x96: decode_head.psp_modules' in capsys.readouterr().out
    x = torch.randn(3, 3, 64, 96)  # another batch size than exported
    with torch.no_grad():
        expected = model.encode_decode(x, [dict(img_shape=(64, 96))])
    (logits, ) = onnx_outputs(out, x)
    assert logits.shape == (3, len(SEG_CLASSES), 64, 96)
    assert_close_relative(logits, expected)


def test_export_refuses_a_checkpoint_of_another_model(det, seg, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        load_tool('export_onnx').main([seg[0], det[1], '--out', str(tmp_path / 'x.onnx')])
    assert str(exit_info.value.code).startswith('error: checkpoint') and 'does not fit' in str(exit_info.value.code)
    assert not (tmp_path / 'x.onnx').exists()


def test_export_refuses_a_config_whose_neck_does_not_read_the_backbones_widths(det, tmp_path):
    """A config whose FPN was written for another ConvNeXt width stops before any export, with the line to write
    (the check the configs' BackboneWidthCheckHook makes before a run)."""
    config = tmp_path / 'wider_neck.py'
    config.write_text(f"_base_ = {det[0]!r}\nmodel = dict(neck=dict(in_channels=[96, 192, 384, 768]))\n")
    with pytest.raises(SystemExit) as exit_info:
        load_tool('export_onnx').main([str(config), det[1], '--out', str(tmp_path / 'x.onnx')])
    message = str(exit_info.value.code)
    assert message.startswith(f'error: the model of {config} cannot run: FPN (model.neck) expects '
                              'in_channels=[96, 192, 384, 768], but the backbone, ConvNeXt-atto, outputs '
                              '[40, 80, 160, 320] channels'), message
    assert 'Write neck=dict(in_channels=[40, 80, 160, 320])' in message
    assert not (tmp_path / 'x.onnx').exists()


def write_scalars(run_dir, records):
    os.makedirs(run_dir / 'vis_data')
    with open(run_dir / 'vis_data' / 'scalars.json', 'w') as stream:
        stream.writelines(json.dumps(record) + '\n' for record in records)


def test_plot_curves_draws_a_resumed_run(tmp_path, capsys):
    work_dir = tmp_path / 'work'
    train = [dict(lr=1e-3 * i, loss=2.0 / i, loss_rpn_cls=0.5 / i, epoch=1 + (i > 4), iter=i, step=i)
             for i in range(1, 9)]
    # The first run logged 6 iterations and validated epoch 1, then was resumed from iteration 4.
    write_scalars(work_dir / '20260101_000000', train[:6] + [{'coco/bbox_mAP': 0.1, 'step': 1}])
    write_scalars(work_dir / '20260101_010000', train[4:] + [{'coco/bbox_mAP': 0.3, 'coco/bbox_mAP_50': 0.5,
                                                             'step': 2}])
    plot_curves = load_tool('plot_curves')
    out = plot_curves.main([str(work_dir)])
    assert out == str(work_dir / 'curves.png') and f'Curves written to {out}' in capsys.readouterr().out
    picture = cv2.imread(out)
    assert picture is not None and picture.shape[1] > 3 * picture.shape[0]  # three panels side by side
    train_records, val_records = plot_curves.merge_runs(plot_curves.scalars_files(str(work_dir)))
    assert [r['step'] for r in train_records] == list(range(1, 9))
    assert [r['step'] for r in val_records] == [1, 2]
    with pytest.raises(SystemExit) as exit_info:
        plot_curves.main([str(work_dir), '--keys', 'mIoU'])
    assert 'error: --keys mIoU' in str(exit_info.value.code) and 'coco/bbox_mAP' in str(exit_info.value.code)
