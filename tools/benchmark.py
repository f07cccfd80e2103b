"""Inference speed of a whole ConvNeXt detector or segmentor, in images per second, after a warm-up.

    python tools/benchmark.py CONFIG [--checkpoint FILE] [--amp] [--profile] [--shape HEIGHT WIDTH]
        [--warmup 5] [--iters 20] [--device cpu|cuda] [--cfg-options KEY=VALUE ...]

Each timed iteration is the model's ``test_step`` on one image, as in ``tools/test.py``: normalization and
padding, the network, and post-processing (detection: NMS and mask pasting; segmentation: the config's sliding
window), with glibc's allocator as the config's hooks set it in a test run (``CPUMemoryReuseHook``). The image
is synthetic, of --shape (default: the FLOPs sizes of tools/get_flops.py, 1280x800 for detection, the config's
test resize for segmentation); data loading is not timed. Without --checkpoint the weights are random, and a
detector then sends another number of boxes to post-processing than a trained one: give the trained checkpoint to
time what users will see (with the config it was trained with: a demo checkpoint with its demo config,
configs/demo/). ``--amp`` times mixed-precision inference as ``tools/test.py --amp`` runs
it (bfloat16 on the CPU, float16 on CUDA; convnext_mm/mixed_precision.py).
``--profile`` adds where the time goes: the time per image in each part of the model (the forward of the
backbone, neck and heads, RoIAlign, each head's post-processing), over the timed iterations.
"""
import argparse
import collections
import contextlib
import time

import torch
from mmengine.config import DictAction
from mmengine.runner import load_state_dict

from config_utils import build_model, load_config, paper_input_size
from convnext_mm.checkpoint import read_checkpoint
from convnext_mm.cpu_fast_path import freed_memory_reuse_as_declared
from convnext_mm.mixed_precision import UnsupportedModelError, autocast_layers

# The parts of mmdet's and mmseg's models that --profile times: modules (their forward) by attribute name; a
# cascade's stages are summed per name.
PROFILED_MODULES = ('data_preprocessor', 'backbone', 'neck', 'rpn_head', 'bbox_roi_extractor', 'bbox_head',
                    'mask_roi_extractor', 'mask_head', 'decode_head')


def synthetic_batch(scope, image_size):
    """One random uint8 image of ``image_size`` (height, width) with the metadata a test pipeline would give."""
    return image_batch(scope, torch.randint(0, 256, (3, *image_size), dtype=torch.uint8))


def image_batch(scope, image):
    """A ``test_step`` batch of one uint8 (3, height, width) image, taken as the test pipeline's output at its
    original size (scale factor 1)."""
    image_size = tuple(image.shape[1:])
    metainfo = dict(img_shape=image_size, ori_shape=image_size, scale_factor=(1.0, 1.0))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        sample = DetDataSample(metainfo=metainfo)
    else:
        from mmseg.structures import SegDataSample
        sample = SegDataSample(metainfo=metainfo)
    return dict(inputs=[image], data_samples=[sample])


def synchronizer(device):
    return torch.cuda.synchronize if device.startswith('cuda') else (lambda: None)


def images_per_second(model, batch, warmup, iters, device, before_timing=None):
    """Run ``warmup`` untimed then ``iters`` timed test steps of one image each; images per second, and the
    number of detections of the last step (None for a segmentor). ``before_timing()`` runs after the warm-up."""
    synchronize = synchronizer(device)
    with torch.no_grad():
        for _ in range(warmup):
            model.test_step(batch)
        if before_timing is not None:
            before_timing()
        synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            outputs = model.test_step(batch)
        synchronize()
    seconds = time.perf_counter() - start
    detections = len(outputs[0].pred_instances) if 'pred_instances' in outputs[0] else None
    return iters / seconds, detections


