"""CPU speed of a whole Mask R-CNN or Cascade Mask R-CNN on one real image in five engines, interleaved: PyTorch
fp32 and bf16, ONNX Runtime fp32, OpenVINO f32 and bf16.

    python benchmarks/benchmark_deployed_detector.py CONFIG CHECKPOINT MODEL.onnx IMAGE [--shape 800 1216]
        [--rounds 5] [--threads N] [--score-thr 0.3] [--profile] [--engine NAME ...]

CONFIG and CHECKPOINT are the trained detector (a demo checkpoint with its demo config, configs/demo/);
MODEL.onnx is the same detector exported whole by ``tools/export_onnx.py CONFIG CHECKPOINT --out MODEL.onnx``.
IMAGE is resized to exactly --shape (height, width; default 800 1216, a COCO image at the paper's test scale
padded to 32) and taken as the original image, so that post-processing (NMS, RoIAlign, mask pasting) sees the
boxes of a real picture: on random pixels a trained detector keeps other numbers of boxes. IMAGE may also be a
folder: its images are then tiled at their own size, row after row, to fill --shape. That is the way to give a
detector trained on small images (the demo's, 128 to 160 pixels) objects at the scale it finds them: one such
image stretched to 1216x800 leaves it next to nothing to post-process. The config's data
preprocessor (mean and std, channel order, padding to its divisor) makes the one input every engine gets:

- ``PyTorch fp32``: the mmdet model's ``predict(rescale=True)``, which is ``test_step`` as tools/benchmark.py
  times it less the data preprocessor (a few ms, the same for every engine and not timed here);
- ``PyTorch bf16``: the same under ``convnext_mm.mixed_precision.autocast_layers`` (tools/benchmark.py --amp:
  the layers in bfloat16, boxes, NMS and masks in float32);
- ``ONNX Runtime fp32``: the file with the CPU execution provider, all graph optimizations;
- ``OpenVINO f32`` and ``OpenVINO bf16``: the file compiled for OpenVINO's CPU plugin with
  ``INFERENCE_PRECISION_HINT`` f32 or bf16, latency mode. bf16 is timed only where the compiled model reports
  bf16 (a CPU with bfloat16 instructions); elsewhere the table says that the CPU does not support it.

Every engine uses --threads CPU threads (default: PyTorch's number). Each runs once untimed (warm-up), then
--rounds rounds each run every engine once in turn, so that a change in the machine's load during the run slows
all engines alike.

Reading the table: ``s/image`` is the median over the rounds of one engine's seconds for the image, from the
normalized input to the detections in original-image pixels with their masks; ``vs fp32`` is that time over
PyTorch fp32's (0.50: twice as fast); ``dets`` the number of detections scoring at least --score-thr (default 0.3);
``matched`` how many of them have a PyTorch fp32 detection of the same label with box IoU >= 0.9 -- equal
counts and full matches show that the engines process the same boxes, so their times compare (bf16 may lose a
match or two to rounding); ``returned`` all the detections, down to the config's score threshold. The last line is
the peak resident memory of the process (all engines loaded at once), not of one engine: ``--engine NAME`` builds
and times only that engine (pytorch-fp32, pytorch-bf16, onnxruntime, openvino-f32, openvino-bf16; repeat it for
several), so that the line, in a fresh process, is the engine's own (with the PyTorch model, which preprocesses
the image). glibc's allocator runs as the config's hooks set it in a test run (``CPUMemoryReuseHook``), for every
engine.

``--profile`` adds where each selected engine spends its time, over one more run of each after the timed rounds:
ONNX Runtime's profiler (time per op type, as % of that run), OpenVINO's per-layer counters (``PERF_COUNT``:
time per layer type as % of all layers' time, with each type's most used kernel, which shows whether bf16 kernels
ran), and for PyTorch tools/benchmark.py's split into model parts (backbone, neck, heads, RoIAlign,
post-processing) on this image; ``tools/benchmark.py CONFIG --checkpoint FILE --profile [--amp]`` gives the
same split on a synthetic image.
"""
import argparse
import collections
import contextlib
import functools
import json
import os
import os.path as osp
import resource
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

