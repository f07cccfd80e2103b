"""Speed, peak memory and numerics of our ConvNeXt backbone against the paper's formulation, in one run.

    python benchmarks/benchmark_backbone.py [--quick] [--archs tiny base] [--sizes 8x224x224 1x800x1216]
        [--reps 5] [--threads N] [--compile] [--no-memory] [--timm] [--no-onnxruntime] [--no-bf16]
        [--precisions fp32 bf16 ...]

The reference is the paper's formulation, tests/reference.py (a transcription of the official code: NCHW maps,
a permute to NHWC and back around every block's norm and Linears, the channels-first LayerNorm written out), the
same one the tests hold ours against. It has the official parameter names, which are ours, so it holds the same
weights. For each arch, input size and step (``infer``: no_grad forward in eval mode; ``train``: forward and
backward of a loss over all four outputs in train mode) the models run alternately, the order flipping every
repetition, and the table gives median images/s of each, their ratio, peak memory, and the largest difference
of the outputs (and, for a training step, of the parameter gradients), relative to the largest magnitude of
that tensor.

On the CPU, a training step is also timed with our backbone's products in MKL (``ours mkl``: nn.Linear, what
training ran before the oneDNN training path; convnext_mm/cpu_fast_path.py), in the same interleaving.

Peak memory: on a GPU, ``torch.cuda.max_memory_allocated`` during one step, over what was allocated before it
(the allocator's peak is reset first); on the CPU, the growth of the process's peak resident set (VmHWM) over one
step, measured in a fresh process (PyTorch keeps no CPU allocator statistics).

``--timm`` (where timm is installed, e.g. a GPU machine) adds timm's ConvNeXt of the same arch as a model column,
built as detection uses it (``features_only=True``, the four stage maps, without our output norms), with its own
random weights: a speed and memory comparison only, so its output-difference column stays empty. With
``--compile`` it is also timed under ``torch.compile``.

On the CPU, inference is also timed, in the same interleaving, for two more engines (rows of the table, their
``vs paper`` against the paper's formulation in float32): ``ours bf16``, our backbone under
``torch.autocast('cpu', dtype=torch.bfloat16)``, its output difference being its deviation from float32; and
``onnxruntime``, the paper's formulation exported with ``torch.onnx.export(dynamo=True)`` for the input's shape and
run by ONNX Runtime's CPU provider with all graph optimizations and torch's number of threads (``--no-bf16``,
``--no-onnxruntime`` leave them out).

A whole detector's training-step memory: benchmarks/benchmark_detector_memory.py.
"""
import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn as nn

from convnext_mm import cpu_fast_path
from convnext_mm.backbone import ARCH_SETTINGS, ConvNeXt, ConvNeXtBlock
from peak_memory import in_fresh_process, machine_line, peak_rss_growth_of

# tests/reference.py, the paper's formulation (tests/ is a folder of modules, not a package).
sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests'))
import reference  # noqa: E402


# ---------------------------------------------------------------- the models and one step of each
def build_models(arch, device, compile_ours=False, seed=0, with_timm=False):
    """Ours (and, with ``compile_ours``, ours with ``compile=True``) and the paper's, all with the same weights;
    with ``with_timm``, timm's model of the arch (compiled too with ``compile_ours``).

    Weights: PyTorch's default init, then layer scales in [0.1, 1] and norm affines near (1, 0), as in trained
    models: the default layer scale of 1e-6 would hide every block's branch from the comparison.
    """
    torch.manual_seed(seed)
    ours = ConvNeXt(arch=arch, out_indices=(0, 1, 2, 3))
    with torch.no_grad():
        for module in ours.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.0, 0.1)
            if isinstance(module, ConvNeXtBlock):
                module.gamma.uniform_(0.1, 1.0)
    models = {'ours': ours, 'paper': reference.like(ours)}
    if compile_ours:
        models['ours+compile'] = ConvNeXt(arch=arch, out_indices=(0, 1, 2, 3), compile=True)
        models['ours+compile'].load_state_dict(ours.state_dict())
    if with_timm:
        import timm
        models['timm'] = timm.create_model(f'convnext_{arch}', features_only=True, out_indices=(0, 1, 2, 3))
        if compile_ours:
            models['timm+compile'] = torch.compile(
                timm.create_model(f'convnext_{arch}', features_only=True, out_indices=(0, 1, 2, 3)), dynamic=False)
    return {name: model.to(device) for name, model in models.items()}


