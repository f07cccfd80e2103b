"""Run a trained ConvNeXt detector or segmentor on your own images or videos, and save what it sees.

    python tools/infer.py CONFIG CHECKPOINT INPUT... [--out-dir DIR] [--device cpu|cuda] [--score-thr T]
        [--amp] [--cfg-options KEY=VALUE ...]

INPUT is an image file, a folder of images (its files with an image extension, not its subfolders) or a video
file; give as many as you like. The model runs through mmdet's ``DetInferencer`` or mmseg's ``MMSegInferencer`` and their own call
(the config's test pipeline, ``test_step``, the libraries' visualizers), plus what they lack: the checkpoint is
checked against the whole model (a file of another model stops with the parts that differ), class names come from
the checkpoint (ADE20K's for a segmentation checkpoint without any), videos, and predictions named after their
images. Under ``--out-dir`` (default
``outputs``) it writes, per image:

- ``vis/NAME``: the image with the predictions drawn: boxes, masks, class names and scores at or above
  ``--score-thr`` (detection), or the coloured classes over the image (segmentation);
- ``preds/STEM.json`` (detection: ``labels``, ``label_names``, ``scores``, ``bboxes`` as x1 y1 x2 y2 pixels,
  ``masks`` as COCO RLE; the detections at or above ``--score-thr``) or ``preds/STEM.png`` (segmentation: each
  pixel's class index, 8-bit, 16-bit beyond 256 classes);
- and once, ``classes.json``: the class names in label order.

A video gives ``vis/STEM.mp4`` and ``preds/STEM/FRAME.json|png`` per frame. Class names (and colours) come from
the checkpoint's metadata, which ``tools/train.py`` saves: the demo's classes for a demo checkpoint, COCO's or
ADE20K's for a checkpoint without any. A checkpoint of the demo runs with its demo config (configs/demo/; given
a paper config, the error names the demo config). ``--amp`` runs the network's layers (backbone, neck, the heads'
convolutions and FCs) under mmengine's autocast, bfloat16 on the CPU and float16 on CUDA, and box decoding, NMS,
RoIAlign, mask pasting and resizing in float32 (mmcv's CPU NMS and RoIAlign take float32 only):
convnext_mm/mixed_precision.py, as ``tools/test.py --amp``. On the CPU, glibc keeps freed blocks for reuse while
the images run where the config lists ``CPUMemoryReuseHook``, as in its test runs.
"""
import argparse
import contextlib
import json
import os
import os.path as osp
import sys

import mmcv
import numpy as np
import torch
from mmengine.config import DictAction
from mmengine.utils import ProgressBar

from config_utils import load_config
from image_inputs import error, list_inputs, read_image
from convnext_mm.checkpoint import CheckpointError, read_checkpoint
from convnext_mm.cpu_fast_path import freed_memory_reuse_as_declared
from convnext_mm.mixed_precision import autocast_layers
from trained_model import CheckpointMismatchError, check_fits, checkpoint_meta

SEG_OPACITY = 0.5  # the image stays visible under the classes' colours


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Run a trained detector or segmentor on images or videos')
    parser.add_argument('config', help='config file the checkpoint was trained with')
    parser.add_argument('checkpoint', help='checkpoint file (tools/train.py writes them into its work dir)')
    parser.add_argument('inputs', nargs='+', metavar='INPUT', help='image file, folder of images, or video file')
    parser.add_argument('--out-dir', default='outputs', help='where pictures and predictions go (default: outputs)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw and save the detections scoring at least this (default: 0.3)')
    parser.add_argument('--amp', action='store_true',
                        help='mixed-precision inference as tools/test.py --amp: the layers in bfloat16 on the CPU, '
                        'float16 on CUDA; post-processing in float32')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override settings of the config')
    args = parser.parse_args(argv)
    if not osp.isfile(args.config):
        parser.error(f'config {args.config!r} is not a file')
    if not osp.isfile(args.checkpoint):
        parser.error(f'checkpoint {args.checkpoint!r} is not a file')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: this machine has no CUDA GPU; use --device cpu')
    if not 0 <= args.score_thr <= 1:
        parser.error(f'--score-thr {args.score_thr}: a score threshold is between 0 and 1')
    return args


def open_video(path):
    video = mmcv.VideoReader(path)
    if not video.opened or video.frame_cnt == 0:
        raise error(f'cannot read video {path}: OpenCV finds no frames in it; convert it to MP4 (H.264)')
    return video


def count_images(items):
    return sum(open_video(path).frame_cnt if is_video else 1 for _, path, is_video in items)


def build_inferencer(cfg, args):
    """mmdet's ``DetInferencer`` or mmseg's ``MMSegInferencer`` on the config and checkpoint, plus what they lack:
    the whole model checked against the checkpoint (mmengine's loader only warns about heads that do not fit; the
    backbone checks itself), and ADE20K's class names for a segmentation checkpoint without any (mmseg would take
    Cityscapes')."""
    try:
        checkpoint = read_checkpoint(args.checkpoint)  # a corrupt file is named here, not deep in mmengine
        if cfg.default_scope == 'mmdet':
            from mmdet.apis import DetInferencer
            inferencer = DetInferencer(model=cfg, weights=args.checkpoint, device=args.device, scope='mmdet',
                                       show_progress=False)
        else:
            from mmseg.apis import MMSegInferencer
            inferencer = MMSegInferencer(model=cfg, weights=args.checkpoint, device=args.device, scope='mmseg')
        check_fits(inferencer.model, checkpoint, args.checkpoint, args.config)
    except (CheckpointError, CheckpointMismatchError) as exception:
        raise error(str(exception))
    meta = inferencer.model.dataset_meta
    if cfg.default_scope == 'mmseg':
        if 'dataset_meta' not in checkpoint_meta(checkpoint):
            meta = inferencer.model.dataset_meta = ade20k_classes(inferencer.model.decode_head.num_classes)
        if len(meta.get('palette') or ()) != len(meta['classes']):
            meta['palette'] = random_palette(len(meta['classes']))  # the visualizer needs one colour per class
    return inferencer


