"""Export a trained ConvNeXt backbone, UperNet segmentor or detector to ONNX, and check it in onnxruntime.

    python tools/export_onnx.py CONFIG CHECKPOINT --out FILE.onnx [--shape H W] [--dynamic] [--backbone-only]
        [--time N] [--threads N] [--cfg-options KEY=VALUE ...]

The backbone and segmentor graphs take one input, ``input``: the normalized NCHW float32 batch that the
config's data preprocessor produces (the tool prints its mean, std and channel order). What is exported:

- ``--backbone-only`` (any config): the backbone's feature maps ``stride4`` .. ``stride32`` (``output0_stride16``,
  ... where strides repeat: a dilated or isotropic backbone). CHECKPOINT may be
  a trained detector or segmentor, or any ConvNeXt file that ``init_cfg`` reads (official, timm, mmpretrain).
- a segmentation config: the segmentor's logits at the input size, ``seg_logits`` (N, classes, H, W); argmax
  over classes gives the label map. This is ``EncoderDecoder.encode_decode``, one window: configs that test
  with sliding windows (``test_cfg.mode='slide'``) run the file once per crop.
- a Mask R-CNN or Cascade Mask R-CNN config: the whole detector, from image to detections
  (tools/whole_detector.py), as mmdet's ``predict(rescale=True)``. Its inputs are ``input`` (batch 1, any
  height and width), ``img_shape`` (float [h, w] of the resized image before padding), ``scale_factor``
  (float [w, h], resized / original) and ``ori_shape`` (int64 [h, w]); its outputs ``boxes`` (K, 4) in
  original-image pixels, ``scores`` (K), ``labels`` (K) and ``masks`` (K, ori_h, ori_w) bool, by descending
  score. The file's metadata holds the class names, their colours and the test pipeline's preprocessing,
  which tools/deploy_infer.py reads: it runs the file on images with numpy, OpenCV and the engine alone.

Export uses torch's dynamo exporter (``torch.onnx.export(dynamo=True)``). For the backbone and the segmentor the
batch size is dynamic; ``--dynamic`` makes height and width dynamic too, except for models with adaptive pooling
to several cells (UperNet's pyramid pooling), which export for one size only. Then onnxruntime runs the file on
random inputs (a second batch size, and with ``--dynamic`` a second image size) and the tool prints the largest
deviation from PyTorch, relative to the output's largest magnitude; above 1e-4 it fails. The whole detector
takes any height and width; onnxruntime runs it on two sizes and the tool prints how its detections compare
with PyTorch's. ``--time N`` also times onnxruntime, PyTorch fp32 and
PyTorch bf16 autocast on one image, N interleaved runs each (``--threads``: with
that many CPU threads each).
"""
import argparse
import json
import logging
import os.path as osp
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import DictAction

from config_utils import build_model, load_config
from convnext_mm.checkpoint import CheckpointError, load_pretrained
from trained_model import CheckpointMismatchError, checkpoint_meta, load_trained

MAX_RELATIVE_DEVIATION = 1e-4
# ONNX's protobuf holds at most 2 GiB; larger models keep their weights in FILE.onnx.data beside it.
SINGLE_FILE_BYTES = 1.5 * 2**30
DEFAULT_DETECTION_SHAPE = (800, 1344)  # 1333x800 padded to mmdet's divisor 32
DEFAULT_BACKBONE_SHAPE = (224, 224)
DETECTOR_INPUTS = ('input', 'img_shape', 'scale_factor', 'ori_shape')
DETECTOR_OUTPUTS = ('boxes', 'scores', 'labels', 'masks')


class Backbone(nn.Module):
    """The backbone's feature maps (strides 4 to 32)."""

    def __init__(self, model):
        super().__init__()
        self.backbone = model.backbone

    def forward(self, x):
        return tuple(self.backbone(x))


class SegmentorLogits(nn.Module):
    """mmseg's ``encode_decode`` on one window: backbone, decode head, logits resized to the input size."""

    def __init__(self, model):
        super().__init__()
        self.segmentor = model

    def forward(self, x):
        return self.segmentor.encode_decode(x, [dict(img_shape=x.shape[2:])])


