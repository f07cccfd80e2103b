"""Run a whole detector exported to ONNX on your own images or videos, without PyTorch or OpenMMLab installed.

    python tools/deploy_infer.py MODEL.onnx INPUT... [--out-dir DIR] [--engine onnxruntime|openvino]
        [--score-thr T] [--precision f32|bf16]

MODEL.onnx is a whole Mask R-CNN or Cascade Mask R-CNN that ``tools/export_onnx.py CONFIG CHECKPOINT --out FILE``
wrote: the file carries the class names, their colours and the config's test preprocessing in its metadata,
so this tool (with tools/image_inputs.py beside it) needs only numpy, OpenCV and the engine (``onnxruntime``,
or ``openvino`` with ``--engine openvino``). Each image is read and preprocessed as the config's test pipeline and data preprocessor do (mmcv's
decoding and resize, mean and std, padding), so the predictions are those of ``tools/infer.py`` on the
checkpoint. ``--precision bf16`` runs the network in bfloat16 (OpenVINO only, on CPUs with bfloat16 support).

INPUT is what ``tools/infer.py`` takes: an image file, a folder of images (its files with an image extension,
not its subfolders) or a video file. Under ``--out-dir`` (default ``outputs``) it writes what ``tools/infer.py``
writes for a detector, per image:

- ``vis/NAME``: the image with the boxes, masks, class names and scores at or above ``--score-thr`` drawn;
- ``preds/STEM.json``: ``labels``, ``scores``, ``bboxes`` (x1 y1 x2 y2 pixels), ``masks`` (COCO RLE) and
  ``label_names`` of the detections at or above ``--score-thr``;
- and once, ``classes.json``: the class names in label order.

A video gives ``vis/STEM.mp4`` and ``preds/STEM/FRAME.json`` per frame.
"""
import argparse
import importlib
import json
import os
import os.path as osp

import cv2
import numpy as np

from image_inputs import error, list_inputs, read_image

# As tools/infer.py (the same inputs are accepted and refused).
INPUT_NAMES = ('input', 'img_shape', 'scale_factor', 'ori_shape')
OUTPUT_NAMES = ('boxes', 'scores', 'labels', 'masks')
METADATA_KEYS = ('classes', 'preprocess')
PREPROCESS_KEYS = ('resize_scale', 'keep_ratio', 'mean', 'std', 'bgr_to_rgb', 'pad_size_divisor', 'pad_value')
INTERPOLATIONS = {'nearest': cv2.INTER_NEAREST, 'bilinear': cv2.INTER_LINEAR, 'bicubic': cv2.INTER_CUBIC,
                  'area': cv2.INTER_AREA, 'lanczos': cv2.INTER_LANCZOS4}  # mmcv's cv2_interp_codes
MASK_OPACITY = 0.5


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Run a whole detector exported to ONNX on images or videos')
    parser.add_argument('model', help='ONNX file of a whole detector (tools/export_onnx.py writes it)')
    parser.add_argument('inputs', nargs='+', metavar='INPUT', help='image file, folder of images, or video file')
    parser.add_argument('--out-dir', default='outputs', help='where pictures and predictions go (default: outputs)')
    parser.add_argument('--engine', choices=('onnxruntime', 'openvino'), default='onnxruntime',
                        help='the runtime that runs the file on the CPU (default: onnxruntime)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw and save the detections scoring at least this (default: 0.3)')
    parser.add_argument('--precision', choices=('f32', 'bf16'), default='f32',
                        help="the network's arithmetic: f32 (default) or bf16 (--engine openvino only)")
    args = parser.parse_args(argv)
    if not 0 <= args.score_thr <= 1:
        parser.error(f'--score-thr {args.score_thr}: a score threshold is between 0 and 1')
    if args.precision == 'bf16' and args.engine != 'openvino':
        parser.error('--precision bf16 runs with --engine openvino only: onnxruntime runs the file in float32 '
                     'on the CPU; add --engine openvino, or leave --precision out')
    return args


def export_fix(path):
    return f'export the whole detector with python tools/export_onnx.py CONFIG CHECKPOINT --out {path}'