sys.path.append(osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools'))
from benchmark import PartTimer, image_batch, load_model  # noqa: E402  tools/benchmark.py
from deploy_infer import INPUT_NAMES, OUTPUT_NAMES, read_metadata  # noqa: E402
from image_inputs import IMAGE_EXTENSIONS, read_image  # noqa: E402
from export_onnx import match_detections  # noqa: E402
from convnext_mm.cpu_fast_path import freed_memory_reuse_as_declared  # noqa: E402
from convnext_mm.mixed_precision import autocast_layers  # noqa: E402
from peak_memory import machine_line  # noqa: E402

DEFAULT_SHAPE = (800, 1216)
ENGINES = ('PyTorch fp32', 'PyTorch bf16', 'ONNX Runtime fp32', 'OpenVINO f32', 'OpenVINO bf16')
# --engine's names for them
ENGINE_OPTIONS = dict(zip(('pytorch-fp32', 'pytorch-bf16', 'onnxruntime', 'openvino-f32', 'openvino-bf16'), ENGINES))
TOP_OPS = 8
MATCH_IOU = 0.9  # bf16 moves boxes by a pixel or two: a looser IoU than the export check's 0.98
# AMD's CPU families (/proc/cpuinfo 'cpu family') by core generation.
AMD_FAMILIES = {23: 'Zen / Zen 2', 25: 'Zen 3 / Zen 4', 26: 'Zen 5'}


def cpu_name():
    """'model name (family F: core generation), bfloat16 instructions' of this machine's CPU, from /proc/cpuinfo."""
    fields = {}
    with open('/proc/cpuinfo') as stream:
        for line in stream:
            key, _, value = line.partition(':')
            fields.setdefault(key.strip(), value.strip())
            if not line.strip() and fields:
                break
    family = fields.get('cpu family', '?')
    generation = AMD_FAMILIES.get(int(family)) if family.isdigit() and 'AMD' in fields.get('vendor_id', '') + \
        fields.get('model name', '') else None
    flags = set(fields.get('flags', '').split())
    bf16 = [flag for flag in ('avx512_bf16', 'amx_bf16') if flag in flags]
    return (f"{fields.get('model name', 'unknown CPU')} (family {family}"
            f"{': ' + generation if generation else ''}, model {fields.get('model', '?')}), "
            f"bfloat16 instructions: {', '.join(bf16) or 'none'}")


def tiled_images(folder, shape):
    """A (height, width, 3) picture of the folder's images (by name) at their own size, row after row, repeated
    until it is full: objects at the scale a detector trained on such images finds them."""
    names = sorted(name for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise SystemExit(f'error: folder {folder} holds no images ({" ".join(IMAGE_EXTENSIONS)}): give an image '
                         'file, or a folder of images to tile')
    images = [read_image(osp.join(folder, name)) for name in names]
    picture = np.zeros((*shape, 3), np.uint8)
    top = left = row_height = index = 0
    while top < shape[0]:
        image = images[index % len(images)][:shape[0] - top, :shape[1] - left]
        picture[top:top + image.shape[0], left:left + image.shape[1]] = image
        index, left, row_height = index + 1, left + image.shape[1], max(row_height, image.shape[0])
        if left >= shape[1]:
            top, left, row_height = top + row_height, 0, 0
    return picture


def preprocessed(model, scope, image_path, shape):
    """The model's data preprocessor's output (``inputs``, ``data_samples``) for the image resized to ``shape``
    (height, width) with OpenCV's bilinear resize (mmcv's), or for a folder's images tiled to that size."""
    image = tiled_images(image_path, shape) if osp.isdir(image_path) else \
        cv2.resize(read_image(image_path), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    batch = image_batch(scope, torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))
    with torch.no_grad():
        return model.data_preprocessor(batch, False)


def preprocessed_input(model, image_path, shape):
    """(ONNX feeds, mmdet inputs, mmdet data samples) of the image (:func:`preprocessed`)."""
    data = preprocessed(model, 'mmdet', image_path, shape)
    feeds = dict(input=data['inputs'].numpy(), img_shape=np.array(shape, np.float32),
                 scale_factor=np.ones(2, np.float32), ori_shape=np.array(shape, np.int64))
    return feeds, data['inputs'], data['data_samples']


def check_file_matches_config(path, cfg):
    """The ONNX file's preprocessing metadata against the config's data preprocessor: a file exported from another
    config would be fed a wrongly normalized image."""
    meta = read_metadata(path)['preprocess']  # a file that is no whole-detector export stops here, with the fix
    preprocessor = cfg.model.data_preprocessor
    ours = dict(mean=list(preprocessor.mean), std=list(preprocessor.std),
                bgr_to_rgb=bool(preprocessor.get('bgr_to_rgb', False)),
                pad_size_divisor=int(preprocessor.get('pad_size_divisor', 1)))
    different = [key for key, value in ours.items() if not np.allclose(np.asarray(meta[key], float), value)]
    if different:
        raise SystemExit(f'error: {path} was exported with another preprocessing than {cfg.filename} '
                         f'({", ".join(f"{k}: {meta[k]} vs {ours[k]}" for k in different)}): export it from this '
                         f'config with python tools/export_onnx.py {cfg.filename} CHECKPOINT --out {path}')


def onnxruntime_session(path, threads, profile_prefix=None):
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def openvino_model(path, precision, threads, profile=False):
    """OpenVINO's CPU plugin's compiled model, or None where the CPU cannot run ``precision``."""
    import openvino
    config = {'INFERENCE_PRECISION_HINT': precision, 'INFERENCE_NUM_THREADS': threads,
              'PERFORMANCE_HINT': 'LATENCY'}
    if profile:
        config['PERF_COUNT'] = True
    compiled = openvino.Core().compile_model(path, 'CPU', config)
    return compiled if compiled.get_property('INFERENCE_PRECISION_HINT') == getattr(openvino.Type, precision) \
        else None


def detections(boxes, scores, labels, score_thr):
    keep = np.asarray(scores) >= score_thr
    return (np.asarray(boxes, np.float64).reshape(-1, 4)[keep], np.asarray(scores)[keep],
            np.asarray(labels)[keep])


def engines(model, onnx_path, feeds, inputs, samples, threads, selected=ENGINES):
    """{name: run() -> (boxes, scores, labels)} of the ``selected`` engines, or {name: reason} for an engine this
    machine cannot run. Only the selected engines are built."""

    def pytorch(amp):
        def run():
            with torch.no_grad(), (autocast_layers(model) if amp else contextlib.nullcontext()):
                found = model.predict(inputs, samples)[0].pred_instances
            return found.bboxes.numpy(), found.scores.numpy(), found.labels.numpy()
        return run

    def onnxruntime_run(session):
        outputs = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), feeds)))
        return outputs['boxes'], outputs['scores'], outputs['labels']

    def openvino_run(compiled):
        result = compiled(feeds)
        return tuple(np.asarray(result[compiled.output(name)]) for name in ('boxes', 'scores', 'labels'))

    return engine_runs(onnx_path, threads, selected, pytorch, onnxruntime_run, openvino_run)