def export_target(model, cfg, backbone_only):
    """(module, output names, description) of what is exported for this config."""
    if backbone_only:
        strides = model.backbone.out_strides
        names = [f'stride{s}' for s in strides]  # unique unless the backbone dilates or is isotropic
        names = names if len(set(names)) == len(names) else [f'output{i}_stride{s}' for i, s in enumerate(strides)]
        return Backbone(model), names, 'the ConvNeXt backbone'
    if cfg.default_scope == 'mmseg':
        return SegmentorLogits(model), ['seg_logits'], f'the {type(model).__name__} segmentor (logits)'
    from whole_detector import ExportError, WholeDetector
    try:
        return WholeDetector(model), list(DETECTOR_OUTPUTS), f'the whole {type(model).__name__} detector'
    except ExportError as exception:
        raise SystemExit(f'error: {exception}')


def default_shape(cfg, backbone_only):
    if cfg.default_scope == 'mmseg':
        crop = cfg.model.get('test_cfg', {}).get('crop_size') or cfg.model.data_preprocessor.get('size')
        if crop:
            return tuple(crop)
    return DEFAULT_BACKBONE_SHAPE if backbone_only else DEFAULT_DETECTION_SHAPE


def load_weights(model, args):
    try:
        if args.backbone_only:  # any ConvNeXt layout; a detector's or segmentor's file gives its backbone
            load_pretrained(model.backbone, args.checkpoint, logger=None)
            return {}
        return load_trained(model, args.checkpoint, args.config)
    except (CheckpointError, CheckpointMismatchError) as exception:
        raise SystemExit(f'error: {exception}')


def fixed_size_modules(module):
    """Names of the adaptive poolings to more than one cell (UperNet's PPM: scales 2, 3, 6). torch's exporter
    writes them as poolings with the kernels of the example's size, so at any other size the file computes
    something else (measured: 0.14 relative deviation); the size must stay fixed."""
    adaptive = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    return [name.split('.', 1)[1] for name, m in module.named_modules()  # without the wrapper's own name
            if isinstance(m, adaptive) and torch.nn.modules.utils._pair(m.output_size) != (1, 1)]


def export(module, example, path, input_names, output_names, dynamic_shapes, metadata):
    # torch.onnx warns about torchvision's ops it would map if torchvision were installed: not used here.
    logging.getLogger('torch.onnx._internal.exporter._registration').setLevel(logging.ERROR)
    translations = {}
    if isinstance(example, tuple) and len(example) == len(DETECTOR_INPUTS):
        from whole_detector import ONNX_TRANSLATIONS as translations
    large = sum(p.numel() * p.element_size() for p in module.parameters()) > SINGLE_FILE_BYTES
    try:
        program = torch.onnx.export(
            module, example, dynamo=True, input_names=input_names, output_names=output_names,
            dynamic_shapes=dynamic_shapes, custom_translation_table=translations, verbose=False)
    except Exception as exception:  # the exporter raises its own error types; its message names the op
        raise SystemExit(f'error: torch.onnx.export failed: {type(exception).__name__}: {exception}')
    program.model.metadata_props.update({key: json.dumps(value) for key, value in metadata.items()})
    program.save(path, external_data=large)
    return program


def relative_deviation(onnx_outputs, torch_outputs):
    """max |onnx - torch| / max |torch| per output."""
    return [float(np.abs(o - t).max() / max(np.abs(t).max(), 1e-12)) for o, t in zip(onnx_outputs, torch_outputs)]


def torch_outputs(module, feeds, bf16=False):
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        outputs = module(*(torch.from_numpy(value) for value in feeds.values()))
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs, )
    return [o.float().numpy() for o in outputs]


def box_iou(a, b):
    """IoU of each box in a (N, 4) with each in b (M, 4)."""
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def match_detections(found, reference, min_box_iou=0.98):
    """Pairs (i, j) of ``found`` and ``reference`` detections (boxes, scores, labels, masks) of one label, each
    the unmatched reference of highest box IoU (at least ``min_box_iou``), taken by descending score: a
    detection whose rank changed with an equal score still finds its counterpart."""
    ious = box_iou(found[0], reference[0]) if len(found[1]) and len(reference[1]) else np.zeros((0, 0))
    pairs, taken = [], set()
    for i in np.argsort(-found[1], kind='stable'):
        candidates = [j for j in range(len(reference[1])) if j not in taken and reference[2][j] == found[2][i]
                      and ious[i, j] >= min_box_iou]
        if candidates:
            j = max(candidates, key=lambda j: ious[i, j])
            taken.add(j)
            pairs.append((i, j))
    return pairs


