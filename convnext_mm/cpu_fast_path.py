"""The CPU formulations of a ConvNeXt block's pointwise part (after the depthwise conv): LayerNorm, Linear to 4C,
GELU, [GRN], Linear to C, with the plain path's arithmetic per pixel, run in oneDNN's matrix product
(``torch.ops.mkldnn._linear_pointwise``, what inductor uses on the CPU).

Which formulation a block takes is one rule, :func:`block_path`:

- ``'inference'`` (:func:`pointwise`): on the CPU, nothing needs a gradient (``no_grad``, or a frozen stage under
  autograd), the block in eval mode, in float32 or under bfloat16 autocast (V2 blocks: float32 only, GRN's norms
  stay in float32 on the plain path). The exact (erf) GELU is fused into the first Linear; V1 blocks go
  ``PIXELS_PER_CHUNK`` pixels at a time into one preallocated output, so a chunk's 4C-wide hidden map stays in the
  cache (V2 blocks keep the whole map, as GRN's norm spans it); under bfloat16 the weights are cached bfloat16
  copies (:func:`inference_weights`), LayerNorm statistics stay in float32.
- ``'training'`` (:func:`mlp`): float32 CPU training (gradients needed, no autocast) where the training library is
  oneDNN (:func:`training_library`: on AMD CPUs, where MKL, which nn.Linear calls, takes a slow generic path).
  Each Linear is an autograd Function (:class:`OneDNNLinear`) whose forward and both backward products run in
  oneDNN.
- ``'plain'``: everything else: other devices, fp16 autocast, bf16 training (PyTorch's autocast Linears, already
  oneDNN), torch.compile (inductor fuses for itself), tracing (mmengine's FLOP counter: the fused ops neither
  trace nor count), and wherever this torch lacks oneDNN's ops or they fail their first check
  (:func:`onednn_ops`).

CPU training is also faster when glibc keeps freed blocks for reuse (:func:`reuse_freed_memory`): a run asks for
it by declaring :class:`CPUTrainingMemoryHook` in its config; nothing here changes the allocator by itself.
Speed and the measurements behind these choices: docs/benchmarks.md.
"""
import contextlib
import contextvars
import ctypes
import functools
import logging
import weakref

import torch
import torch.nn.functional as F
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

PLAIN, INFERENCE, TRAINING = 'plain', 'inference', 'training'
# Pixels per chunk of a V1 block's MLP: the 4C-wide hidden map of a chunk, 2048 x 4C floats (3 MiB at C=96),
# stays in the cache.
PIXELS_PER_CHUNK = 2048
TRAINING_LIBRARIES = ('onednn', 'mkl')
# inference_weights' cache: per block, (dtype and parameter versions, bfloat16 copies of the parameters).
INFERENCE_WEIGHTS = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------- the rule
def block_path(block, x):
    """'inference', 'training' or 'plain': the formulation ``block`` (a ConvNeXtBlock) takes for ``x``, its
    depthwise conv's output as an NHWC view (the module doc gives the rule in words)."""
    if x.device.type != 'cpu' or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return PLAIN
    autocast = torch.is_autocast_enabled('cpu')
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in block.parameters())):
        if autocast or x.dtype != torch.float32 or training_library() != 'onednn':
            return PLAIN
        path = TRAINING
    else:
        dtype = inference_dtype(x)
        if block.training or dtype is None or (block.grn is not None and dtype != torch.float32):
            return PLAIN
        path = INFERENCE
    return path if onednn_ops() is not None else PLAIN


def inference_dtype(x):
    """float32, or bfloat16 under bfloat16 autocast: the dtype the inference path computes ``x`` in; None for any
    other (fp16 autocast, a half-precision model)."""
    if torch.is_autocast_enabled('cpu'):
        return torch.bfloat16 if torch.get_autocast_dtype('cpu') == torch.bfloat16 else None
    return torch.float32 if x.dtype == torch.float32 else None