def engine_runs(onnx_path, threads, selected, pytorch, onnxruntime_run, openvino_run):
    """{name: run} of the ``selected`` engines in the order of ``ENGINES``, from ``pytorch(amp)`` and the engines'
    ``onnxruntime_run(session)`` and ``openvino_run(compiled)``; {name: reason} where the CPU cannot run one."""
    runs = {}
    for name in ENGINES:
        if name not in selected:
            continue
        if name.startswith('PyTorch'):
            runs[name] = pytorch(name.endswith('bf16'))
        elif name.startswith('ONNX Runtime'):
            runs[name] = functools.partial(onnxruntime_run, onnxruntime_session(onnx_path, threads))
        else:
            precision = name.split()[-1]
            compiled = openvino_model(onnx_path, precision, threads)
            runs[name] = f'{precision} not supported on this CPU' if compiled is None else \
                functools.partial(openvino_run, compiled)
    return runs


def time_interleaved(runs, rounds):
    """({name: [seconds per round]}, {name: the last run's detections}): one untimed run of each engine, then
    ``rounds`` rounds that run every engine once in turn."""
    outputs = {name: run() for name, run in runs.items()}  # warm-up
    times = collections.defaultdict(list)
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - start)
    return times, outputs


def reference_engine(times):
    """What the table compares with: PyTorch fp32, or with --engine the one engine timed."""
    return 'PyTorch fp32' if 'PyTorch fp32' in times else next(iter(times))