def compare_detections(found, reference):
    """(fraction of the detections matched, largest score deviation, smallest mask IoU) of two engines' outputs."""
    pairs = match_detections(found, reference)
    total = max(len(found[1]), len(reference[1]))
    score = max((abs(float(found[1][i]) - float(reference[1][j])) for i, j in pairs), default=0.0)
    mask_ious = [np.logical_and(found[3][i], reference[3][j]).sum()
                 / max(np.logical_or(found[3][i], reference[3][j]).sum(), 1) for i, j in pairs]
    return (len(pairs) / total if total else 1.0), score, float(min(mask_ious, default=1.0))


def check_parity(session, module, feeds, output_names):
    """Largest relative deviation of onnxruntime from PyTorch on these inputs; for the whole detector, 0 when every
    detection has its counterpart (label, box IoU >= 0.98, score within 2e-3, mask IoU >= 0.95), else 1."""
    onnx_outputs = session.run(None, feeds)
    reference = torch_outputs(module, feeds)
    shape = tuple(feeds['input'].shape)
    if 'boxes' in output_names:
        matched, score, mask_iou = compare_detections(onnx_outputs, reference)
        print(f'onnxruntime vs PyTorch on a random {shape} input: {len(onnx_outputs[1])} and {len(reference[1])} '
              f'detections, {matched:.0%} matched, largest score deviation {score:.1e}, smallest mask IoU '
              f'{mask_iou:.3f}')
        return 0.0 if matched == 1 and score <= 2e-3 and mask_iou >= 0.95 else 1.0
    deviations = relative_deviation(onnx_outputs, reference)
    worst = max(range(len(deviations)), key=deviations.__getitem__)
    print(f'onnxruntime vs PyTorch on a random {shape} input: largest relative deviation '
          f'{deviations[worst]:.2e} ({output_names[worst]}); outputs '
          + ', '.join(f'{n} {tuple(o.shape)}' for n, o in zip(output_names, onnx_outputs)))
    return deviations[worst]


def openvino_engines(path, threads):
    """OpenVINO's CPU plugin on the file in f32 and in bf16 (where the CPU has bf16 instructions), or none when
    openvino is not installed."""
    try:
        import openvino
    except ImportError:
        return {}
    core = openvino.Core()
    engines = {}
    for precision in ('f32', 'bf16'):
        config = {'INFERENCE_PRECISION_HINT': precision}
        if threads:
            config['INFERENCE_NUM_THREADS'] = threads
        compiled = core.compile_model(path, 'CPU', config)
        if compiled.get_property('INFERENCE_PRECISION_HINT') == getattr(openvino.Type, precision):
            engines[f'OpenVINO {precision}'] = compiled
    return engines


def time_engines(session, module, feeds, iters, openvino=None):
    """Median milliseconds per batch of onnxruntime, PyTorch fp32 and bf16 autocast (and OpenVINO f32 and bf16),
    interleaved per round (a machine busy with other work slows all alike)."""
    engines = {
        'onnxruntime fp32': lambda: session.run(None, feeds),
        'PyTorch fp32': lambda: torch_outputs(module, feeds),
        'PyTorch bf16 autocast': lambda: torch_outputs(module, feeds, bf16=True),
    }
    for name, compiled in (openvino or {}).items():
        engines[name] = lambda compiled=compiled: compiled(feeds)
    times = {name: [] for name in engines}
    for name, run in engines.items():  # warm-up
        run()
    for _ in range(iters):
        for name, run in engines.items():
            start = time.perf_counter()
            run()
            times[name].append(1000 * (time.perf_counter() - start))
    shape = tuple(feeds['input'].shape)
    for name, values in times.items():
        print(f'{name}: {statistics.median(values):.1f} ms per batch of {shape[0]} ({shape}), median of {iters}')
    return {name: statistics.median(values) for name, values in times.items()}


