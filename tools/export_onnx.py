"""Export a trained ConvNeXt backbone, UperNet segmentor or detector to ONNX, and check it in onnxruntime.

    python tools/export_onnx.py CONFIG CHECKPOINT --out FILE.onnx [--shape H W] [--dynamic] [--backbone-only]
        [--time N] [--threads N] [--cfg-options KEY=VALUE ...]

The exported graph takes one input, ``input``: the normalized NCHW float32 batch that the config's data
preprocessor produces (the tool prints its mean, std and channel order). What it outputs:

- ``--backbone-only`` (any config): the backbone's feature maps ``stride4`` .. ``stride32``. CHECKPOINT may be
  a trained detector or segmentor, or any ConvNeXt file that ``init_cfg`` reads (official, timm, mmpretrain).
- a segmentation config: the segmentor's logits at the input size, ``seg_logits`` (N, classes, H, W); argmax
  over classes gives the label map. This is ``EncoderDecoder.encode_decode``, one window: configs that test
  with sliding windows (``test_cfg.mode='slide'``) run the file once per crop.
- a detection config: the detector up to its first NMS: the FPN features ``fpn_stride4`` .. ``fpn_stride64``
  and the RPN head's outputs ``rpn_cls_stride*`` and ``rpn_bbox_stride*``. The rest cannot be exported with
  this stack (docs/deployment.md): proposal selection and the box and mask heads call mmcv's C++ ops
  ``mmcv.ops.nms`` (no ONNX mapping in mmcv 2.x) and ``mmcv.ops.RoIAlign``, which torch's exporter cannot trace.
  They run in PyTorch on these outputs.

Export uses torch's dynamo exporter (``torch.onnx.export(dynamo=True)``). The batch size is dynamic; ``--dynamic``
makes height and width dynamic too, except for models with adaptive pooling to several cells (UperNet's pyramid
pooling), which export for one size only. Then onnxruntime runs the file on random inputs (a second batch size,
and with ``--dynamic`` a second image size) and the tool prints the largest deviation from PyTorch, relative to
the output's largest magnitude; above 1e-4 it fails. ``--time N`` also times onnxruntime, PyTorch fp32 and
PyTorch bf16 autocast on one image, N interleaved runs each (``--threads``: with
that many CPU threads each).
"""
import argparse
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
from trained_model import CheckpointMismatchError, load_trained

MAX_RELATIVE_DEVIATION = 1e-4
# ONNX's protobuf holds at most 2 GiB; larger models keep their weights in FILE.onnx.data beside it.
SINGLE_FILE_BYTES = 1.5 * 2**30
DEFAULT_DETECTION_SHAPE = (800, 1344)  # 1333x800 padded to mmdet's divisor 32
DEFAULT_BACKBONE_SHAPE = (224, 224)


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


class DetectorUpToNMS(nn.Module):
    """A two-stage detector's FPN features and RPN head outputs: everything before its first mmcv op."""

    def __init__(self, model):
        super().__init__()
        self.detector = model

    def forward(self, x):
        features = self.detector.extract_feat(x)
        rpn_scores, rpn_deltas = self.detector.rpn_head(features)
        return (*features, *rpn_scores, *rpn_deltas)


def export_target(model, cfg, backbone_only):
    """(module, output names, description) of what is exported for this config."""
    if backbone_only:
        names = [f'stride{4 * 2**i}' for i in model.backbone.out_indices]
        return Backbone(model), names, 'the ConvNeXt backbone'
    if cfg.default_scope == 'mmseg':
        return SegmentorLogits(model), ['seg_logits'], f'the {type(model).__name__} segmentor (logits)'
    if not hasattr(model, 'rpn_head'):
        raise SystemExit(f'error: {type(model).__name__} is not a two-stage detector with an RPN; this tool '
                         'exports its backbone: add --backbone-only')
    strides = [4 * 2**i for i in range(model.neck.num_outs)]
    names = ([f'fpn_stride{s}' for s in strides] + [f'rpn_cls_stride{s}' for s in strides]
             + [f'rpn_bbox_stride{s}' for s in strides])
    return DetectorUpToNMS(model), names, f'the {type(model).__name__} detector up to its first NMS'


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
        else:
            load_trained(model, args.checkpoint, args.config)
    except (CheckpointError, CheckpointMismatchError) as exception:
        raise SystemExit(f'error: {exception}')


def fixed_size_modules(module):
    """Names of the adaptive poolings to more than one cell (UperNet's PPM: scales 2, 3, 6). torch's exporter
    writes them as poolings with the kernels of the example's size, so at any other size the file computes
    something else (measured: 0.14 relative deviation); the size must stay fixed."""
    adaptive = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    return [name.split('.', 1)[1] for name, m in module.named_modules()  # without the wrapper's own name
            if isinstance(m, adaptive) and torch.nn.modules.utils._pair(m.output_size) != (1, 1)]