def table(runs, times, outputs, score_thr):
    """The rows of the speed table, and {name: (median seconds, detections, matched)} for the engines that ran."""
    reference_name = reference_engine(times)
    reference_time = statistics.median(times[reference_name])
    reference = detections(*outputs[reference_name], score_thr)
    lines = [f'  {"engine":<20} {"s/image":>8} {"vs fp32":>8} {"dets":>5} {"matched":>8} {"returned":>9}']
    results = {}
    for name, run in runs.items():
        if isinstance(run, str):
            lines.append(f'  {name:<20} {run}')
            continue
        seconds = statistics.median(times[name])
        found = detections(*outputs[name], score_thr)
        matched = len(match_detections(found, reference, min_box_iou=MATCH_IOU))
        results[name] = (seconds, len(found[1]), matched)
        lines.append(f'  {name:<20} {seconds:8.3f} {seconds / reference_time:8.2f} {len(found[1]):5d} '
                     f'{matched:4d}/{len(found[1]):<3d} {len(outputs[name][1]):9d}')
    return lines, results


def share_lines(rows, total, note):
    """'  name  ms  %' lines of the TOP_OPS largest (name, seconds) rows, as shares of ``total`` seconds."""
    rows = sorted(rows, key=lambda row: -row[1])
    lines = [f'    {name:<34} {1000 * seconds:8.1f} ms {100 * seconds / total:5.1f}%{extra}'
             for name, seconds, extra in rows[:TOP_OPS]]
    rest = sum(seconds for _, seconds, _ in rows[TOP_OPS:])
    if rows[TOP_OPS:]:
        lines.append(f'    {f"{len(rows) - TOP_OPS} other types":<34} {1000 * rest:8.1f} ms {100 * rest / total:5.1f}%')
    return [note] + lines


def profile_onnxruntime(onnx_path, feeds, threads):
    """ONNX Runtime's profiler on one run after a warm-up: time per op type as shares of that run."""
    with tempfile.TemporaryDirectory() as folder:
        session = onnxruntime_session(onnx_path, threads, profile_prefix=osp.join(folder, 'onnxruntime'))
        session.run(None, feeds)
        session.run(None, feeds)
        with open(session.end_profiling()) as stream:
            events = json.load(stream)
    run = [e for e in events if e.get('cat') == 'Session' and e.get('name') == 'model_run'][-1]
    per_op = collections.defaultdict(float)
    for event in events:  # the kernels of the last run (not their fences)
        if event.get('cat') == 'Node' and event.get('name', '').endswith('_kernel_time') \
                and run['ts'] <= event['ts'] <= run['ts'] + run['dur']:
            per_op[event['args']['op_name']] += event['dur'] / 1e6
    total = run['dur'] / 1e6
    return share_lines([(op, seconds, '') for op, seconds in per_op.items()], total,
                       f'  ONNX Runtime fp32: one run {total:.3f} s; op types by time, % of the run '
                       f'(kernels {100 * sum(per_op.values()) / total:.0f}% of it)')