def describe_input(cfg):
    preprocessor = cfg.model.get('data_preprocessor', {})
    order = 'RGB' if preprocessor.get('bgr_to_rgb') else 'BGR'
    return (f"input: float32 NCHW, channels {order}, (pixel - mean) / std with mean={preprocessor.get('mean')} "
            f"std={preprocessor.get('std')}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Export a ConvNeXt backbone, segmentor or detector to ONNX')
    parser.add_argument('config', help='config file the checkpoint was trained with')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', required=True, help='ONNX file to write')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input height and width (default: the crop size for segmentation, 800 1344 for '
                        'detection, 224 224 for --backbone-only); the whole detector takes any size, this is '
                        'the size it is checked at')
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic height and width of the backbone or segmentor (the batch always is; the '
                        'whole detector always takes any height and width)')
    parser.add_argument('--backbone-only', action='store_true', help='export the backbone alone')
    parser.add_argument('--threads', type=int, help='CPU threads of PyTorch and onnxruntime (default: their own)')
    parser.add_argument('--time', type=int, default=0, metavar='N',
                        help='time onnxruntime, PyTorch fp32 and bf16 (and OpenVINO f32 and bf16) over N '
                        'interleaved runs')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override settings of the config')
    args = parser.parse_args(argv)
    for label, path in (('config', args.config), ('checkpoint', args.checkpoint)):
        if not osp.isfile(path):
            parser.error(f'{label} {path!r} is not a file')
    if not args.out.endswith('.onnx'):
        parser.error(f'--out {args.out}: give a file name ending in .onnx')
    if args.shape and min(args.shape) < 32:
        parser.error(f'--shape {args.shape[0]} {args.shape[1]}: ConvNeXt needs at least 32x32 (its total stride)')
    return args


def preprocessing(cfg):
    """What a runner needs to prepare an image as the config's test pipeline and data preprocessor do (the
    whole detector file's ``preprocess`` metadata); a pipeline with other steps stops with an error."""
    pipeline = cfg.test_dataloader.dataset.pipeline
    steps = [t['type'].split('.')[-1] for t in pipeline]
    resizes = [t for t in pipeline if t['type'].split('.')[-1] == 'Resize']
    unknown = [s for s in steps if s not in ('LoadImageFromFile', 'LoadAnnotations', 'Resize', 'PackDetInputs')]
    if unknown or len(resizes) != 1 or not resizes[0].get('scale'):
        raise SystemExit(f'error: the test pipeline of {cfg.filename} ({", ".join(steps)}) is not one Resize to a '
                         'scale: only LoadImageFromFile, Resize(scale=...), LoadAnnotations and PackDetInputs '
                         'are written into the file; export with a config whose test pipeline has those')
    resize, preprocessor = resizes[0], cfg.model.data_preprocessor
    if resize.get('interpolation', 'bilinear') != 'bilinear' or resize.get('backend', 'cv2') != 'cv2':
        raise SystemExit('error: the test Resize is not bilinear with OpenCV, the only resize written into the file')
    return dict(resize_scale=list(resize['scale']), keep_ratio=bool(resize.get('keep_ratio', False)),
                mean=list(preprocessor.mean), std=list(preprocessor.std),
                bgr_to_rgb=bool(preprocessor.get('bgr_to_rgb', False)),
                pad_size_divisor=int(preprocessor.get('pad_size_divisor', 1)),
                pad_value=preprocessor.get('pad_value', 0), interpolation='bilinear')


def detector_metadata(cfg, checkpoint, model):
    """The class names (the checkpoint's, else COCO's as mmdet's DetInferencer takes them), their colours and the
    preprocessing."""
    dataset_meta = checkpoint_meta(checkpoint).get('dataset_meta') or {}
    classes = list(dataset_meta.get('classes') or ())
    num_classes = model.roi_head.mask_head[-1].num_classes if isinstance(model.roi_head.mask_head, nn.ModuleList) \
        else model.roi_head.mask_head.num_classes
    if not classes:
        from mmdet.evaluation import get_classes
        coco = list(get_classes('coco'))
        classes = coco if num_classes == len(coco) else [f'class {i}' for i in range(num_classes)]
    metadata = dict(classes=classes, preprocess=preprocessing(cfg))
    if dataset_meta.get('palette') and len(dataset_meta['palette']) == len(classes):
        metadata['palette'] = [list(colour) for colour in dataset_meta['palette']]
    return metadata