# --- the model file -------------------------------------------------------------------------------------------

def _varint(stream):
    result = shift = 0
    while True:
        byte = stream.read(1)
        if not byte:
            raise ValueError('the file ends inside a field')
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError('a malformed number')


def _fields(stream, end):
    """(field number, wire type, value) of the protobuf message up to byte ``end``; length-delimited values are
    (offset, length) and skipped over, so that a model's weights are never read."""
    while stream.tell() < end:
        key = _varint(stream)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value = _varint(stream)
        elif wire == 1 or wire == 5:
            size = 8 if wire == 1 else 4
            value = stream.read(size)
            if len(value) != size:
                raise ValueError('the file ends inside a field')
        elif wire == 2:
            length = _varint(stream)
            value = (stream.tell(), length)
            if value[0] + length > end:
                raise ValueError('a field runs past the end of the file')
            stream.seek(length, os.SEEK_CUR)
        else:
            raise ValueError(f'wire type {wire} of field {number} is not in an ONNX file')
        if number == 0:
            raise ValueError('field number 0')
        yield number, wire, value


def read_onnx_metadata(path):
    """The ``metadata_props`` of an ONNX file (ModelProto field 14: key 1, value 2) as {key: value}, read with the
    standard library alone. ValueError if the file is not an ONNX model."""
    size = osp.getsize(path)
    metadata, seen = {}, set()
    with open(path, 'rb') as stream:
        for number, wire, value in list(_fields(stream, size)):
            seen.add((number, wire))
            if number == 14 and wire == 2:
                start, length = value
                stream.seek(start)
                entry = {}
                for field, field_wire, (offset, count) in _fields(stream, start + length):
                    if field in (1, 2) and field_wire == 2:
                        position = stream.tell()
                        stream.seek(offset)
                        entry[field] = stream.read(count).decode('utf-8')
                        stream.seek(position)
                metadata[entry.get(1, '')] = entry.get(2, '')
    if (1, 0) not in seen or (7, 2) not in seen:  # ir_version and graph
        raise ValueError('no ONNX model version or graph in it')
    return metadata


def read_metadata(path):
    """The contract's metadata of a whole-detector ONNX file: classes, palette (or None) and preprocess; a file
    that is missing, not ONNX, or not a whole-detector export is an error that names it and the fix."""
    if not osp.isfile(path):
        raise error(f'ONNX model {path} does not exist: {export_fix(path)}')
    try:
        props = read_onnx_metadata(path)
    except (ValueError, UnicodeDecodeError, OSError) as exception:
        raise error(f'{path} is not an ONNX model ({exception}): {export_fix(path)}')
    missing = [key for key in METADATA_KEYS if key not in props]
    if missing:
        raise error(f'{path} is not a whole-detector export: its metadata lacks {", ".join(missing)} (a '
                    f'backbone-only or partial export, or another tool\'s file); {export_fix(path)}')
    try:
        metadata = {key: json.loads(props[key]) for key in ('classes', 'palette', 'preprocess') if key in props}
    except json.JSONDecodeError as exception:
        raise error(f'{path}: its metadata is not JSON ({exception}); {export_fix(path)}')
    preprocess = metadata['preprocess']
    missing = [key for key in PREPROCESS_KEYS if key not in preprocess]
    if missing:
        raise error(f'{path}: its preprocess metadata lacks {", ".join(missing)}; {export_fix(path)}')
    if preprocess.get('interpolation', 'bilinear') not in INTERPOLATIONS:
        raise error(f'{path}: interpolation {preprocess["interpolation"]!r} is not one of '
                    f'{", ".join(INTERPOLATIONS)}; {export_fix(path)}')
    palette = metadata.get('palette')
    if not palette or len(palette) != len(metadata['classes']):
        palette = default_palette(len(metadata['classes']))
    return dict(classes=list(metadata['classes']), palette=[list(color) for color in palette],
                preprocess=preprocess)


def default_palette(count):
    """One RGB colour per class, the same on every run (tools/infer.py's fallback)."""
    return np.random.RandomState(42).randint(0, 255, size=(count, 3)).tolist()