def profile_openvino(onnx_path, feeds, precision, threads):
    """OpenVINO's per-layer counters of one run after a warm-up: time per layer type as shares of all layers'."""
    from openvino import ProfilingInfo
    compiled = openvino_model(onnx_path, precision, threads, profile=True)
    if compiled is None:
        return [f'  OpenVINO {precision}: {precision} not supported on this CPU']
    request = compiled.create_infer_request()
    request.infer(feeds)
    start = time.perf_counter()
    request.infer(feeds)
    wall = time.perf_counter() - start
    per_type = collections.defaultdict(float)
    kernels = collections.defaultdict(lambda: collections.defaultdict(float))
    for layer in request.profiling_info:
        if layer.status == ProfilingInfo.Status.EXECUTED:
            seconds = layer.real_time.total_seconds()
            per_type[layer.node_type] += seconds
            kernels[layer.node_type][layer.exec_type] += seconds
    total = sum(per_type.values())
    rows = [(kind, seconds, f'  {max(kernels[kind], key=kernels[kind].get)}') for kind, seconds in per_type.items()]
    return share_lines(rows, total, f'  OpenVINO {precision}: one run {wall:.3f} s, layers {total:.3f} s; layer '
                       'types by time, % of all layers\' time, most used kernel')


def profile_pytorch(model, inputs, samples):
    """tools/benchmark.py's PartTimer over one run of each precision: the parts of the model, on this image."""
    timer = PartTimer(model, 'cpu')
    lines = []
    for name, amp in (('PyTorch fp32', False), ('PyTorch bf16', True)):
        timer.start()
        start = time.perf_counter()
        with torch.no_grad(), (autocast_layers(model) if amp else contextlib.nullcontext()):
            model.predict(inputs, samples)
        seconds = time.perf_counter() - start
        timer.counting = False
        lines += [f'  {name}: one run {seconds:.3f} s; model parts (tools/benchmark.py --profile)']
        lines += ['  ' + line for line in timer.table(seconds, 1)]
    return lines


def add_common_arguments(parser, onnx_help):
    """The arguments both deployment benchmarks take: the model, its file, the image, and how to run."""
    parser.add_argument('config', help='config file the checkpoint was trained with')
    parser.add_argument('checkpoint', help='trained checkpoint')
    parser.add_argument('onnx', metavar='MODEL.onnx', help=onnx_help)
    parser.add_argument('image', help='an image file, resized to --shape; or a folder of images, tiled to --shape')
    parser.add_argument('--rounds', type=int, default=5, help='timed rounds, each running every engine once')
    parser.add_argument('--threads', type=int, help="CPU threads of every engine (default: PyTorch's number)")
    parser.add_argument('--profile', action='store_true', help='also print where each engine spends its time')
    parser.add_argument('--engine', action='append', choices=ENGINE_OPTIONS,
                        help='time only this engine (repeat for several; default: all five), built alone in the '
                        'process, so that the peak memory line is its own (with the PyTorch model, which '
                        'preprocesses the image)')


def check_common_arguments(parser, args):
    for label, path in (('config', args.config), ('checkpoint', args.checkpoint), ('MODEL.onnx', args.onnx)):
        if not osp.isfile(path):
            parser.error(f'{label} {path!r} is not a file')
    if not osp.exists(args.image):
        parser.error(f'image {args.image!r} does not exist: give an image file, or a folder of images to tile')
    if args.rounds < 1 or (args.threads is not None and args.threads < 1):
        parser.error(f'--rounds and --threads must be at least 1, got {args.rounds} and {args.threads}')


