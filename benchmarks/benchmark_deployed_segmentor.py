"""CPU speed of a whole UperNet segmentor with its test-time sliding window, in five engines, interleaved: PyTorch
fp32 and bf16, ONNX Runtime fp32, OpenVINO f32 and bf16.

    python benchmarks/benchmark_deployed_segmentor.py CONFIG CHECKPOINT MODEL.onnx IMAGE [--shape 512 2048]
        [--crop 512 512] [--stride 341 341] [--rounds 5] [--threads N] [--profile] [--engine NAME ...]

CONFIG and CHECKPOINT are the trained segmentor (a demo checkpoint with its demo config, configs/demo/);
MODEL.onnx is its logits for one window, ``tools/export_onnx.py CONFIG CHECKPOINT --out MODEL.onnx --shape 512
512`` (the window size, --crop). The segmentor tests as the paper's UperNet configs do, whatever CONFIG says:
``test_cfg.mode='slide'`` with --crop and --stride (default 512x512 windows at a stride of 341: 6 windows over
2048x512). IMAGE is resized (or a folder's images tiled, as in benchmark_deployed_detector.py) to --shape and put
through the config's data preprocessor, which gives every engine the same normalized input:

- ``PyTorch fp32``: mmseg's ``predict``, the sliding window and the label map, which is ``test_step`` as
  tools/benchmark.py times it less the data preprocessor;
- ``PyTorch bf16``: the same under ``convnext_mm.mixed_precision.autocast_layers`` (tools/benchmark.py --amp);
- ``ONNX Runtime fp32``, ``OpenVINO f32`` and ``OpenVINO bf16``: the file, once per window, in mmseg's
  sliding-window loop written in numpy (the windows' logits summed and divided by the count of windows over each
  pixel), then the argmax.

Reading the table: ``s/image`` is the median over the rounds; ``vs fp32`` that time over PyTorch fp32's;
``agree`` the share of pixels whose label equals PyTorch fp32's. Timing, threads, the allocator, the peak memory
line, ``--engine`` and ``--profile`` are as in benchmark_deployed_detector.py; the engines' profiles are of one
window, PyTorch's of the whole image.
"""
import argparse
import contextlib
import os.path as osp
import statistics
import sys

import numpy as np
import torch

sys.path.append(osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools'))
from benchmark import load_model  # noqa: E402  tools/benchmark.py
from benchmark_deployed_detector import (  # noqa: E402
    ENGINES, add_common_arguments, check_common_arguments, cpu_name, engine_runs, print_profiles_and_memory,
    preprocessed, reference_engine, selected_engines, time_interleaved)
from convnext_mm.cpu_fast_path import freed_memory_reuse_as_declared  # noqa: E402
from convnext_mm.mixed_precision import autocast_layers  # noqa: E402
from peak_memory import machine_line  # noqa: E402


def slide_windows(height, width, crop, stride):
    """mmseg's ``EncoderDecoder.slide_inference`` windows, (top, left, bottom, right) each: a grid at ``stride``,
    the last row and column moved back inside the image."""
    rows = max(height - crop[0] + stride[0] - 1, 0) // stride[0] + 1
    columns = max(width - crop[1] + stride[1] - 1, 0) // stride[1] + 1
    windows = []
    for row in range(rows):
        for column in range(columns):
            bottom, right = min(row * stride[0] + crop[0], height), min(column * stride[1] + crop[1], width)
            windows.append((max(bottom - crop[0], 0), max(right - crop[1], 0), bottom, right))
    return windows


def slide_labels(run_window, image, crop, stride):
    """The label map of the (1, 3, H, W) float32 ``image`` from ``run_window(window) -> logits``: mmseg's sliding
    window (sum of the windows' logits over the count of windows at each pixel), then the argmax."""
    height, width = image.shape[2:]
    logits = count = None
    for top, left, bottom, right in slide_windows(height, width, crop, stride):
        window_logits = run_window(np.ascontiguousarray(image[:, :, top:bottom, left:right]))
        if logits is None:
            logits = np.zeros((window_logits.shape[1], height, width), np.float32)
            count = np.zeros((height, width), np.float32)
        logits[:, top:bottom, left:right] += window_logits[0]
        count[top:bottom, left:right] += 1
    return (logits / count).argmax(0)


def check_file_takes_windows(path, crop):
    """The file must take the window size: a file exported at the demo's 128x128 crop cannot run 512x512 windows."""
    import onnx
    dims = [dim.dim_value or dim.dim_param for dim in
            onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim][2:]
    if all(isinstance(dim, int) for dim in dims) and tuple(dims) != tuple(crop):
        raise SystemExit(f'error: {path} takes {dims[0]}x{dims[1]} inputs, not the {crop[0]}x{crop[1]} windows: '
                         f'export it with tools/export_onnx.py CONFIG CHECKPOINT --out {path} --shape {crop[0]} '
                         f'{crop[1]}, or give --crop {dims[0]} {dims[1]}')


def engines(model, onnx_path, inputs, samples, crop, stride, threads, selected=ENGINES):
    """{name: run() -> label map (H, W)} of the ``selected`` engines, or {name: reason} for an engine this machine
    cannot run."""

    def pytorch(amp):
        def run():
            with torch.no_grad(), (autocast_layers(model) if amp else contextlib.nullcontext()):
                return model.predict(inputs, samples)[0].pred_sem_seg.data[0].numpy()
        return run

    image = inputs.numpy()

    def onnxruntime_run(session):
        return slide_labels(lambda x: session.run(None, {'input': x})[0], image, crop, stride)

    def openvino_run(compiled):
        return slide_labels(lambda x: np.asarray(compiled({'input': x})[compiled.output(0)]), image, crop, stride)

    return engine_runs(onnx_path, threads, selected, pytorch, onnxruntime_run, openvino_run)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='CPU speed of a whole UperNet with its sliding window in PyTorch, '
                                     'ONNX Runtime and OpenVINO, interleaved on one image')
    add_common_arguments(parser, 'the segmentor tools/export_onnx.py wrote from them, at the window size')
    parser.add_argument('--shape', type=int, nargs=2, default=(512, 2048), metavar=('H', 'W'),
                        help="height and width of the image (default: 512 2048, ADE20K's test scale)")
    parser.add_argument('--crop', type=int, nargs=2, default=(512, 512), metavar=('H', 'W'),
                        help="the sliding window's size (default: the paper's 512 512)")
    parser.add_argument('--stride', type=int, nargs=2, default=(341, 341), metavar=('H', 'W'),
                        help="the sliding window's stride (default: the paper's 341 341)")
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if min(args.crop) < 32 or min(args.stride) < 1 or any(c > s for c, s in zip(args.crop, args.shape)):
        parser.error(f'--crop {args.crop[0]} {args.crop[1]} must be at least 32 and fit in --shape, --stride at '
                     'least 1')
    return args