def run_step(model, x, step, amp_dtype):
    """One inference or training step; returns the outputs (and, for training, the parameter gradients)."""
    autocast = torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    if step == 'infer':
        model.eval()
        with torch.no_grad(), autocast:
            return model(x), None
    model.train()
    model.zero_grad(set_to_none=True)
    with autocast:
        outs = model(x)
        loss = sum(out.float().pow(2).mean() for out in outs)
    loss.backward()
    return outs, [p.grad for p in model.parameters()]


def training_in_library(library, model, x):
    """A training step of ``model`` (ours) with the CPU training path's products in ``library``."""
    with cpu_fast_path.use_training_library(library):
        return run_step(model, x, 'train', None)


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def largest_relative_difference(tensors, references):
    """max over pairs of max|a - b| / max|b|."""
    return max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()
               for a, b in zip(tensors, references))


# ---------------------------------------------------------------- peak memory of one step
def cuda_peak_of_step(model, x, step, amp_dtype):
    """Bytes the CUDA allocator held at its peak during one step, over what it held before: the allocator keeps
    its own statistics, so this needs no fresh process. Run after a warm-up step (cuDNN workspaces and
    autotuning are not the model's)."""
    model.zero_grad(set_to_none=True)
    synchronize(x.device)
    base = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    run_step(model, x, step, amp_dtype)
    synchronize(x.device)
    return torch.cuda.max_memory_allocated(x.device) - base


def peak_memory_of_step(model_name, arch, shape, step, device, amp_dtype, onnx_path=None):
    """Bytes of peak-RSS growth of one CPU step of a freshly built model (or of an ONNX Runtime session of
    ``onnx_path``, created before the step), in this process."""
    x = torch.randn(shape, device=device)
    if onnx_path:
        run = onnxruntime_session(onnx_path)
        return peak_rss_growth_of(lambda: run(x))
    model = build_models(arch, device)[model_name]
    return peak_rss_growth_of(lambda: run_step(model, x, step, amp_dtype))