def selected_engines(args):
    return [ENGINE_OPTIONS[name] for name in args.engine] if args.engine else ENGINES


def print_profiles_and_memory(args, feeds, threads, model, inputs, samples, note=''):
    """With --profile, where each engine spends its time (the exported file on ``feeds``, the PyTorch model on
    ``inputs``); then the process's peak resident memory."""
    if args.profile:  # the selected engines only, so that the memory line stays theirs
        selected = selected_engines(args)
        print(f'Where the time goes, one run of each engine{note}:')
        if 'ONNX Runtime fp32' in selected:
            print('\n'.join(profile_onnxruntime(args.onnx, feeds, threads)))
        for precision in ('f32', 'bf16'):
            if f'OpenVINO {precision}' in selected:
                print('\n'.join(profile_openvino(args.onnx, feeds, precision, threads)))
        if any(name.startswith('PyTorch') for name in selected):
            print('\n'.join(profile_pytorch(model, inputs, samples)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f'Peak resident memory of this process (model, file and the engines run): {peak:.2f} GiB')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='CPU speed of a whole detector in PyTorch, ONNX Runtime and '
                                     'OpenVINO, interleaved on one image')
    add_common_arguments(parser, 'the whole detector tools/export_onnx.py wrote from them')
    parser.add_argument('--shape', type=int, nargs=2, default=DEFAULT_SHAPE, metavar=('H', 'W'),
                        help='height and width the image is resized to (default: 800 1216)')
    parser.add_argument('--score-thr', type=float, default=0.3, help='count detections scoring at least this')
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if min(args.shape) < 32:
        parser.error(f'--shape {args.shape[0]} {args.shape[1]}: ConvNeXt needs at least 32x32 (its total stride)')
    return args


def main(argv=None):
    """Prints the report; returns {name: (median s/image, detections, matched)} of the engines that ran."""
    args = parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    cfg, model = load_model(args.config, args.checkpoint)
    if cfg.default_scope != 'mmdet' or not hasattr(model, 'roi_head'):
        raise SystemExit(f'error: {args.config} is not a Mask R-CNN or Cascade Mask R-CNN config; this benchmark '
                         'times the whole detectors that tools/export_onnx.py exports')
    check_file_matches_config(args.onnx, cfg)
    # for the whole process: every engine
    with freed_memory_reuse_as_declared(cfg) as allocator:
        shape = tuple(args.shape)
        feeds, inputs, samples = preprocessed_input(model, args.image, shape)
        assert tuple(feeds) == INPUT_NAMES
        runs = engines(model, args.onnx, feeds, inputs, samples, threads, selected_engines(args))
        times, outputs = time_interleaved({name: run for name, run in runs.items() if not isinstance(run, str)},
                                          args.rounds)
        import onnxruntime
        import openvino
        how = 'tiled' if osp.isdir(args.image) else 'resized'
        print(f'{osp.basename(args.config)} on {osp.basename(osp.normpath(args.image))} {how} to {shape[1]}x{shape[0]} '
              f'(input '
              f'{feeds["input"].shape[3]}x{feeds["input"].shape[2]}), {threads} threads each, median of '
              f'{args.rounds} interleaved rounds after one warm-up')
        print(f'CPU: {cpu_name()}; {allocator}')
        print(f'{machine_line(torch.device("cpu"))}; onnxruntime {onnxruntime.__version__}, openvino '
              f'{openvino.__version__}')
        lines, results = table(runs, times, outputs, args.score_thr)
        reference = reference_engine(times)
        print(f'  (vs fp32: time over {reference}\'s; dets: detections scoring >= {args.score_thr}; matched: of them, '
              f'with a {reference} detection of the same label, box IoU >= {MATCH_IOU}; returned: all detections, '
              'above the config\'s score threshold)')
        print('\n'.join(lines))
        print_profiles_and_memory(args, feeds, threads, model, inputs, samples)
        return results


if __name__ == '__main__':
    main()
