"""Inference speed of a whole ConvNeXt detector or segmentor, in images per second, after a warm-up.

    python tools/benchmark.py CONFIG [--checkpoint FILE] [--shape HEIGHT WIDTH] [--warmup 5] [--iters 20]
        [--device cpu|cuda] [--cfg-options KEY=VALUE ...]

Each timed iteration is the model's ``test_step`` on one image, as in ``tools/test.py``: normalization and
padding, the network, and post-processing (detection: NMS and mask pasting; segmentation: the config's sliding
window). The image is synthetic, of --shape (default: the FLOPs sizes of tools/get_flops.py, 1280x800 for
detection, the config's test resize for segmentation); data loading is not timed. Without --checkpoint the
weights are random, and a detector then sends another number of boxes to post-processing than a trained one:
give the trained checkpoint to time what users will see.
"""
import argparse
import time

import torch
from mmengine.config import DictAction
from mmengine.runner import load_state_dict

from convnext_mm.checkpoint import read_checkpoint
from convnext_mm.runtime import build_model, load_config, paper_input_size


def synthetic_batch(scope, image_size):
    """One random uint8 image of ``image_size`` (height, width) with the metadata a test pipeline would give."""
    image = torch.randint(0, 256, (3, *image_size), dtype=torch.uint8)
    metainfo = dict(img_shape=image_size, ori_shape=image_size, scale_factor=(1.0, 1.0))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        sample = DetDataSample(metainfo=metainfo)
    else:
        from mmseg.structures import SegDataSample
        sample = SegDataSample(metainfo=metainfo)
    return dict(inputs=[image], data_samples=[sample])


def images_per_second(model, batch, warmup, iters, device):
    """Run ``warmup`` untimed then ``iters`` timed test steps of one image each; images per second."""

    def synchronize():
        if device.startswith('cuda'):
            torch.cuda.synchronize()

    with torch.no_grad():
        for _ in range(warmup):
            model.test_step(batch)
        synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            model.test_step(batch)
        synchronize()
    return iters / (time.perf_counter() - start)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Inference images/s of a whole detector or segmentor')
    parser.add_argument('config', help='config file')
    parser.add_argument('--checkpoint', help='trained weights (default: random weights)')
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
    cfg = load_config(args.config, args.cfg_options)
    model = build_model(cfg)
    if args.checkpoint:
        checkpoint = read_checkpoint(args.checkpoint)
        load_state_dict(model, checkpoint.get('state_dict', checkpoint), strict=True)
    model.to(args.device)
    image_size = tuple(args.shape) if args.shape else paper_input_size(cfg)
    batch = synthetic_batch(cfg.default_scope, image_size)
    speed = images_per_second(model, batch, args.warmup, args.iters, args.device)
    print(f'{args.config}: {speed:.2f} images/s ({1000 / speed:.0f} ms per image) on {args.device}, '
          f'{image_size[1]}x{image_size[0]} input, {args.iters} timed after {args.warmup} warm-up iterations, '
          f'{torch.get_num_threads()} CPU threads')


if __name__ == '__main__':
    main()