# ---------------------------------------------------------------- the backbone table
def time_interleaved(engines, device, reps):
    """Median seconds per step of each engine (a function running one step), alternating them and flipping the
    order every repetition."""
    times = {name: [] for name in engines}
    names = list(engines)
    for rep in range(reps):
        for name in (names if rep % 2 == 0 else names[::-1]):
            synchronize(device)
            start = time.perf_counter()
            engines[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------- ONNX Runtime on the paper's formulation
def export_to_onnx(model, x, path):
    """``model`` exported with torch's dynamo exporter for ``x``'s shape (as tools/export_onnx.py exports)."""
    import logging
    # torch.onnx warns about torchvision's ops it would map if torchvision were installed: not used here.
    logging.getLogger('torch.onnx._internal.exporter._registration').setLevel(logging.ERROR)
    model.eval()
    torch.onnx.export(model, (x, ), dynamo=True, input_names=['input'], verbose=False).save(path)


def onnxruntime_session(path):
    """ONNX Runtime's CPU session of ``path``: all graph optimizations (its fusions of LayerNorm, GELU and
    Linear, its blocked NCHWc conv layout), torch's number of threads."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    return lambda x: ([torch.from_numpy(out) for out in session.run(None, {'input': x.numpy()})], None)


def cpu_inference_engines(models, x, onnx_dir, with_bf16, with_onnxruntime):
    """The CPU inference rows beyond ours and the paper's: {name: (precision label, function of x)}."""
    engines = {}
    if with_bf16:
        engines['ours bf16'] = ('bf16 autocast', lambda x: run_step(models['ours'], x, 'infer', torch.bfloat16))
    if with_onnxruntime:
        path = os.path.join(onnx_dir, 'paper.onnx')
        export_to_onnx(models['paper'], x, path)
        engines['onnxruntime'] = ('fp32', onnxruntime_session(path))
    return engines


def benchmark_setting(arch, shape, step, device, amp_dtype, channels_last, reps, compile_ours, memory, with_timm,
                      cpu_extras=()):
    """Rows of the table for one arch, input and step: every model (and, in CPU float32 inference, the
    ``cpu_extras`` 'bf16' and 'onnxruntime') timed in one interleaving."""
    models = build_models(arch, device, compile_ours, with_timm=with_timm)
    x = torch.randn(shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # name -> (precision label or None for the setting's, function of x running one step)
    engines = {name: (None, lambda x, model=model: run_step(model, x, step, amp_dtype))
               for name, model in models.items()}
    onnx_dir = tempfile.TemporaryDirectory(prefix='benchmark_backbone_')
    if device.type == 'cpu' and step == 'train' and amp_dtype is None:
        engines['ours mkl'] = (None, lambda x: training_in_library('mkl', models['ours'], x))
    if device.type == 'cpu' and step == 'infer' and amp_dtype is None and cpu_extras:
        engines.update(cpu_inference_engines(models, x, onnx_dir.name, 'bf16' in cpu_extras,
                                             'onnxruntime' in cpu_extras))
    results = {}
    start = time.perf_counter()
    for name, (_, run) in engines.items():  # warm-up, and the outputs to compare
        first = time.perf_counter()
        results[name] = run(x)
        if name.endswith('+compile'):
            print(f'  ({name}: first {step} step, with compilation, took {time.perf_counter() - first:.0f} s)',
                  flush=True)
    seconds = time_interleaved({name: lambda run=run: run(x) for name, (_, run) in engines.items()}, device, reps)
    rows = []
    ref_outs, ref_grads = results['paper']
    for name, (precision, _) in engines.items():
        outs, grads = results[name]
        same_weights = not name.startswith('timm')
        row = dict(arch=arch, shape='x'.join(map(str, shape)), step=step, model=name, precision=precision,
                   images_per_s=shape[0] / seconds[name], vs_paper=seconds['paper'] / seconds[name],
                   out_diff=largest_relative_difference(outs, ref_outs) if same_weights else None,
                   grad_diff=largest_relative_difference(grads, ref_grads) if grads and same_weights else None,
                   peak_mib=None)
        if memory and device.type == 'cuda':
            row['peak_mib'] = cuda_peak_of_step(models[name], x, step, amp_dtype) / 2**20
        elif memory and name not in ('ours+compile', 'ours mkl'):  # compile: its first step would count the
            # compiler's memory; mkl: the same model and memory as ours
            amp = torch.bfloat16 if name == 'ours bf16' else amp_dtype
            onnx_path = os.path.join(onnx_dir.name, 'paper.onnx') if name == 'onnxruntime' else None
            row['peak_mib'] = in_fresh_process(peak_memory_of_step, name.split()[0], arch, shape, step, device, amp,
                                               onnx_path) / 2**20
        rows.append(row)
    del models, results, engines
    onnx_dir.cleanup()
    print(f'  ({arch} {rows[0]["shape"]} {step}: {time.perf_counter() - start:.0f} s)', flush=True)
    return rows


def format_table(rows, precision_label):
    header = ('| arch | input | step | precision | model | images/s | vs paper | peak memory (MiB) '
              '| max rel. output diff | max rel. grad diff |')
    lines = [header, '|' + '---|' * 10]
    for r in rows:
        peak = f'{r["peak_mib"]:.0f}' if r['peak_mib'] is not None else '-'
        out = f'{r["out_diff"]:.1e}' if r['out_diff'] is not None else '-'
        grad = f'{r["grad_diff"]:.1e}' if r['grad_diff'] is not None else '-'
        lines.append(f'| {r["arch"]} | {r["shape"]} | {r["step"]} | {precision_label(r)} | {r["model"]} '
                     f'| {r["images_per_s"]:.4g} | {r["vs_paper"]:.2f}x | {peak} | {out} | {grad} |')
    return '\n'.join(lines)


# --precisions: (label, autocast dtype, channels_last input) on each device. TF32 as in the paper's A100 throughput.
CUDA_SETTINGS = {
    'fp32-nchw': ('fp32 (TF32)', None, False),
    'fp32': ('fp32 (TF32), channels_last', None, True),
    'bf16': ('AMP bf16, channels_last', torch.bfloat16, True),
    'fp16': ('AMP fp16, channels_last', torch.float16, True),
}
CPU_SETTINGS = {'fp32': ('fp32', None, False)}


def run_backbone_benchmark(args):
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    # (label, autocast dtype, channels_last input). TF32 as in the paper's A100 throughput.
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # as timm's benchmark: the fastest cuDNN kernel for each shape
    settings = [CUDA_SETTINGS[name] if device.type == 'cuda' else CPU_SETTINGS[name] for name in args.precisions]
    print(f'Before: {machine_line(device)}', flush=True)
    rows = []
    for label, amp_dtype, channels_last in settings:
        for arch in args.archs:
            for shape in args.sizes:
                for step in args.steps:
                    for row in benchmark_setting(arch, shape, step, device, amp_dtype, channels_last, args.reps,
                                                 args.compile, args.memory, args.timm, args.cpu_extras):
                        row['precision'] = row['precision'] or label
                        rows.append(row)
    print(f'After: {machine_line(device)}')
    print(f'{args.reps} repetitions per model and setting, medians.')
    print(format_table(rows, lambda r: r['precision']))


# ---------------------------------------------------------------- command line
def parse_shape(text):
    try:
        batch, height, width = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not BATCHxHEIGHTxWIDTH, e.g. 8x224x224') from None
    return (batch, 3, height, width)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: tiny arch, 2x3x224x224, 2 repetitions (numbers not meaningful)')
    parser.add_argument('--archs', nargs='+', default=['tiny', 'base'], choices=sorted(ARCH_SETTINGS))
    parser.add_argument('--sizes', nargs='+', type=parse_shape, default=[(8, 3, 224, 224), (1, 3, 800, 1216)],
                        metavar='BxHxW')
    parser.add_argument('--steps', nargs='+', default=['infer', 'train'], choices=['infer', 'train'])
    parser.add_argument('--reps', type=int, default=5, help='timed repetitions per model and setting')
    parser.add_argument('--threads', type=int,
                        help='CPU threads (default: torch\'s, one per core); 1 is steadier on a loaded machine')
    parser.add_argument('--compile', action='store_true', help='also time ours with compile=True (minutes more)')
    parser.add_argument('--no-memory', dest='memory', action='store_false', help='skip the peak-memory column')
    parser.add_argument('--timm', action='store_true', help="also time timm's ConvNeXt of each arch (needs timm)")
    parser.add_argument('--precisions', nargs='+', choices=sorted(CUDA_SETTINGS),
                        help='on a GPU: fp32-nchw, fp32 (TF32, channels_last), bf16, fp16 (AMP, channels_last); '
                             'default all. On the CPU: fp32')
    parser.add_argument('--no-onnxruntime', dest='onnxruntime', action='store_false',
                        help='CPU inference: leave out the ONNX Runtime row (the paper\'s formulation exported)')
    parser.add_argument('--no-bf16', dest='bf16', action='store_false',
                        help='CPU inference: leave out the row of ours under bf16 autocast')
    args = parser.parse_args(argv)
    if args.quick:
        args.archs, args.sizes, args.reps = ['tiny'], [(2, 3, 224, 224)], 2
    if args.reps < 1:
        parser.error(f'--reps must be at least 1, got {args.reps}')
    if args.threads is not None and args.threads < 1:
        parser.error(f'--threads must be at least 1, got {args.threads}')
    on_cuda = torch.cuda.is_available()
    if args.precisions is None:
        args.precisions = list(CUDA_SETTINGS) if on_cuda else list(CPU_SETTINGS)
    unavailable = [name for name in args.precisions if name not in (CUDA_SETTINGS if on_cuda else CPU_SETTINGS)]
    if unavailable:
        parser.error(f'--precisions {" ".join(unavailable)}: not timed on {"a GPU" if on_cuda else "the CPU"}; '
                     f'choose from {sorted(CUDA_SETTINGS if on_cuda else CPU_SETTINGS)}')
    if args.timm and importlib.util.find_spec('timm') is None:
        parser.error('--timm needs timm installed (pip install timm)')
    if args.onnxruntime and importlib.util.find_spec('onnxruntime') is None:
        print('onnxruntime is not installed: no ONNX Runtime row (pip install -r requirements.txt)')
        args.onnxruntime = False
    args.cpu_extras = [name for name in ('bf16', 'onnxruntime') if getattr(args, name)]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_backbone_benchmark(args)


if __name__ == '__main__':
    main()