def load_model(path, engine='onnxruntime', precision='f32'):
    """(run, metadata) of a whole-detector ONNX file. ``run(inputs)`` maps the four contract inputs (numpy) to
    {'boxes', 'scores', 'labels', 'masks'} (numpy); ``metadata``: {'classes', 'palette', 'preprocess'}. The
    engine's module is imported here, only the one chosen."""
    metadata = read_metadata(path)
    if precision not in ('f32', 'bf16') or (precision == 'bf16' and engine != 'openvino'):
        raise error(f'--precision {precision} with --engine {engine}: bf16 runs with --engine openvino only')
    try:
        module = importlib.import_module(engine)
    except ImportError:
        raise error(f'--engine {engine}: {engine} is not installed; pip install {engine} (requirements.txt pins '
                    'the tested version)')
    try:
        if engine == 'onnxruntime':
            session = module.InferenceSession(path, providers=['CPUExecutionProvider'])
            inputs = [node.name for node in session.get_inputs()]
            outputs = [node.name for node in session.get_outputs()]

            def run(feeds):
                return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), feeds)))
        elif engine == 'openvino':
            compiled = module.Core().compile_model(path, 'CPU', {'INFERENCE_PRECISION_HINT': precision})
            inputs = [name for port in compiled.inputs for name in port.get_names()]
            outputs = [name for port in compiled.outputs for name in port.get_names()]

            def run(feeds):
                result = compiled(feeds)
                return {name: np.asarray(result[compiled.output(name)]) for name in OUTPUT_NAMES}
        else:
            raise error(f'--engine {engine}: the engines are onnxruntime and openvino')
    except SystemExit:
        raise
    except Exception as exception:  # the engines raise their own types for files they cannot load
        raise error(f'{engine} cannot load {path} ({str(exception).strip().splitlines()[0]}): {export_fix(path)}')
    missing = [name for name in INPUT_NAMES if name not in inputs] + \
        [name for name in OUTPUT_NAMES if name not in outputs]
    if missing:
        raise error(f'{path} lacks the whole detector\'s inputs and outputs {", ".join(missing)} (it has '
                    f'{", ".join(inputs)} -> {", ".join(outputs)}); {export_fix(path)}')
    return run, metadata


# --- preprocessing, prediction, outputs ---------------------------------------------------------------------

def resized_size(width, height, scale, keep_ratio):
    """(new width, new height) of mmdet's Resize: mmcv's ``rescale_size`` (the largest size within ``scale`` =
    (W, H) at the same aspect ratio, rounded half up) with ``keep_ratio``, else ``scale`` itself."""
    if not keep_ratio:
        return int(scale[0]), int(scale[1])
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(width * float(factor) + 0.5), int(height * float(factor) + 0.5)