def training_library():
    """'onednn' or 'mkl', the library of float32 CPU training's products: the one :func:`use_training_library`
    chose around the step, else by a fixed rule, oneDNN on AMD CPUs and MKL (nn.Linear) elsewhere. A rule rather
    than a timing, so a machine always trains with the same arithmetic and a seeded run's figures repeat. MKL takes
    a slow generic path on AMD CPUs, where oneDNN's products measured about 2x MKL's on every block shape."""
    return _CHOSEN_LIBRARY.get() or ('onednn' if cpu_vendor() == 'AuthenticAMD' else 'mkl')


_CHOSEN_LIBRARY = contextvars.ContextVar('convnext_mm_training_library', default=None)


@contextlib.contextmanager
def use_training_library(library):
    """``with use_training_library('mkl'):`` float32 CPU training steps inside the block (forward and backward)
    take their products from ``library`` ('onednn' or 'mkl') whatever the CPU; e.g. a benchmark comparing both."""
    if library not in TRAINING_LIBRARIES:
        raise ValueError(f'cpu_fast_path: unknown training library {library!r}; choose one of {TRAINING_LIBRARIES}')
    token = _CHOSEN_LIBRARY.set(library)
    try:
        yield
    finally:
        _CHOSEN_LIBRARY.reset(token)


@functools.lru_cache(maxsize=None)
def cpu_vendor():
    """The CPU's vendor string ('AuthenticAMD', 'GenuineIntel', ...) from /proc/cpuinfo; '' where there is none."""
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            for line in cpuinfo:
                if line.startswith('vendor_id'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return ''


# ---------------------------------------------------------------- oneDNN's private ops, contained
@functools.lru_cache(maxsize=None)
def onednn_ops():
    """``(linear_pointwise, reorder_linear_weight)``: oneDNN's Linear with a fused activation and its reorder of
    a bfloat16 weight into the blocked layout (inductor's prepacking; None where it is missing or fails), checked
    once on a small product against ``F.linear``. None where torch lacks oneDNN's Linear or it fails that check:
    every block then takes the plain path."""
    if not torch.backends.mkldnn.is_available():
        return None
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(shape, generator=generator, device='cpu') for shape in ((5, 8), (6, 8), (6, )))
    try:
        linear_pointwise = torch.ops.mkldnn._linear_pointwise
        # Run where the first block asks, perhaps under autocast: the check's products in float32.
        with torch.no_grad(), torch.autocast('cpu', enabled=False):
            works = (torch.allclose(linear_pointwise(x, weight, bias, 'none', [], ''), F.linear(x, weight, bias),
                                    rtol=1e-4, atol=1e-5)
                     and torch.allclose(linear_pointwise(x, weight, bias, 'gelu', [], 'none'),
                                        F.gelu(F.linear(x, weight, bias)), rtol=1e-4, atol=1e-5))
    except Exception as error:  # a private op: absent (AttributeError), or refused by this build or CPU
        print_log(f'ConvNeXt CPU fast paths off: torch.ops.mkldnn._linear_pointwise failed ({error!r}); blocks '
                  'take the plain path', logger='current', level=logging.WARNING)
        return None
    if not works:
        print_log('ConvNeXt CPU fast paths off: torch.ops.mkldnn._linear_pointwise does not give F.linear\'s '
                  'results here; blocks take the plain path', logger='current', level=logging.WARNING)
        return None
    try:
        reorder = torch.ops.mkldnn._reorder_linear_weight
        with torch.no_grad(), torch.autocast('cpu', enabled=False):
            packed = reorder(weight.bfloat16(), PIXELS_PER_CHUNK)
            reordered_works = torch.allclose(linear_pointwise(x.bfloat16(), packed, bias.bfloat16(), 'none', [], '')
                                             .float(), F.linear(x, weight, bias), rtol=0.1, atol=0.1)
    except Exception:  # bfloat16 inference then uses the plain bfloat16 weights
        reorder, reordered_works = None, False
    return linear_pointwise, (reorder if reordered_works else None)