def main(argv=None):
    """Prints the report; returns {name: (median s/image, share of pixels labelled as by PyTorch fp32)}."""
    args = parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    slide = dict(mode='slide', crop_size=tuple(args.crop), stride=tuple(args.stride))
    cfg, model = load_model(args.config, args.checkpoint, {'model.test_cfg': slide})
    if cfg.default_scope != 'mmseg':
        raise SystemExit(f'error: {args.config} is not a segmentation config; for a detector use '
                         'benchmarks/benchmark_deployed_detector.py')
    model.eval()
    check_file_takes_windows(args.onnx, tuple(args.crop))
    # for the whole process: every engine
    with freed_memory_reuse_as_declared(cfg) as allocator:
        data = preprocessed(model, 'mmseg', args.image, tuple(args.shape))
        inputs, samples = data['inputs'], data['data_samples']
        runs = engines(model, args.onnx, inputs, samples, tuple(args.crop), tuple(args.stride), threads,
                       selected_engines(args))
        times, outputs = time_interleaved({name: run for name, run in runs.items() if not isinstance(run, str)},
                                          args.rounds)
        import onnxruntime
        import openvino
        how = 'tiled' if osp.isdir(args.image) else 'resized'
        windows = len(slide_windows(*inputs.shape[2:], args.crop, args.stride))
        print(f'{osp.basename(args.config)} on {osp.basename(osp.normpath(args.image))} {how} to {args.shape[1]}x'
              f'{args.shape[0]}, {windows} windows of {args.crop[1]}x{args.crop[0]} at stride {args.stride[1]}x'
              f'{args.stride[0]}, {threads} threads each, median of {args.rounds} interleaved rounds after one warm-up')
        print(f'CPU: {cpu_name()}; {allocator}')
        print(f'{machine_line(torch.device("cpu"))}; onnxruntime {onnxruntime.__version__}, openvino '
              f'{openvino.__version__}')
        reference_name = reference_engine(times)
        reference_time, reference = statistics.median(times[reference_name]), outputs[reference_name]
        print(f'  (vs fp32: time over {reference_name}\'s; agree: pixels labelled as by {reference_name})')
        print(f'  {"engine":<20} {"s/image":>8} {"vs fp32":>8} {"agree":>8}')
        results = {}
        for name, run in runs.items():
            if isinstance(run, str):
                print(f'  {name:<20} {run}')
                continue
            seconds, agree = statistics.median(times[name]), float((outputs[name] == reference).mean())
            results[name] = (seconds, agree)
            print(f'  {name:<20} {seconds:8.3f} {seconds / reference_time:8.2f} {100 * agree:7.2f}%')
        window = {'input': np.ascontiguousarray(inputs.numpy()[:, :, :args.crop[0], :args.crop[1]])}
        print_profiles_and_memory(args, window, threads, model, inputs, samples,
                                  ' (ONNX Runtime and OpenVINO: one window)')
        return results


if __name__ == '__main__':
    main()