def preprocess(image, preprocess_meta):
    """The contract's four inputs for one BGR uint8 image, as the config's test pipeline (mmdet's Resize with
    mmcv's cv2 backend) and data preprocessor (channel order, float32 (x - mean) / std, bottom/right padding to
    the divisor with pad_value) make them."""
    meta = preprocess_meta
    height, width = image.shape[:2]
    new_width, new_height = resized_size(width, height, meta['resize_scale'], meta['keep_ratio'])
    resized = cv2.resize(image, (new_width, new_height),
                         interpolation=INTERPOLATIONS[meta.get('interpolation', 'bilinear')])
    if meta['bgr_to_rgb']:
        resized = resized[..., ::-1]
    mean = np.asarray(meta['mean'], np.float32)
    std = np.asarray(meta['std'], np.float32)
    normalized = (resized.astype(np.float32) - mean) / std
    divisor = int(meta['pad_size_divisor'])
    padded_height, padded_width = new_height, new_width
    if divisor > 1:
        padded_height, padded_width = -(-new_height // divisor) * divisor, -(-new_width // divisor) * divisor
    batch = np.full((1, 3, padded_height, padded_width), meta['pad_value'], np.float32)
    batch[0, :, :new_height, :new_width] = normalized.transpose(2, 0, 1)
    return {
        'input': batch,
        'img_shape': np.array([new_height, new_width], np.float32),
        'scale_factor': np.array([new_width / width, new_height / height], np.float32),
        'ori_shape': np.array([height, width], np.int64),
    }


def predict(run, image, metadata):
    """The detections of one BGR image: {'boxes' (K, 4) float32, 'scores' (K,) float32, 'labels' (K,) int64,
    'masks' (K, h, w) bool}, in original-image pixels."""
    outputs = run(preprocess(image, metadata['preprocess']))
    height, width = image.shape[:2]
    return {
        'boxes': np.asarray(outputs['boxes'], np.float32).reshape(-1, 4),
        'scores': np.asarray(outputs['scores'], np.float32).reshape(-1),
        'labels': np.asarray(outputs['labels'], np.int64).reshape(-1),
        'masks': np.asarray(outputs['masks']).astype(bool).reshape(-1, height, width),
    }


def rle_counts_string(counts):
    """pycocotools' ``rleToString``: each run length (from the fourth on, minus the one two before: maskApi.c's
    ``if(i>2)``) in 5-bit groups, least significant first, 0x20 marking that more follow, each group + 48 as a
    character."""
    values = np.asarray(counts, np.int64)
    if values.size > 3:
        values = np.concatenate([values[:3], values[3:] - values[1:-2]])
    chars, active = [], np.ones(values.shape, bool)
    for _ in range(13):  # 64 bits in 5-bit groups
        group = values & 0x1F
        values = values >> 5  # arithmetic shift, as C's on a long
        more = np.where(group & 0x10, values != -1, values != 0)
        chars.append(np.where(active, (group | np.where(more, 0x20, 0)) + 48, 0))
        active = active & more
        if not active.any():
            break
    chars = np.stack(chars, axis=1).reshape(-1)
    return chars[chars != 0].astype(np.uint8).tobytes().decode('ascii')


def encode_rle(mask):
    """COCO's compressed RLE of a (h, w) mask, as pycocotools' ``mask.encode`` (column-major run lengths, the
    first of zeros) with the counts as a string: {'size': [h, w], 'counts': str}."""
    height, width = mask.shape
    flat = np.asarray(mask, bool).reshape(-1, order='F')
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds)
    if flat.size and flat[0]:
        counts = np.concatenate([[0], counts])
    return {'size': [int(height), int(width)], 'counts': rle_counts_string(counts)}


def to_json(detections, classes, score_thr):
    """The prediction dict of tools/infer.py (mmdet's ``DetInferencer.pred2dict`` with the detections at or above
    ``score_thr`` and their class names): labels, scores, bboxes, masks (COCO RLE), label_names."""
    scores = detections['scores'].tolist()
    keep = [i for i, score in enumerate(scores) if score >= score_thr]
    labels = detections['labels'][keep].tolist()
    return {
        'labels': labels,
        'scores': [scores[i] for i in keep],
        'bboxes': detections['boxes'][keep].tolist(),
        'masks': [encode_rle(detections['masks'][i]) for i in keep],
        'label_names': [classes[label] for label in labels],
    }


