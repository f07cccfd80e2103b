"""Peak memory of one training step of a whole detector, with the backbone's gradient checkpointing (``with_cp``)
off and on.

    python benchmarks/benchmark_detector_memory.py CONFIG [--size 800x1333] [--amp float16|bfloat16] [--threads N]

Each step runs in a fresh process (a clean peak) on a synthetic image with three boxes and their masks, the
config's model at random weights. On a GPU: the config's whole training step, ``model.train_step`` through the
config's optimizer wrapper (its layer-decay constructor; ``--amp`` makes it mmengine's AmpOptimWrapper of that
dtype, else plain fp32), after one warm-up step; the peak is ``torch.cuda.max_memory_allocated`` over what was
allocated before, the time the median of three steps. On the CPU: the first forward and backward, no optimizer;
the peak is the growth of the process's peak resident set (the resident set does not shrink back between steps).
"""
import argparse
import math
import os
import statistics
import sys
import time

import torch

from peak_memory import in_fresh_process, machine_line, peak_rss_growth_of

# tools/config_utils.py: a config read and its model built as the tools do it.
sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
from config_utils import build_model, load_config  # noqa: E402

# Three boxes (x1, y1, x2, y2) as fractions of the image's width and height: at 800x1333, (100, 120, 500, 600),
# (600, 50, 1000, 400) and (300, 400, 1200, 780).
BOX_FRACTIONS = [[0.075, 0.15, 0.375, 0.75], [0.45, 0.0625, 0.75, 0.5], [0.225, 0.5, 0.9, 0.975]]


def synthetic_detection_batch(size):
    """One random image of ``size`` (height, width) with three boxes and their masks, at the same places of the
    image whatever its size."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    height, width = size
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    boxes = (torch.tensor(BOX_FRACTIONS) * torch.tensor([width, height, width, height])).round()
    masks = torch.zeros(len(boxes), height, width, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
        mask[y1:y2, x1:x2] = 1
    sample = DetDataSample(metainfo=dict(img_shape=size, ori_shape=size, pad_shape=size, scale_factor=(1., 1.)))
    sample.gt_instances = InstanceData(
        bboxes=boxes, labels=torch.tensor([0, 1, 2]), masks=BitmapMasks(masks.numpy(), height, width))
    return dict(inputs=[image], data_samples=[sample])


def detector_training_step(config, with_cp, size, device, amp=None):
    """(peak memory in bytes, seconds, losses or None) of one training step of the config's model on a synthetic
    image (see the module doc)."""
    from mmengine.optim import build_optim_wrapper

    cfg = load_config(config, {'model.backbone.with_cp': with_cp})
    model = build_model(cfg).to(device).train()
    data = synthetic_detection_batch(size)
    if device == 'cpu':
        batch = model.data_preprocessor(data, training=True)

        def backward():
            loss, _ = model.parse_losses(model(**batch, mode='loss'))
            loss.backward()
            return loss

        start = time.perf_counter()
        peak = peak_rss_growth_of(backward)
        return peak, time.perf_counter() - start, None
    optim_cfg = cfg.optim_wrapper.copy()
    if amp is None:
        optim_cfg['type'] = 'OptimWrapper'
        optim_cfg.pop('loss_scale', None)
        optim_cfg.pop('dtype', None)
    else:
        optim_cfg.update(type='AmpOptimWrapper', dtype=amp)
    optim_wrapper = build_optim_wrapper(model, optim_cfg)
    model.train_step(data, optim_wrapper)  # warm-up: cuDNN autotuning, the optimizer's state
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        log_vars = model.train_step(data, optim_wrapper)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    losses = {name: float(value) for name, value in log_vars.items()}
    return torch.cuda.max_memory_allocated(device) - base, statistics.median(seconds), losses


def run(args):
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    print(f'Before: {machine_line(torch.device(device))}', flush=True)
    results = {}
    for with_cp in (False, True):
        # In a fresh process: a clean peak.
        results[with_cp] = in_fresh_process(detector_training_step, args.config, with_cp, args.size, device, args.amp)
        print(f'  with_cp={with_cp}: done', flush=True)
    size = f'1x3x{args.size[0]}x{args.size[1]}'
    precision = f'AMP {args.amp}' if args.amp else 'fp32'
    print(f'{args.config}, one training step at {size} on {device} ({precision}), peak memory of the step:')
    print('| with_cp | peak memory (MiB) | step time (s) | losses |')
    print('|---|---|---|---|')
    for with_cp, (peak, seconds, losses) in results.items():
        if losses is not None and not all(math.isfinite(value) for value in losses.values()):
            raise SystemExit(f'error: a loss is not finite with_cp={with_cp}: {losses}')
        shown = ', '.join(f'{name} {value:.3g}' for name, value in losses.items()) if losses else '-'
        print(f'| {with_cp} | {peak / 2**20:.0f} | {seconds:.2f} | {shown} |')
    saved = 1 - results[True][0] / results[False][0]
    print(f'with_cp saves {saved:.0%} of the peak.')


def parse_size(text):
    try:
        height, width = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not HEIGHTxWIDTH, e.g. 800x1333') from None
    return (height, width)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='a detector config, e.g. configs/cascade/convnext_t_3x.py')
    parser.add_argument('--size', type=parse_size, default=(800, 1333), metavar='HxW', help='image size')
    parser.add_argument('--amp', choices=['float16', 'bfloat16'],
                        help="on a GPU: train through mmengine's AmpOptimWrapper in this dtype")
    parser.add_argument('--threads', type=int, help="CPU threads (default: torch's, one per core)")
    args = parser.parse_args(argv)
    if args.amp and not torch.cuda.is_available():
        parser.error("--amp: mmengine's AmpOptimWrapper needs a CUDA GPU; on the CPU the step is fp32")
    if args.threads is not None and args.threads < 1:
        parser.error(f'--threads must be at least 1, got {args.threads}')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args)


if __name__ == '__main__':
    main()