class PartTimer:
    """Seconds spent in each part of a model (``PROFILED_MODULES``' forward, each head's ``predict_by_feat``),
    accumulated per part name while ``counting``. The parts do not nest, so what they leave is the rest of the
    step: RoI bookkeeping, the cascade's box refinement, sliding-window sums, result packing."""

    def __init__(self, model, device):
        self.seconds = collections.defaultdict(float)
        self.counting = False
        self._synchronize = synchronizer(device)
        for name, module in model.named_modules():
            key = name.split('.')[-2] if name.split('.')[-1].isdigit() else name.split('.')[-1]
            if key not in PROFILED_MODULES or isinstance(module, torch.nn.ModuleList):
                continue
            self._time(module, 'forward', key)
            if hasattr(module, 'predict_by_feat'):
                self._time(module, 'predict_by_feat', f'{key} post-processing')

    def _time(self, owner, method_name, part):
        method = getattr(owner, method_name)

        def timed(*args, **kwargs):
            if not self.counting:
                return method(*args, **kwargs)
            self._synchronize()
            start = time.perf_counter()
            outputs = method(*args, **kwargs)
            self._synchronize()
            self.seconds[part] += time.perf_counter() - start
            return outputs

        setattr(owner, method_name, timed)

    def start(self):
        self.seconds.clear()
        self.counting = True

    def table(self, seconds_per_image, iters):
        """Lines of 'part, ms per image, share of the step', in the order the parts first ran."""
        rows = [(part, seconds / iters) for part, seconds in self.seconds.items()]
        rows.append(('rest of the step', seconds_per_image - sum(seconds for _, seconds in rows)))
        return [f'  {part:<32} {1000 * seconds:8.0f} ms  {100 * seconds / seconds_per_image:5.1f}%'
                for part, seconds in rows]


def load_model(config, checkpoint=None, cfg_options=None, device='cpu'):
    """(config, model) of a config file, with the weights of ``checkpoint`` (else random), on ``device``."""
    cfg = load_config(config, cfg_options)
    model = build_model(cfg)
    if checkpoint:
        state = read_checkpoint(checkpoint)
        load_state_dict(model, state.get('state_dict', state), strict=True)
    return cfg, model.to(device)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Inference images/s of a whole detector or segmentor')
    parser.add_argument('config', help='config file')
    parser.add_argument('--checkpoint', help='trained weights (default: random weights)')
    parser.add_argument('--amp', action='store_true',
                        help='mixed-precision inference as tools/test.py --amp: bfloat16 on the CPU, float16 on CUDA')
    parser.add_argument('--profile', action='store_true', help='also print the time per image of each model part')
    parser.add_argument(
        '--shape', type=int, nargs=2, metavar=('HEIGHT', 'WIDTH'),
        help='image size (default: 800 1280 for detection, the test resize for segmentation)')
    parser.add_argument('--warmup', type=int, default=5, help='untimed iterations first')
    parser.add_argument('--iters', type=int, default=20, help='timed iterations')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override settings of the config')
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        parser.error(f'--iters must be at least 1 and --warmup at least 0, got {args.iters} and {args.warmup}')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: this machine has no CUDA GPU; use --device cpu')
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg, model = load_model(args.config, args.checkpoint, args.cfg_options, args.device)
    timer = PartTimer(model, args.device) if args.profile else None
    image_size = tuple(args.shape) if args.shape else paper_input_size(cfg)
    batch = synthetic_batch(cfg.default_scope, image_size)
    try:
        with freed_memory_reuse_as_declared(cfg, args.device) as allocator, \
                autocast_layers(model) if args.amp else contextlib.nullcontext():
            speed, detections = images_per_second(model, batch, args.warmup, args.iters, args.device,
                                                  before_timing=timer and timer.start)
    except UnsupportedModelError as error:
        raise SystemExit(f'error: {error}')
    precision = ('float16' if args.device.startswith('cuda') else 'bfloat16') + ' autocast' if args.amp else 'float32'
    found = '' if detections is None else f', {detections} detections'
    print(f'{args.config}: {speed:.2f} images/s ({1000 / speed:.0f} ms per image) on {args.device}, {precision}, '
          f'{image_size[1]}x{image_size[0]} input{found}, {args.iters} timed after {args.warmup} warm-up '
          f'iterations, {torch.get_num_threads()} CPU threads, {allocator}')
    if timer:
        print('\n'.join(timer.table(1 / speed, args.iters)))


if __name__ == '__main__':
    main()