def ade20k_classes(count):
    from mmseg.utils import get_classes, get_palette
    if count == len(get_classes('ade20k')):
        return dict(classes=get_classes('ade20k'), palette=get_palette('ade20k'))
    return dict(classes=[f'class {i}' for i in range(count)], palette=random_palette(count))


def random_palette(count):
    return np.random.RandomState(42).randint(0, 255, size=(count, 3)).tolist()  # as mmseg's datasets make one


def infer(inferencer, image, score_thr):
    """(prediction, RGB picture) of one image through the Inferencer's own call (its pipeline, ``test_step`` and
    visualizer). ``image``: a file path, or a video frame (BGR), which is drawn on in RGB like a file. Detection:
    mmdet's prediction dict with the detections at or above ``score_thr`` and their class names; segmentation:
    the label map, 8-bit (16-bit beyond 256 classes)."""
    detection = hasattr(inferencer, 'pred2dict')
    draw = dict(pred_score_thr=score_thr) if detection else dict(opacity=SEG_OPACITY)
    if isinstance(image, str):
        result = inferencer(image, return_vis=True, no_save_vis=True, no_save_pred=True, **draw) if detection \
            else inferencer(image, return_vis=True, **draw)
        prediction, picture = result['predictions'], result['visualization']
    else:  # the visualizer draws on an array as it is given: an RGB copy of the frame
        sample = inferencer(image, return_datasamples=True)
        sample = sample['predictions'] if isinstance(sample, dict) else sample
        sample = sample[0] if isinstance(sample, list) else sample
        picture = inferencer.visualize([mmcv.bgr2rgb(image)], [sample], return_vis=True, **draw)
        prediction = inferencer.pred2dict(sample) if detection else sample.pred_sem_seg.data[0].cpu().numpy()
    prediction = prediction[0] if isinstance(prediction, list) else prediction
    picture = picture[0] if isinstance(picture, list) else picture
    if not detection:
        return prediction.astype(np.uint8 if prediction.max(initial=0) < 256 else np.uint16), picture
    keep = [i for i, score in enumerate(prediction['scores']) if score >= score_thr]
    prediction = {key: [values[i] for i in keep] for key, values in prediction.items()}
    classes = inferencer.model.dataset_meta['classes']
    prediction['label_names'] = [classes[label] for label in prediction['labels']]
    return prediction, picture


def frames(items):
    """(output stem, picture name, image path or BGR frame, video path or None) for every image and video frame, in
    order; an unreadable image stops with its name before the Inferencer reads it."""
    for name, path, is_video in items:
        stem = osp.splitext(name)[0]
        if not is_video:
            read_image(path)
            yield stem, name, path, None
            continue
        for index, frame in enumerate(open_video(path)):
            yield osp.join(stem, f'{index:06d}'), None, frame, path


def run(inferencer, items, out_dir, score_thr):
    os.makedirs(osp.join(out_dir, 'vis'), exist_ok=True)
    with open(osp.join(out_dir, 'classes.json'), 'w') as stream:
        json.dump(list(inferencer.model.dataset_meta['classes']), stream, indent=1)
    bar = ProgressBar(count_images(items), file=sys.stdout)
    videos = {}
    try:
        for stem, picture_name, image, video_path in frames(items):
            prediction, picture = infer(inferencer, image, score_thr)
            save_prediction(prediction, osp.join(out_dir, 'preds', stem))
            if video_path is None:
                mmcv.imwrite(mmcv.rgb2bgr(picture), osp.join(out_dir, 'vis', picture_name))
            else:
                video_writer(videos, video_path, picture, out_dir).write(mmcv.rgb2bgr(picture))
            bar.update()
    finally:
        for writer in videos.values():
            writer.release()
    sys.stdout.write('\n')


def save_prediction(prediction, path_stem):
    os.makedirs(osp.dirname(path_stem), exist_ok=True)
    if isinstance(prediction, dict):
        with open(path_stem + '.json', 'w') as stream:
            json.dump(prediction, stream)
    else:
        mmcv.imwrite(prediction, path_stem + '.png')  # lossless; 16-bit PNG where needed


def video_writer(videos, video_path, picture, out_dir):
    """The mp4 writer of ``video_path``'s drawn frames, opened on its first frame."""
    import cv2
    if video_path not in videos:
        out = osp.join(out_dir, 'vis', osp.splitext(osp.basename(video_path))[0] + '.mp4')
        fps = mmcv.VideoReader(video_path).fps or 25
        videos[video_path] = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*'mp4v'), fps,
                                             (picture.shape[1], picture.shape[0]))
    return videos[video_path]


def main(argv=None):
    args = parse_args(argv)
    items = list_inputs(args.inputs)
    cfg = load_config(args.config, args.cfg_options)
    inferencer = build_inferencer(cfg, args)
    with freed_memory_reuse_as_declared(cfg, args.device), \
            autocast_layers(inferencer.model) if args.amp else contextlib.nullcontext():
        run(inferencer, items, args.out_dir, args.score_thr)
    print(f'Pictures in {osp.join(args.out_dir, "vis")}, predictions in {osp.join(args.out_dir, "preds")}')
    return args.out_dir


if __name__ == '__main__':
    main()