def export(module, example, path, output_names, dynamic_size):
    # torch.onnx warns about torchvision's ops it would map if torchvision were installed: not used here.
    logging.getLogger('torch.onnx._internal.exporter._registration').setLevel(logging.ERROR)
    dims = {0: torch.export.Dim('batch', max=64)}  # dynamic batch always: a batch of 1 costs nothing
    if dynamic_size:
        dims.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    large = sum(p.numel() * p.element_size() for p in module.parameters()) > SINGLE_FILE_BYTES
    try:
        program = torch.onnx.export(
            module, (example, ), dynamo=True, input_names=['input'], output_names=output_names,
            dynamic_shapes=(dims, ), verbose=False)
    except Exception as exception:  # the exporter raises its own error types; its message names the op
        raise SystemExit(f'error: torch.onnx.export failed: {type(exception).__name__}: {exception}')
    program.save(path, external_data=large)
    return program


def relative_deviation(onnx_outputs, torch_outputs):
    """max |onnx - torch| / max |torch| per output."""
    return [float(np.abs(o - t).max() / max(np.abs(t).max(), 1e-12)) for o, t in zip(onnx_outputs, torch_outputs)]


def torch_outputs(module, x, bf16=False):
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        outputs = module(x)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs, )
    return [o.float().numpy() for o in outputs]


def check_parity(session, module, x, output_names):
    onnx_outputs = session.run(None, {'input': x.numpy()})
    deviations = relative_deviation(onnx_outputs, torch_outputs(module, x))
    worst = max(range(len(deviations)), key=deviations.__getitem__)
    print(f'onnxruntime vs PyTorch on a random {tuple(x.shape)} input: largest relative deviation '
          f'{deviations[worst]:.2e} ({output_names[worst]}); outputs '
          + ', '.join(f'{n} {tuple(o.shape)}' for n, o in zip(output_names, onnx_outputs)))
    return deviations[worst]


def time_engines(session, module, x, iters):
    """Median milliseconds per batch of onnxruntime, PyTorch fp32 and PyTorch bf16, interleaved per round (a
    machine busy with other work slows all three alike)."""
    engines = {
        'onnxruntime fp32': lambda: session.run(None, {'input': x.numpy()}),
        'PyTorch fp32': lambda: torch_outputs(module, x),
        'PyTorch bf16 autocast': lambda: torch_outputs(module, x, bf16=True),
    }
    times = {name: [] for name in engines}
    for name, run in engines.items():  # warm-up
        run()
    for _ in range(iters):
        for name, run in engines.items():
            start = time.perf_counter()
            run()
            times[name].append(1000 * (time.perf_counter() - start))
    for name, values in times.items():
        print(f'{name}: {statistics.median(values):.1f} ms per batch of {x.shape[0]} ({tuple(x.shape)}), median '
              f'of {iters}')
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
                        'detection, 224 224 for --backbone-only)')
    parser.add_argument('--dynamic', action='store_true', help='dynamic height and width (the batch always is)')
    parser.add_argument('--backbone-only', action='store_true', help='export the backbone alone')
    parser.add_argument('--threads', type=int, help='CPU threads of PyTorch and onnxruntime (default: their own)')
    parser.add_argument('--time', type=int, default=0, metavar='N',
                        help='time onnxruntime, PyTorch fp32 and bf16 over N interleaved runs')
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


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.cfg_options)
    cfg.model.backbone.init_cfg = None  # the weights come from CHECKPOINT
    model = build_model(cfg)
    load_weights(model, args)
    module, output_names, what = export_target(model, cfg, args.backbone_only)
    module.eval()
    height, width = args.shape or default_shape(cfg, args.backbone_only)
    # An example batch of 2: torch.export would specialize a dimension of size 1 to a constant.
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    fixed = fixed_size_modules(module) if args.dynamic else []
    if fixed:
        print(f'--dynamic: the batch is dynamic, height and width stay {height}x{width}: {", ".join(fixed)} '
              '(adaptive pooling to several cells) export for one input size only; export once per size')
    dynamic_size = args.dynamic and not fixed
    export(module, example, args.out, output_names, dynamic_size)
    size = 'any height and width' if dynamic_size else f'{height}x{width}'
    print(f'Exported {what} to {args.out} (any batch size, {size}); {describe_input(cfg)}')

    import onnxruntime
    options = onnxruntime.SessionOptions()
    if args.threads:
        options.intra_op_num_threads = args.threads
    session = onnxruntime.InferenceSession(args.out, options, providers=['CPUExecutionProvider'])
    # Also another batch size, and another image size where it is dynamic.
    other = (height + 32, width + 64) if dynamic_size else (height, width)
    inputs = [example, torch.randn(1, 3, *other, generator=torch.Generator().manual_seed(1))]
    deviation = max(check_parity(session, module, x, output_names) for x in inputs)
    if deviation > MAX_RELATIVE_DEVIATION:
        raise SystemExit(f'error: {args.out} deviates from PyTorch by {deviation:.2e} relative, above '
                         f'{MAX_RELATIVE_DEVIATION:.0e}: do not deploy it (docs/deployment.md)')
    if args.time:
        image = example[:1]
        bf16 = max(relative_deviation(torch_outputs(module, image, bf16=True), torch_outputs(module, image)))
        print(f'PyTorch bf16 autocast vs fp32: largest relative deviation {bf16:.2e}')
        time_engines(session, module, image, args.time)
    if cfg.default_scope == 'mmdet' and not args.backbone_only:
        print('Not in the file: proposal selection and the RoI heads (mmcv.ops.nms and mmcv.ops.RoIAlign); run '
              'them in PyTorch on these outputs (docs/deployment.md)')
    return deviation


if __name__ == '__main__':
    main()