def draw(image, detections, metadata, score_thr):
    """A BGR copy of ``image`` with the detections at or above ``score_thr`` drawn: masks blended in the class
    colour, boxes, and 'name: score%' labels."""
    picture = image.copy()
    height, width = image.shape[:2]
    thickness = max(1, round(min(height, width) / 300))
    font_scale = max(0.35, min(height, width) / 800)
    keep = [i for i, score in enumerate(detections['scores'].tolist()) if score >= score_thr]
    for i in keep:
        label = int(detections['labels'][i])
        color = np.array(metadata['palette'][label % len(metadata['palette'])][::-1], np.float32)  # RGB -> BGR
        mask = detections['masks'][i]
        picture[mask] = (picture[mask] * (1 - MASK_OPACITY) + color * MASK_OPACITY).astype(np.uint8)
    for i in keep:
        label = int(detections['labels'][i])
        color = tuple(int(c) for c in metadata['palette'][label % len(metadata['palette'])][::-1])
        x1, y1, x2, y2 = (int(round(float(v))) for v in detections['boxes'][i])
        cv2.rectangle(picture, (x1, y1), (x2, y2), color, thickness)
        name = metadata['classes'][label] if label < len(metadata['classes']) else str(label)
        text = f'{name}: {round(float(detections["scores"][i]) * 100, 1)}'  # as mmdet's visualizer labels
        (text_width, text_height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = max(0, y1 - text_height - baseline)
        cv2.rectangle(picture, (x1, top), (x1 + text_width, top + text_height + baseline), color, cv2.FILLED)
        text_color = (0, 0, 0) if sum(color) > 384 else (255, 255, 255)
        cv2.putText(picture, text, (x1, top + text_height), cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_color, 1,
                    cv2.LINE_AA)
    return picture


# --- videos, opened as tools/infer.py opens them ---------------------------------------------------------

def open_video(path):
    """The video's cv2.VideoCapture, as mmcv's VideoReader opens it; one without frames is an error."""
    video = cv2.VideoCapture(path)
    if not video.isOpened() or int(round(video.get(cv2.CAP_PROP_FRAME_COUNT))) == 0:
        video.release()
        raise error(f'cannot read video {path}: OpenCV finds no frames in it; convert it to MP4 (H.264)')
    return video


def video_frames(video):
    video.set(cv2.CAP_PROP_POS_FRAMES, 0)
    while True:
        ok, frame = video.read()
        if not ok:
            return
        yield frame


# --- the run ----------------------------------------------------------------------------------------------

def save_json(prediction, path_stem):
    os.makedirs(osp.dirname(path_stem), exist_ok=True)
    with open(path_stem + '.json', 'w') as stream:
        json.dump(prediction, stream)


def run_inputs(run, metadata, items, out_dir, score_thr):
    """Predict, save and draw every image and video frame of ``items`` under ``out_dir``; one line per input."""
    os.makedirs(osp.join(out_dir, 'vis'), exist_ok=True)
    with open(osp.join(out_dir, 'classes.json'), 'w') as stream:
        json.dump(list(metadata['classes']), stream, indent=1)
    for name, path, is_video in items:
        stem = osp.splitext(name)[0]
        if not is_video:
            image = read_image(path)
            detections = predict(run, image, metadata)
            prediction = to_json(detections, metadata['classes'], score_thr)
            save_json(prediction, osp.join(out_dir, 'preds', stem))
            cv2.imwrite(osp.join(out_dir, 'vis', name), draw(image, detections, metadata, score_thr))
            print(f'{path}: {len(prediction["labels"])} detections', flush=True)
            continue
        video = open_video(path)
        fps = video.get(cv2.CAP_PROP_FPS) or 25
        writer, count = None, 0
        try:
            for index, frame in enumerate(video_frames(video)):
                detections = predict(run, frame, metadata)
                save_json(to_json(detections, metadata['classes'], score_thr),
                          osp.join(out_dir, 'preds', stem, f'{index:06d}'))
                picture = draw(frame, detections, metadata, score_thr)
                if writer is None:
                    writer = cv2.VideoWriter(osp.join(out_dir, 'vis', stem + '.mp4'), cv2.VideoWriter_fourcc(*'mp4v'),
                                             fps, (picture.shape[1], picture.shape[0]))
                writer.write(picture)
                count += 1
        finally:
            video.release()
            if writer is not None:
                writer.release()
        print(f'{path}: {count} frames', flush=True)


def main(argv=None):
    args = parse_args(argv)
    items = list_inputs(args.inputs)
    for _, path, is_video in items:  # a video without frames stops the run before the model loads
        if is_video:
            open_video(path).release()
    run, metadata = load_model(args.model, args.engine, args.precision)
    run_inputs(run, metadata, items, args.out_dir, args.score_thr)
    print(f'Pictures in {osp.join(args.out_dir, "vis")}, predictions in {osp.join(args.out_dir, "preds")}')
    return args.out_dir


if __name__ == '__main__':
    main()