def linear(x, weight, bias):
    """``x W^T + b`` in oneDNN's matrix product."""
    return onednn_ops()[0](x, weight, bias, 'none', [], '')


def linear_gelu(x, weight, bias):
    """``GELU(x W^T + b)`` with the exact (erf) GELU, computed inside oneDNN's matrix product."""
    return onednn_ops()[0](x, weight, bias, 'gelu', [], 'none')


# ---------------------------------------------------------------- inference
def pointwise(block, x, shortcut):
    """The block's output from ``x`` (its depthwise conv's output, NHWC view) and ``shortcut`` (its input)."""
    if block.grn is not None:
        return _pointwise_v2(block, x, shortcut)
    return _pointwise_in_chunks(block, x, shortcut, inference_dtype(x))


def _pointwise_in_chunks(block, x, shortcut, dtype):
    """V1: norm, Linear+GELU, Linear, layer scale and residual, ``PIXELS_PER_CHUNK`` pixels at a time into one
    channels_last output of ``dtype``; no drop path in eval mode."""
    dim = x.shape[-1]
    weight1, bias1, weight2, bias2, gamma = inference_weights(block, dtype)
    norm = block.norm
    rows = x.reshape(-1, dim)  # a view where x is channels_last, as in the backbone
    out = torch.empty_like(shortcut, dtype=dtype, memory_format=torch.channels_last)
    out_rows = out.permute(0, 2, 3, 1).view(-1, dim)
    shortcut_rows = shortcut.permute(0, 2, 3, 1).reshape(-1, dim)
    for start in range(0, rows.shape[0], PIXELS_PER_CHUNK):
        chunk = slice(start, start + PIXELS_PER_CHUNK)
        # PyTorch's LayerNorm kernel computes a bfloat16 input's statistics in float32.
        hidden = F.layer_norm(rows[chunk].to(dtype), norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        hidden = linear(linear_gelu(hidden, weight1, bias1), weight2, bias2)
        residual = shortcut_rows[chunk].to(dtype)
        if gamma is None:
            torch.add(residual, hidden, out=out_rows[chunk])
        else:
            torch.addcmul(residual, hidden, gamma, out=out_rows[chunk])
    return out


def _pointwise_v2(block, x, shortcut):
    """V2 in float32: the plain path on the whole map (GRN's norm spans it) with Linear+GELU fused."""
    x = linear_gelu(block.norm(x), block.pwconv1.weight, block.pwconv1.bias)
    x = block.pwconv2(block.grn(x))
    return shortcut + x.permute(0, 3, 1, 2)


def inference_weights(block, dtype):
    """Both Linears' weights and biases and the layer scale of ``block``, in ``dtype``: the parameters themselves
    in float32; in bfloat16, copies cast once, the weights reordered into oneDNN's blocked layout for chunks of
    ``PIXELS_PER_CHUNK`` rows where this torch can (8-10% faster bf16 inference), and cached until a parameter
    changes (so a bfloat16 forward casts no weight): keyed on each parameter's storage and version counter, which
    every in-place write bumps (``load_state_dict``, optimizer steps), the float32 parameters staying the only
    truth. The cache lives beside the module (``INFERENCE_WEIGHTS``), not in it: copies and pickles of the module
    do not carry it (oneDNN's blocked tensors cannot be copied)."""
    params = (block.pwconv1.weight, block.pwconv1.bias, block.pwconv2.weight, block.pwconv2.bias, block.gamma)
    if dtype == torch.float32:
        return params
    key = (dtype, ) + tuple((p.data_ptr(), p._version) for p in params if p is not None)
    cached = INFERENCE_WEIGHTS.get(block)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            weights = [None if p is None else p.detach().to(dtype) for p in params]
        reorder = onednn_ops()[1]
        if reorder is not None:
            weights[0], weights[2] = (reorder(weights[i], PIXELS_PER_CHUNK) for i in (0, 2))
        cached = INFERENCE_WEIGHTS[block] = (key, tuple(weights))
    return cached[1]


# ---------------------------------------------------------------- training
def mlp(block, x):
    """Linear to 4C, exact GELU, [GRN], Linear to C of ``x`` (NHWC, normed), with autograd."""
    shape = x.shape
    linear1, linear2 = block.pwconv1, block.pwconv2
    x = OneDNNLinear.apply(x.reshape(-1, shape[-1]), linear1.weight, linear1.bias, True)
    if block.grn is not None:
        x = block.grn(x.view(*shape[:-1], -1)).reshape(x.shape)
    x = OneDNNLinear.apply(x, linear2.weight, linear2.bias, False)
    return x.view(shape)


class OneDNNLinear(torch.autograd.Function):
    """``x W^T + b``, then the exact GELU where ``gelu``, for 2-D ``x``; the forward product and both backward
    products in oneDNN. The arithmetic of nn.Linear (and nn.GELU) to float32 rounding: the same products and
    sums, in oneDNN's summation order.

    GELU stays a separate pass (``F.gelu`` of the saved pre-activation, ``gelu_backward`` of it), as the plain
    path does: fusing it into the product would need the pre-activation again for the backward, and recomputing
    that product costs more than the pass (docs/benchmarks.md)."""

    @staticmethod
    def forward(ctx, x, weight, bias, gelu):
        y = linear(x, weight, bias)
        ctx.gelu = gelu
        if gelu:
            ctx.save_for_backward(x, weight, y)
            return F.gelu(y)
        ctx.save_for_backward(x, weight)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, *pre_activation = ctx.saved_tensors
        grad = grad.contiguous()
        if ctx.gelu:
            grad = torch.ops.aten.gelu_backward(grad, pre_activation[0])
        need_x, need_weight, need_bias, _ = ctx.needs_input_grad
        # grad W = oneDNN's Linear of the transposed weight: its weight operand may be a strided view.
        grad_x = linear(grad, weight.t(), None) if need_x else None
        grad_weight = weight_grad(grad, x) if need_weight else None
        grad_bias = grad.sum(0) if need_bias else None
        return grad_x, grad_weight, grad_bias, None


def weight_grad(grad, x):
    """``grad^T x`` (the weight gradient, out x in) as one oneDNN Linear of the transposed operands. Its input
    operand is copied to a contiguous one, its weight operand is read strided: the narrower of ``grad`` and ``x``
    goes first (1.3-4x faster than the other order at stage 1), and the product is transposed back where needed
    into the weight's layout (out x in, contiguous, as DDP's gradient buckets expect)."""
    if grad.shape[1] <= x.shape[1]:
        return linear(grad.t(), x.t(), None)
    return linear(x.t(), grad.t(), None).t().contiguous()


# ---------------------------------------------------------------- the allocator, for CPU runs
# glibc's mallopt parameters.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
REUSED_BLOCK_LIMIT = 2**30
# The thresholds glibc's own rule reaches in a process that frees large blocks (it raises the mmap threshold to
# each freed mmapped block's size, up to 32 MiB on 64-bit machines, and the trim threshold to twice that).
GLIBC_MMAP_THRESHOLD = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
GLIBC_TRIM_THRESHOLD = 2 * GLIBC_MMAP_THRESHOLD


def _mallopt():
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return None


def reuse_freed_memory():
    """Have glibc keep freed blocks up to 1 GiB in the heap for reuse rather than returning them to the kernel.
    Otherwise every allocation over glibc's mmap threshold (32 MiB at most) is a fresh mmap, its pages faulted in
    anew when first written: a CPU training step allocates dozens of them (a 4C-wide map is 38 MiB at
    8x3x224x224), and faulting them costs 15-20% of the step (docs/benchmarks.md). The resident set then stays at
    its peak between steps instead of falling back; the peak is the same. For the whole process, until
    :func:`restore_freed_memory_thresholds`. Returns False (and does nothing) where the C library is not glibc."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mallopt(M_MMAP_THRESHOLD, REUSED_BLOCK_LIMIT)
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    return True


def restore_freed_memory_thresholds():
    """Undo :func:`reuse_freed_memory`: glibc's thresholds as its own rule leaves them in a process that frees
    large blocks (``GLIBC_MMAP_THRESHOLD``, ``GLIBC_TRIM_THRESHOLD``); mallopt has no way to switch that rule
    itself back on. Returns False where the C library is not glibc."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
    return True


@HOOKS.register_module()
class CPUMemoryReuseHook(Hook):
    """``custom_hooks=[dict(type='CPUMemoryReuseHook')]``: while the run trains, validates or tests on the CPU,
    glibc keeps freed blocks for reuse (:func:`reuse_freed_memory`: CPU training steps 15-20% faster, whole-model
    inference 5-28% in fp32 and up to 15% in bf16, the resident memory held at its peak between steps); when the
    outermost of those loops ends (training, which runs the validations inside it, or a test run), glibc's
    thresholds are given back (:func:`restore_freed_memory_thresholds`). Both logged. A model on another device
    leaves glibc as it is."""

    def __init__(self):
        self.loops = []  # the loops running with glibc's thresholds raised, outermost first

    def _enter(self, runner, loop):
        if self.loops:  # a validation inside training: already applied
            self.loops.append(loop)
            return
        device = next((p.device for p in runner.model.parameters()), torch.device('cpu'))
        if device.type != 'cpu':
            runner.logger.info(f'CPUMemoryReuseHook: the model is on {device}; glibc left as it is')
            return
        if not reuse_freed_memory():
            runner.logger.info('CPUMemoryReuseHook: the C library is not glibc; its allocator left as it is')
            return
        self.loops.append(loop)
        runner.logger.info(f'CPUMemoryReuseHook: glibc keeps freed blocks of up to {REUSED_BLOCK_LIMIT >> 20} MiB '
                           f'for reuse during {loop} (faster CPU steps; the resident memory stays at its peak '
                           'between steps)')

    def _exit(self, runner, loop):
        if loop not in self.loops:
            return
        del self.loops[self.loops.index(loop):]
        if not self.loops:
            restore_freed_memory_thresholds()
            runner.logger.info('CPUMemoryReuseHook: glibc returns freed blocks over '
                               f'{GLIBC_MMAP_THRESHOLD >> 20} MiB to the kernel again')

    def before_train(self, runner):
        self._enter(runner, 'training')

    def after_train(self, runner):
        self._exit(runner, 'training')

    def before_val(self, runner):
        self._enter(runner, 'validation')

    def after_val(self, runner):
        self._exit(runner, 'validation')

    def before_test(self, runner):
        self._enter(runner, 'testing')

    def after_test(self, runner):
        self._exit(runner, 'testing')


# The hook's names: its own, and its former one, which configs saved in work directories may still give.
MEMORY_REUSE_HOOK_NAMES = ('CPUMemoryReuseHook', 'CPUTrainingMemoryHook')
HOOKS.register_module(name=MEMORY_REUSE_HOOK_NAMES[1], module=CPUMemoryReuseHook)


def declares_memory_reuse(cfg):
    """Whether a config lists :class:`CPUMemoryReuseHook` (by either of its names) in ``custom_hooks``."""
    return any(hook.get('type') in MEMORY_REUSE_HOOK_NAMES for hook in cfg.get('custom_hooks', []) or [])


@contextlib.contextmanager
def freed_memory_reuse_as_declared(cfg, device='cpu'):
    """For the tools that run a model outside mmengine's loops (tools/infer.py, tools/benchmark.py, the deployment
    benchmarks): inside this context glibc keeps freed blocks as the config's :class:`CPUMemoryReuseHook` does in
    a test run, on the CPU; given back on leaving. Yields a phrase saying how the allocator runs."""
    applied = str(device).startswith('cpu') and declares_memory_reuse(cfg) and reuse_freed_memory()
    try:
        yield ("glibc keeps freed blocks for reuse (the config's CPUMemoryReuseHook)" if applied else
               "glibc's own allocator thresholds")
    finally:
        if applied:
            restore_freed_memory_thresholds()
