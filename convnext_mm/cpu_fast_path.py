"""The CPU paths of a ConvNeXt block's pointwise part (after the depthwise conv): LayerNorm, Linear to 4C, GELU,
[GRN], Linear to C, with the plain path's arithmetic per pixel but run where this project's CPUs are fast.

Both Linears run in oneDNN's matrix product (``torch.ops.mkldnn._linear_pointwise``, what inductor uses on the
CPU): on the AMD EPYC (Zen 5) machines this project trains and tests on, 1.3-2.5x MKL's ``mm``/``addmm``, which
nn.Linear and its backward call (docs/benchmarks.md).

Inference (one entry from the block: :func:`applies`, then :func:`pointwise`):

- the exact (erf) GELU fused into the first Linear: two passes fewer over the 4C-wide activation, the largest
  tensor of a block.
- V1 blocks go ``PIXELS_PER_CHUNK`` pixels at a time into one preallocated output: a chunk's hidden map stays in
  the cache and its buffer is reused, where the whole map's would be a fresh allocation (page faults) of up to 4x
  the block's input, written to memory and read back (1.5-1.9x faster for a stage-1 block, docs/benchmarks.md).
  V2 blocks keep the whole map, as GRN's norm spans it.
- Under ``torch.autocast('cpu', dtype=torch.bfloat16)`` the same path runs in bfloat16 with cached weight copies
  (:func:`inference_weights`); LayerNorm statistics stay in float32 (PyTorch's kernel).
- A block none of whose tensors needs a gradient (a frozen stage) takes it under autograd too.

Training in float32 (:func:`trains`, then :func:`mlp`): each Linear is an autograd Function (:class:`OneDNNLinear`)
whose forward and both backward products (input and weight gradients) run in oneDNN, taken on AMD CPUs, where
oneDNN is the faster library (:func:`training_library`). The first
training step also has glibc keep freed blocks for reuse (:func:`reuse_freed_memory`).

Everywhere else the block takes its plain path: on other devices, under other autocast dtypes (bf16 training:
PyTorch's own autocast Linears, already oneDNN), under torch.compile (inductor fuses for itself) and while
tracing (mmengine's FLOP counter traces the model; the fused ops neither trace nor count).
"""
import ctypes
import logging
import weakref

import torch
import torch.nn.functional as F
from mmengine.logging import print_log

# Pixels per chunk of a V1 block's MLP: the 4C-wide hidden map of a chunk, 2048 x 4C floats (3 MiB at C=96),
# stays in the cache.
PIXELS_PER_CHUNK = 2048
# oneDNN's Linear with a fused activation; None where torch lacks oneDNN.
ONEDNN_LINEAR_POINTWISE = (getattr(torch.ops.mkldnn, '_linear_pointwise', None)
                           if torch.backends.mkldnn.is_available() else None)
# oneDNN's reorder of a Linear's weight into its blocked layout for a given number of rows (inductor's weight
# prepacking); None where torch lacks it.
ONEDNN_REORDER_LINEAR_WEIGHT = (getattr(torch.ops.mkldnn, '_reorder_linear_weight', None)
                                if ONEDNN_LINEAR_POINTWISE is not None else None)
# inference_weights' cache: per block, (dtype and parameter versions, bfloat16 copies of the parameters).
INFERENCE_WEIGHTS = weakref.WeakKeyDictionary()


def _outside_fast_paths(x):
    return (ONEDNN_LINEAR_POINTWISE is None or x.device.type != 'cpu' or torch.compiler.is_compiling()
            or torch.jit.is_tracing())


def inference_dtype(x, block=None):
    """The dtype the inference path runs ``x`` in: float32 in CPU inference, bfloat16 in CPU inference under
    bfloat16 autocast; None where it does not run (see the module doc). With ``block``, a block none of whose
    tensors needs a gradient counts as inference under autograd too."""
    if _outside_fast_paths(x):
        return None
    if torch.is_grad_enabled() and (block is None or x.requires_grad
                                    or any(p.requires_grad for p in block.parameters())):
        return None
    if torch.is_autocast_enabled('cpu'):
        return torch.bfloat16 if torch.get_autocast_dtype('cpu') == torch.bfloat16 else None
    return torch.float32 if x.dtype == torch.float32 else None


def applies(block, x):
    """Whether ``block`` (a ConvNeXtBlock) takes this path for ``x``, its depthwise conv's NHWC output."""
    dtype = inference_dtype(x, block)
    if dtype is None or block.training:
        return False
    return block.grn is None or dtype == torch.float32  # GRN under bf16: the plain path, its norms in float32