def example_inputs(height, width, seed, image_height=None, image_width=None):
    """Inputs of the whole detector: a random normalized image padded to (height, width), of which the image
    proper is (image_height, image_width), at its original size."""
    image_height, image_width = image_height or height, image_width or width
    image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed)).numpy()
    image[:, :, image_height:], image[:, :, :, image_width:] = 0, 0
    return dict(input=image, img_shape=np.array([image_height, image_width], np.float32),
                scale_factor=np.ones(2, np.float32), ori_shape=np.array([image_height, image_width], np.int64))


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.cfg_options)
    cfg.model.backbone.init_cfg = None  # the weights come from CHECKPOINT
    model = build_model(cfg)
    checkpoint = load_weights(model, args)
    module, output_names, what = export_target(model, cfg, args.backbone_only)
    module.eval()
    height, width = args.shape or default_shape(cfg, args.backbone_only)
    whole_detector = output_names == list(DETECTOR_OUTPUTS)
    if whole_detector:  # batch 1, any height and width
        metadata = detector_metadata(cfg, checkpoint, model)
        feeds = [example_inputs(height, width, 0), example_inputs(height + 32, width + 64, 1, height + 25, width + 37)]
        dynamic_shapes, input_names = ({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}, None, None, None), \
            list(DETECTOR_INPUTS)
        size = 'batch 1, any height and width'
    else:
        metadata = {}
        # An example batch of 2: torch.export would specialize a dimension of size 1 to a constant.
        fixed = fixed_size_modules(module) if args.dynamic else []
        if fixed:
            print(f'--dynamic: the batch is dynamic, height and width stay {height}x{width}: {", ".join(fixed)} '
                  '(adaptive pooling to several cells) export for one input size only; export once per size')
        dynamic_size = args.dynamic and not fixed
        # Also another batch size, and another image size where it is dynamic.
        other = (height + 32, width + 64) if dynamic_size else (height, width)
        feeds = [dict(input=torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0)).numpy()),
                 dict(input=torch.randn(1, 3, *other, generator=torch.Generator().manual_seed(1)).numpy())]
        dims = {0: torch.export.Dim('batch', max=64)}  # dynamic batch always: a batch of 1 costs nothing
        if dynamic_size:
            dims.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
        dynamic_shapes, input_names = (dims, ), ['input']
        size = 'any batch size, ' + ('any height and width' if dynamic_size else f'{height}x{width}')
    example = tuple(torch.from_numpy(value) for value in feeds[0].values())
    export(module, example, args.out, input_names, output_names, dynamic_shapes, metadata)
    print(f'Exported {what} to {args.out} ({size}); {describe_input(cfg)}')

    import onnxruntime
    options = onnxruntime.SessionOptions()
    if args.threads:
        options.intra_op_num_threads = args.threads
    session = onnxruntime.InferenceSession(args.out, options, providers=['CPUExecutionProvider'])
    deviation = max(check_parity(session, module, x, output_names) for x in feeds)
    if deviation > MAX_RELATIVE_DEVIATION:
        what = 'detections differ from' if whole_detector else f'deviates by {deviation:.2e} relative from'
        raise SystemExit(f'error: {args.out} {what} PyTorch\'s, above the tolerance: do not deploy it '
                         '(docs/deployment.md)')
    if args.time:
        image = {key: value[:1] for key, value in feeds[0].items()} if not whole_detector else feeds[0]
        if not whole_detector:
            bf16 = max(relative_deviation(torch_outputs(module, image, bf16=True), torch_outputs(module, image)))
            print(f'PyTorch bf16 autocast vs fp32: largest relative deviation {bf16:.2e}')
        time_engines(session, module, image, args.time, openvino_engines(args.out, args.threads))
    return deviation


if __name__ == '__main__':
    main()