def pointwise(block, x, shortcut):
    """The block's output from ``x`` (its depthwise conv's output, NHWC view) and ``shortcut`` (its input)."""
    if block.grn is not None:
        return _pointwise_v2(block, x, shortcut)
    return _pointwise_in_chunks(block, x, shortcut, inference_dtype(x, block))


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
    ``PIXELS_PER_CHUNK`` rows (8-10% faster bf16 inference, docs/benchmarks.md), and cached until a parameter
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
        if ONEDNN_REORDER_LINEAR_WEIGHT is not None:
            weights[0], weights[2] = (ONEDNN_REORDER_LINEAR_WEIGHT(weights[i], PIXELS_PER_CHUNK) for i in (0, 2))
        cached = INFERENCE_WEIGHTS[block] = (key, tuple(weights))
    return cached[1]


def linear_gelu(x, weight, bias):
    """``GELU(x W^T + b)`` with the exact (erf) GELU, computed inside oneDNN's matrix product."""
    return ONEDNN_LINEAR_POINTWISE(x, weight, bias, 'gelu', [], 'none')


def linear(x, weight, bias):
    """``x W^T + b`` in oneDNN's matrix product."""
    return ONEDNN_LINEAR_POINTWISE(x, weight, bias, 'none', [], '')


# ---------------------------------------------------------------- training
# 'onednn' or 'mkl': the library of the training path's products; None until training_library() decides.
TRAINING_LIBRARY = None
# Whether the first CPU training step raises glibc's mmap threshold (reuse_freed_memory).
REUSE_FREED_MEMORY = True


def trains(block, x):
    """Whether ``block`` runs its Linears through :class:`OneDNNLinear` for ``x``, its normed NHWC map: float32
    CPU training (gradients on and needed), where oneDNN is the faster library."""
    if (_outside_fast_paths(x) or not torch.is_grad_enabled() or x.dtype != torch.float32
            or torch.is_autocast_enabled('cpu')):
        return False
    if not (x.requires_grad or any(p.requires_grad for p in block.parameters())):
        return False
    if REUSE_FREED_MEMORY:
        reuse_freed_memory()
    return training_library() == 'onednn'


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
        y = ONEDNN_LINEAR_POINTWISE(x, weight, bias, 'none', [], '')
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
        grad_x = ONEDNN_LINEAR_POINTWISE(grad, weight.t(), None, 'none', [], '') if need_x else None
        grad_weight = weight_grad(grad, x) if need_weight else None
        grad_bias = grad.sum(0) if need_bias else None
        return grad_x, grad_weight, grad_bias, None


def weight_grad(grad, x):
    """``grad^T x`` (the weight gradient, out x in) as one oneDNN Linear of the transposed operands. Its input
    operand is copied to a contiguous one, its weight operand is read strided: the narrower of ``grad`` and ``x``
    goes first (1.3-4x faster than the other order at stage 1), and the product is transposed back where needed
    into the weight's layout (out x in, contiguous, as DDP's gradient buckets expect)."""
    if grad.shape[1] <= x.shape[1]:
        return ONEDNN_LINEAR_POINTWISE(grad.t(), x.t(), None, 'none', [], '')
    return ONEDNN_LINEAR_POINTWISE(x.t(), grad.t(), None, 'none', [], '').t().contiguous()


def training_library():
    """'onednn' on AMD CPUs, 'mkl' elsewhere: the library of the training path's products, by a fixed rule rather
    than a timing, so that a machine always trains with the same arithmetic (the demo's figures repeat run after
    run). MKL takes a slow generic path on AMD CPUs, where oneDNN's products measured about 2x MKL's on every block
    shape (docs/benchmarks.md); elsewhere training keeps nn.Linear, as fast as it was."""
    global TRAINING_LIBRARY
    if TRAINING_LIBRARY is None:
        TRAINING_LIBRARY = 'onednn' if cpu_vendor() == 'AuthenticAMD' else 'mkl'
    return TRAINING_LIBRARY


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


_FREED_MEMORY_REUSED = False
# glibc's mallopt parameters.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def reuse_freed_memory():
    """Have glibc keep freed blocks up to 1 GiB in the heap for reuse rather than returning them to the kernel,
    once per process. By default every allocation over 32 MiB is a fresh mmap, its pages faulted in anew when
    first written: a CPU training step allocates dozens of them (a 4C-wide map is 38 MiB at 8x3x224x224), and
    faulting them costs 15-20% of the step (docs/benchmarks.md). The resident set then stays at its peak between
    steps instead of falling back; the peak is the same. A no-op where the C library is not glibc."""
    global _FREED_MEMORY_REUSED
    if _FREED_MEMORY_REUSED:
        return
    _FREED_MEMORY_REUSED = True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 2**30)
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    print_log('ConvNeXt CPU training: glibc now keeps freed blocks of up to 1 GiB for reuse (faster steps; the '
              'resident memory stays at its peak between steps; cpu_fast_path.REUSE_FREED_MEMORY = False before '
              'training keeps glibc as it was)', logger='current', level=logging.INFO)
